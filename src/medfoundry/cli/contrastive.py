"""``medfoundry embed`` and ``medfoundry classify``: CLIP-style models from the command line."""

from __future__ import annotations

import argparse
import json

import numpy as np

from medfoundry.cli.models import add_model_flags
from medfoundry.errors import InputContractError
from medfoundry.files import atomic_output
from medfoundry.io import read_image

DEFAULT_MODEL = "medfoundry-clip-tiny"


def read_labelled_csv(path: str) -> tuple[list[str], list[str]]:
    """(image paths, labels) of a CSV with columns image,label; relative paths are taken from its folder."""
    import csv
    from pathlib import Path

    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise InputContractError(f"{path} needs columns image,label")
    base = Path(path).parent
    paths = [r["image"] if Path(r["image"]).is_absolute() else str(base / r["image"]) for r in rows]
    return paths, [r["label"].strip() for r in rows]


def _images(paths: list[str], slice_index: int | None):
    out = []
    for p in paths:
        image = read_image(p)
        if image.is_volume:
            if slice_index is None:
                raise InputContractError(f"{p} is a volume of {image.array.shape[0]} slices: choose one with --slice K")
            image = image.slice(slice_index)
        out.append(image)
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    pe = sub.add_parser("embed", help="L2-normalised image (or --text) embeddings to a .npy file")
    pe.add_argument("images", nargs="*", help="image files or DICOM folders, embedded in this order")
    pe.add_argument("--text", action="append", default=None, help="embed this text instead (repeatable)")
    add_model_flags(pe, required=False)
    pe.add_argument("--slice", type=int, default=None, dest="slice_index", help="slice of volumes to embed")
    pe.add_argument("--precision", choices=["fp32", "bf16", "int8", "auto"], default="fp32",
                    help="bf16 autocast, or int8 dynamic quantisation of Linear layers (CPU); auto: 3D encoders run "
                         "bf16 where the CPU has native bfloat16 and fp32 where it is emulated (2D models: fp32)")
    pe.add_argument("--out", required=True, help="output .npy (N × D float32)")
    pe.add_argument("--overwrite", action="store_true")
    pe.set_defaults(func=run_embed, model=None)

    pc = sub.add_parser("classify", help="zero-shot classification with a contrastive model")
    pc.add_argument("images", nargs="+")
    pc.add_argument("--labels", default=None, help='comma-separated labels, e.g. "normal,pneumonia"')
    pc.add_argument("--label-set", default=None,
                    help="a label set of the model's record with its own prompts per label (e.g. modality, plane, "
                         "region for medfoundry-clip-tiny; `models info` lists them); --labels may pick some")
    add_model_flags(pc, required=False)
    pc.add_argument("--template", action="append", default=None, help="prompt template with {} (repeatable)")
    pc.add_argument("--multilabel", action="store_true", help="score each label present-vs-absent (CheXzero)")
    pc.add_argument("--uncertain-below", type=float, default=None,
                    help="answer 'uncertain' when the top probability is below this level")
    pc.add_argument("--slice", type=int, default=None, dest="slice_index")
    pc.add_argument("--calibration", default=None, help="calibration JSON from `medfoundry calibrate`")
    pc.add_argument("--probe", default=None, help="a trained head from `medfoundry train probe` (labels from it)")
    pc.add_argument("--json", action="store_true")
    pc.set_defaults(func=run_classify)

    pg = sub.add_parser("ground", help="patch-level similarity heatmap of a text prompt over an image")
    pg.add_argument("image")
    pg.add_argument("--text", required=True)
    add_model_flags(pg, required=False)
    pg.add_argument("--slice", type=int, default=None, dest="slice_index")
    pg.add_argument("--out", required=True, help="overlay PNG")
    pg.add_argument("--npy", default=None, help="also save the raw (h, w) similarity map")
    pg.add_argument("--overwrite", action="store_true")
    pg.set_defaults(func=run_ground)

    pk = sub.add_parser("calibrate", help="fit a temperature for zero-shot scores on a small labelled set")
    pk.add_argument("--data", required=True, help="CSV with columns image,label")
    pk.add_argument("--labels", required=True, help="comma-separated labels (the classes of --data)")
    add_model_flags(pk, required=False)
    pk.add_argument("--template", action="append", default=None)
    pk.add_argument("--out", required=True, help="calibration JSON to write")
    pk.add_argument("--overwrite", action="store_true")
    pk.set_defaults(func=run_calibrate)


def run_embed(args: argparse.Namespace) -> int:
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.predict.volume_encoder import is_volume_encoder
    from medfoundry.registry.loading import resolve_model

    if bool(args.text) == bool(args.images):
        raise InputContractError("give either images or --text, not both and not neither")
    if is_volume_encoder(resolve_model(args.model or DEFAULT_MODEL, args.weights)[0]):
        return _embed_volumes(args)
    precision = "fp32" if args.precision == "auto" else args.precision
    predictor = open_contrastive(args.model or DEFAULT_MODEL, args.weights).set_precision(precision)
    emb = predictor.embed_texts(args.text) if args.text else predictor.embed_images(
        _images(args.images, args.slice_index), progress=True)
    with atomic_output(args.out, args.overwrite) as tmp, open(tmp, "wb") as fh:
        np.save(fh, emb.astype(np.float32))
    print(f"wrote {args.out}: {emb.shape[0]} × {emb.shape[1]} embeddings from {predictor.record.name}")
    return 0


def _embed_volumes(args: argparse.Namespace) -> int:
    """``embed`` with a 3D encoder: one vector per whole volume (NIfTI file or DICOM series folder)."""
    from medfoundry.files import check_writable
    from medfoundry.predict.volume_encoder import open_volume_encoder

    if args.text:
        raise InputContractError(f"{args.model} encodes CT volumes, not text")
    if args.slice_index is not None:
        raise InputContractError(f"{args.model} embeds whole volumes: drop --slice")
    if args.precision == "int8":
        raise InputContractError(f"{args.model} runs in fp32 or bf16, not int8")
    check_writable(args.out, args.overwrite)  # before minutes of work
    volumes = [read_image(p) for p in args.images]
    predictor = open_volume_encoder(args.model, args.weights).set_precision(args.precision)
    print(f"precision: {predictor.precision_choice.precision} ({predictor.precision_choice.reason})")
    emb = predictor.embed_volumes(volumes, progress=True)
    with atomic_output(args.out, args.overwrite) as tmp, open(tmp, "wb") as fh:
        np.save(fh, emb.astype(np.float32))
    print(f"wrote {args.out}: {emb.shape[0]} × {emb.shape[1]} volume embeddings from {predictor.record.name}")
    return 0


def run_classify(args: argparse.Namespace) -> int:
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.zero_shot import label_set, zero_shot_classify

    if args.probe:
        return _classify_with_probe(args)
    if not args.labels and not args.label_set:
        raise InputContractError("give --labels or --label-set (zero-shot) or --probe (a trained head)")
    predictor = open_contrastive(args.model or DEFAULT_MODEL, args.weights)
    prompts = label_set(predictor, args.label_set) if args.label_set else None
    labels = [s for s in args.labels.split(",")] if args.labels else list(prompts or ())
    if prompts is not None:
        unknown = [lab for lab in labels if lab.strip() not in prompts]
        if unknown:
            raise InputContractError(f"labels {unknown} are not in the label set {args.label_set!r} "
                                     f"({', '.join(prompts)})")
    temperature, templates = None, args.template
    if args.calibration:
        from medfoundry.tasks.calibration import Calibration

        cal = Calibration.load(args.calibration)
        if cal.model != predictor.record.name or [x.strip() for x in labels] != cal.labels:
            raise InputContractError(f"{args.calibration} calibrates {cal.model} for labels {cal.labels}")
        temperature, templates = cal.temperature, templates or cal.templates
    result = zero_shot_classify(predictor, _images(args.images, args.slice_index), labels,
                                templates=templates, prompts=prompts, multilabel=args.multilabel,
                                temperature=temperature,
                                uncertain_below=args.uncertain_below)
    rows = []
    for i, path in enumerate(args.images):
        best, conf = result.top(i)
        rows.append({"image": path, "prediction": "uncertain" if result.uncertain[i] else best,
                     "confidence": round(conf, 4),
                     "scores": {lab: round(float(p), 4)
                                for lab, p in zip(result.labels, result.probs[i], strict=True)}})
    if args.json:
        print(json.dumps({"model": predictor.record.name, "multilabel": args.multilabel, "results": rows}, indent=2))
    else:
        for r in rows:
            scores = "  ".join(f"{k}={v:.3f}" for k, v in r["scores"].items())
            print(f"{r['image']}: {r['prediction']} ({r['confidence']:.3f})  {scores}")
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.calibration import calibrate

    paths, truths = read_labelled_csv(args.data)
    predictor = open_contrastive(args.model or DEFAULT_MODEL, args.weights)
    cal = calibrate(predictor, _images(paths, None), truths, args.labels.split(","), args.template)
    cal.save(args.out, args.overwrite)
    print(f"temperature {cal.temperature:.4f}; ECE {cal.ece_before:.4f} → {cal.ece_after:.4f} on {cal.cases} "
          f"images; wrote {args.out}")
    return 0


def run_ground(args: argparse.Namespace) -> int:
    from PIL import Image

    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.viz import display_rgb, overlay_heatmap

    image = _images([args.image], args.slice_index)[0]
    predictor = open_contrastive(args.model or DEFAULT_MODEL, args.weights)
    heat = predictor.dense_similarity(image, args.text)
    with atomic_output(args.out, args.overwrite) as tmp:
        Image.fromarray(overlay_heatmap(display_rgb(image), heat)).save(tmp, format="PNG")
    if args.npy:
        with atomic_output(args.npy, args.overwrite) as tmp, open(tmp, "wb") as fh:
            np.save(fh, heat.astype(np.float32))
    peak = np.unravel_index(heat.argmax(), heat.shape)
    print(f"wrote {args.out}: {heat.shape[0]}×{heat.shape[1]} map, cosine {heat.min():.3f}..{heat.max():.3f}, "
          f"peak at cell {tuple(int(v) for v in peak)}")
    return 0


def _classify_with_probe(args: argparse.Namespace) -> int:
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.probe import ProbeHead

    head = ProbeHead.load(args.probe)
    predictor = open_contrastive(args.model or head.model, args.weights)
    if predictor.record.name != head.model:
        raise InputContractError(f"{args.probe} was trained on {head.model} embeddings, not {predictor.record.name}")
    probs = head.predict_proba(predictor.embed_images(_images(args.images, args.slice_index)))
    rows = [{"image": p, "prediction": head.classes[int(pr.argmax())], "confidence": round(float(pr.max()), 4),
             "scores": {c: round(float(v), 4) for c, v in zip(head.classes, pr, strict=True)}}
            for p, pr in zip(args.images, probs, strict=True)]
    if args.json:
        print(json.dumps({"model": head.model, "probe": args.probe, "results": rows}, indent=2))
    else:
        for r in rows:
            print(f"{r['image']}: {r['prediction']} ({r['confidence']:.3f})")
    return 0
