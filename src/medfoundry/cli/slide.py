"""``medfoundry slide``: zero-shot classification of a whole-slide image with top-K tile pooling (MI-Zero)."""

from __future__ import annotations

import argparse
import json
import sys

from medfoundry.cli.models import add_model_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slide", help="zero-shot classify a gigapixel slide: tissue tiles, top-K pooling, heatmap")
    p.add_argument("slide", help="pyramidal slide (.svs/.tiff/.ndpi... via tiffslide) or any large raster image")
    p.add_argument("--labels", required=True, help='comma-separated class names, e.g. "tumor,normal tissue"')
    add_model_flags(p, required=False)
    p.add_argument("--template", action="append", default=None, help="prompt template with {} (repeatable)")
    p.add_argument("--top-k", type=int, default=50, help="tiles pooled per class (MI-Zero's K)")
    p.add_argument("--tile-size", type=int, default=224, help="tile side in pixels at the chosen level")
    p.add_argument("--level", type=int, default=None, help="pyramid level to tile (default: from --mpp, else 0)")
    p.add_argument("--mpp", type=float, default=None, help="target µm/pixel (picks the level)")
    p.add_argument("--slide-mpp", type=float, default=None, help="µm/pixel of level 0 when the file lacks it")
    p.add_argument("--min-tissue", type=float, default=0.5, help="tissue fraction a tile needs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--heatmap", default=None, help="write a PNG of the top class's tile probabilities")
    p.add_argument("--tiles-out", default=None, help="write tile coordinates and logits to this .npz")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run, model=None)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from medfoundry.cli.contrastive import DEFAULT_MODEL
    from medfoundry.files import atomic_output, check_writable
    from medfoundry.io.slide import open_slide
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.slides import heatmap_overlay, slide_zero_shot

    for out in (args.heatmap, args.tiles_out):  # refuse before any model work
        if out:
            check_writable(out, args.overwrite)
    predictor = open_contrastive(args.model or DEFAULT_MODEL, args.weights)
    with open_slide(args.slide, mpp=args.slide_mpp) as slide:
        level = args.level if args.level is not None else slide.level_for_mpp(args.mpp) if args.mpp else 0
        result = slide_zero_shot(predictor, slide, args.labels.split(","), templates=args.template,
                                 top_k=args.top_k, tile_size=args.tile_size, level=level,
                                 min_tissue=args.min_tissue, batch_size=args.batch_size,
                                 progress=sys.stderr.isatty())
        top = result.labels[int(np.argmax(result.probs))]
        if args.heatmap:
            with atomic_output(args.heatmap, args.overwrite) as tmp:
                Image.fromarray(heatmap_overlay(slide, result, top)).save(tmp, format="PNG")
        dims = slide.dimensions
    if args.tiles_out:
        with atomic_output(args.tiles_out, args.overwrite) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, coords=result.grid.coords, cells=result.grid.cells, logits=result.tile_logits,
                     labels=np.array(result.labels))
    summary = {"slide": args.slide, "model": predictor.record.name, "level": level, "dimensions": dims,
               "tiles": len(result.grid.coords), "top_k": result.top_k, "prediction": top,
               "probs": dict(zip(result.labels, [round(float(p), 6) for p in result.probs], strict=True))}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.slide}: {top} ({summary['probs'][top]:.3f}) from {summary['tiles']} tissue tiles at level "
              f"{level}, top-{result.top_k} pooling")
    return 0
