"""``medfoundry segment``: promptable segmentation of 2D images, slices and whole volumes."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from medfoundry.cli.models import add_model_flags
from medfoundry.errors import InputContractError
from medfoundry.io import MedImage, read_image, write_image

DEFAULT_MODEL = "medfoundry-sam-lite"


def _numbers(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputContractError(f"{what} {text!r} must be comma-separated numbers") from None
    if len(values) not in n:
        raise InputContractError(f"{what} {text!r} needs {' or '.join(map(str, n))} numbers")
    return values


#: A prompts file larger than this is refused (bytes).
MAX_PROMPTS_BYTES = 64 << 20
_PROMPT_KEYS = {"image", "boxes", "points", "slice", "out", "label", "propagate"}


def _finite_numbers(value: object, sizes: tuple[int, ...]) -> bool:
    return (isinstance(value, list) and len(value) in sizes
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value))


def _prompt_job(entry: object, where: str) -> dict:
    """Check one decoded line of a prompts file; raise InputContractError naming ``where`` and the cause."""
    if not isinstance(entry, dict):
        raise InputContractError(f"{where}: each line must be a JSON object, got {type(entry).__name__}")
    unknown = set(entry) - _PROMPT_KEYS
    if unknown:
        raise InputContractError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(_PROMPT_KEYS)})")
    if not isinstance(entry.get("image"), str) or not entry["image"]:
        raise InputContractError(f"{where}: 'image' (a path) is required")
    boxes, points = entry.get("boxes") or [], entry.get("points") or []
    if not isinstance(boxes, list) or not all(_finite_numbers(b, (4,)) for b in boxes):
        raise InputContractError(f"{where}: 'boxes' must be a list of [x0, y0, x1, y1] numbers")
    if not isinstance(points, list) or not all(_finite_numbers(p, (2, 3)) for p in points):
        raise InputContractError(f"{where}: 'points' must be a list of [x, y] or [x, y, label] numbers")
    index = entry.get("slice")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        raise InputContractError(f"{where}: 'slice' must be an integer")
    for key in ("out", "label"):
        if key in entry and not isinstance(entry[key], str):
            raise InputContractError(f"{where}: {key!r} must be a string")
    if "propagate" in entry and not isinstance(entry["propagate"], bool):
        raise InputContractError(f"{where}: 'propagate' must be true or false")
    return {**entry, "boxes": boxes, "points": points}


def read_prompts(path: str | Path) -> list[dict]:
    """Parse a prompts file (JSON lines ``{image, boxes?, points?, slice?, out?, label?, propagate?}``; boxes
    XYXY and points (x, y[, label]) in image pixels). Every problem raises :class:`InputContractError` naming
    the file, the line and the cause."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PROMPTS_BYTES:
            raise InputContractError(f"{path}: prompts file over {MAX_PROMPTS_BYTES >> 20} MiB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputContractError(f"cannot read prompts file {path}: {type(exc).__name__}: {exc}") from None
    jobs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise InputContractError(f"{path}, line {number}: not JSON ({exc})"[:500]) from None
        jobs.append(_prompt_job(entry, f"{path}, line {number}"))
    if not jobs:
        raise InputContractError(f"{path}: no prompts (one JSON object per line)")
    return jobs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment with boxes/points (2D, a slice, or a whole volume)")
    p.add_argument("image", nargs="?", help="image file or DICOM folder (omit with --prompts)")
    add_model_flags(p, required=False)
    p.add_argument("--box", action="append", default=[], help="x0,y0,x1,y1 in image pixels (repeatable)")
    p.add_argument("--point", action="append", default=[], help="x,y[,label] (label 1 = inside, 0 = outside)")
    p.add_argument("--text", default=None, help='segment what this text names (e.g. "a colon polyp"): the '
                                                  "contrastive model's grounding map proposes the box")
    p.add_argument("--text-model", default="medfoundry-clip-tiny", help="contrastive model for --text")
    p.add_argument("--slice", type=int, default=None, dest="slice_index", help="slice of a volume to prompt")
    p.add_argument("--propagate", action="store_true", help="follow the object through the volume (3D mask)")
    p.add_argument("--propagation-head", action="store_true",
                   help="with --propagate: carry the mask with the model's trained propagation head "
                        "(`train sam-propagation`) instead of box hypotheses")
    p.add_argument("--tta", nargs="?", const="logits", default="none", choices=["embedding", "logits"],
                   help="test-time mirroring: `embedding` averages the mirrored encoding into the embedding (encoding "
                        "twice, prompts cost the same); `logits` (the default of a bare --tta) decodes every prompt "
                        "on both and averages the masks (prompts cost twice as much)")
    p.add_argument("--onnx", default=None, help="run the encoder/decoder exported by `models export-onnx` here")
    p.add_argument("--fast-prompts", action="store_true",
                   help="run the mask decoder fused and in bfloat16 where the CPU (or GPU) has native bfloat16 "
                        "(about 2× faster per prompt; masks agree with float32 to bfloat16 rounding)")
    p.add_argument("--embed-pool", type=int, default=1, choices=[1, 2],
                   help="lite models: 2 decodes on the 2× average-pooled embedding (faster still, coarser)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: image encoder in bfloat16 with fused attention (faster on AVX512-BF16/AMX CPUs, GPUs)")
    p.add_argument("--out", default=None, help="mask file: .png, .nii.gz (keeps geometry), .npy, or .dcm (DICOM SEG "
                                            "referencing the source series, for DICOM folders)")
    p.add_argument("--prompts", default=None, help="JSON lines: {image, boxes, points, slice} per image")
    p.add_argument("--out-dir", default=None, help="with --prompts: one mask per line, named after the image")
    p.add_argument("--json", action="store_true", help="print measurements as JSON")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def _mask_image(mask: np.ndarray, like: MedImage) -> MedImage:
    return replace(like, array=mask.astype(np.uint8), photometric="MONOCHROME2", units="mask",
                   window=None, meta={"mask_of": like.source}, phi={})


def segment_one(segmenter, image: MedImage, boxes: list, points: list, slice_index: int | None,
                propagate: bool, use_head: bool = False) -> tuple[np.ndarray, MedImage]:
    """One image's mask and the image it lives on (the volume for 3D, the slice or 2D image otherwise)."""
    from medfoundry.tasks.volume import segment_volume

    pts = np.array([p[:2] for p in points], dtype=np.float32) if points else None
    labels = np.array([int(p[2]) if len(p) > 2 else 1 for p in points]) if points else None
    if image.is_volume:
        if slice_index is None:
            raise InputContractError(f"{image.source} is a volume of {image.array.shape[0]} slices: "
                                     "choose the prompted slice with --slice K")
        if propagate:
            if len(boxes) > 1:
                raise InputContractError("3D propagation follows one object: give one box")
            result = segment_volume(segmenter, image, slice_index, box=np.array(boxes[0]) if boxes else None,
                                    points=pts, point_labels=labels, use_head=use_head, progress=True)
            return result.mask, image
        image = image.slice(slice_index)
    segmenter.set_image(image)
    out = segmenter.predict(boxes=np.array(boxes) if boxes else None, points=pts, point_labels=labels)
    return out.best().any(axis=0), image


def run(args: argparse.Namespace) -> int:
    prompt_jobs = read_prompts(args.prompts) if args.prompts else None  # before any model work
    from medfoundry.predict.segment import open_segmenter
    from medfoundry.tasks.measure import measure

    if args.onnx is not None and (args.fast_prompts or args.embed_pool != 1 or args.precision != "fp32"):
        raise InputContractError("--fast-prompts, --embed-pool and --precision apply to PyTorch models; "
                                 "an ONNX export runs as it was exported")
    segmenter = open_segmenter(args.model or DEFAULT_MODEL, args.weights, onnx=args.onnx, tta=args.tta,
                               **({"precision": args.precision, "embed_pool": args.embed_pool}
                                  if args.onnx is None else {}))
    if args.fast_prompts and args.onnx is None:
        from medfoundry.models.sam_fast import native_bf16

        segmenter.set_decoder_precision("bf16" if native_bf16() else "fp32")
    if args.prompts:
        if not args.out_dir:
            raise InputContractError("--prompts needs --out-dir")
        jobs = prompt_jobs
    else:
        if not args.image or not args.out:
            raise InputContractError("give IMAGE and --out (or --prompts FILE --out-dir DIR)")
        jobs = [{"image": args.image, "boxes": [_numbers(b, (4,), "box") for b in args.box],
                 "points": [_numbers(p, (2, 3), "point") for p in args.point], "slice": args.slice_index,
                 "out": args.out}]
    report = []
    if args.text:
        from medfoundry.predict.contrastive import open_contrastive
        from medfoundry.tasks.text_to_mask import segment_by_text

        if args.prompts or args.box or args.point:
            raise InputContractError("--text replaces boxes and points; give one image")
        image = read_image(args.image)
        image = image.slice(args.slice_index) if image.is_volume and args.slice_index is not None else image
        if image.is_volume:
            raise InputContractError("--text on a volume needs --slice K")
        result = segment_by_text(open_contrastive(args.text_model), segmenter, image, args.text)
        jobs = []
        write_image(replace(_mask_image(result.mask, image), array=result.mask.astype(np.uint8) *
                            (255 if args.out.endswith(".png") else 1)), args.out, overwrite=args.overwrite)
        entry = {"image": args.image, "mask": args.out, "text": args.text, "box_xyxy": result.box.tolist(),
                 **measure(result.mask, image).to_dict()}
        print(json.dumps(entry, indent=2) if args.json else f"{args.out}: box {result.box.round(1).tolist()}, "
              f"{entry['pixels']} px")
        return 0
    for job in jobs:
        image = read_image(job["image"])
        mask, grid = segment_one(segmenter, image, job.get("boxes") or [], job.get("points") or [],
                                 job.get("slice"), args.propagate or bool(job.get("propagate")),
                                 args.propagation_head)
        out = job.get("out") or str(Path(args.out_dir) / f"{Path(job['image']).name.split('.')[0]}_mask.nii.gz")
        if out.endswith(".dcm"):
            from medfoundry.io.dicom_seg import write_dicom_seg

            if mask.ndim != 3 or not Path(job["image"]).is_dir():
                raise InputContractError("DICOM SEG output (.dcm) needs a DICOM series folder and --propagate")
            write_dicom_seg(mask, job["image"], out, label=job.get("label", "object"), overwrite=args.overwrite)
        elif out.endswith(".png"):
            if mask.ndim == 3:
                raise InputContractError("a 3D mask cannot be a PNG: use .nii.gz")
            write_image(replace(_mask_image(mask, grid), array=mask.astype(np.uint8) * 255), out,
                        overwrite=args.overwrite)
        else:
            write_image(_mask_image(mask, grid), out, overwrite=args.overwrite)
        entry = {"image": job["image"], "mask": out, **measure(mask, grid).to_dict()}
        report.append(entry)
        if not args.json:
            size = f"{entry['volume_ml']:.2f} mL" if entry["volume_ml"] is not None else f"{entry['area_mm2']:.1f} mm²"
            print(f"{out}: {entry['pixels']} px, {size}, long axis {entry['long_axis_mm']:.1f} mm, "
                  f"short axis {entry['short_axis_mm']:.1f} mm")
    if args.json:
        print(json.dumps(report if args.prompts else report[0], indent=2))
    return 0
