"""``medfoundry segment``: promptable segmentation of 2D images, slices and whole volumes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from medfoundry.cli.models import add_model_flags
from medfoundry.errors import InputContractError
from medfoundry.io import MedImage, read_image
from medfoundry.io.dicomweb import is_dicomweb

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
    p.add_argument("--propagate", action="store_true",
                   help="the object's 3D mask from a prompt on --slice K. Without --model, one --box goes to "
                        "medfoundry-box3d-tiny (one pass, better on new patients) and points or the 2D-only "
                        "options to medfoundry-sam-lite's slice-by-slice propagation; MedSAM2 runs its video "
                        "predictor from one --box, SAM-Med3D its 3D network from --point x,y")
    p.add_argument("--propagation-head", action="store_true",
                   help="with --propagate: carry the mask with the model's trained propagation head "
                        "(`train sam-propagation`) instead of box hypotheses")
    p.add_argument("--tta", nargs="?", const="logits", default="none", choices=["embedding", "logits"],
                   help="test-time mirroring: `embedding` averages the mirrored encoding into the embedding (encoding "
                        "twice, prompts cost the same); `logits` (the default of a bare --tta) decodes every prompt "
                        "on both and averages the masks (prompts cost twice as much). A different prediction by "
                        "design: "
                        "for LiteMedSAM, `embedding` masks agree with the plain ones at mean IoU 0.91 (worst 0.78; "
                        "benchmarks/results/litemedsam_paths.json)")
    p.add_argument("--onnx", default=None, help="run the encoder/decoder exported by `models export-onnx` here")
    p.add_argument("--fast-prompts", action="store_true",
                   help="run the mask decoder fused and in bfloat16 where the CPU (or GPU) has native bfloat16 "
                        "(about 2× faster per prompt; LiteMedSAM masks agree with float32 at mean IoU 0.997, "
                        "worst 0.987)")
    p.add_argument("--embed-pool", type=int, default=1, choices=[1, 2],
                   help="lite models: 2 decodes on the 2× average-pooled embedding (faster still, coarser)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="image encoder precision. auto (default): bfloat16 only where it is native (AVX512-BF16/AMX "
                        "CPUs, GPUs) and measured faster with masks agreeing with float32 (probed once, cached in "
                        "$MEDFOUNDRY_CACHE); bf16: force it where native (elsewhere a warning and float32). bf16 is "
                        "approximate: LiteMedSAM masks agree with float32 at mean IoU 0.975, worst 0.86 on a small CT "
                        "structure (benchmarks/results/litemedsam_paths.json); fp32: the reference")
    p.add_argument("--out", default=None, help="mask file: .png, .nii.gz (keeps geometry), .npy, or .dcm (DICOM SEG "
                                            "referencing the source series, for DICOM folders)")
    p.add_argument("--sr", default=None, help="with a DICOM SEG --out: also write the measurements as a DICOM SR "
                                          "(TID 1500 measurement report referencing the SEG segment) here")
    p.add_argument("--store", action="store_true", help="with a dicomweb+ image and a .dcm --out: send the SEG and the "
                                                        "SR to the same server (STOW-RS)")
    p.add_argument("--prompts", default=None, help="JSON lines: {image, boxes, points, slice} per image")
    p.add_argument("--out-dir", default=None, help="with --prompts: one mask per line, named after the image")
    p.add_argument("--json", action="store_true", help="print measurements as JSON")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def segment_one(segmenter, image: MedImage, boxes: list, points: list, slice_index: int | None,
                propagate: bool, use_head: bool = False) -> tuple[np.ndarray, MedImage]:
    """One image's mask and the image it lives on (the volume for 3D, the slice or 2D image otherwise): the
    segmentation flow's :func:`medfoundry.tasks.segmentation.segment`."""
    from medfoundry.tasks.segmentation import segment

    outcome = segment(segmenter, image, boxes, points, slice_index, propagate, use_head, progress=True)
    return outcome.mask, outcome.image


def _report_and_store(args: argparse.Namespace, image: str, folder: str, seg_path: str, measured: dict) -> dict:
    """Write the TID 1500 report of a SEG (``--sr`` or beside it) and, with ``--store``, STOW both to the server."""
    import pydicom

    from medfoundry.io.dicom import list_series, read_dataset
    from medfoundry.io.dicom_sr import write_measurement_report
    from medfoundry.io.dicomweb import store

    seg = pydicom.dcmread(seg_path)
    files = [f for group in list_series(folder).values() for f in group]
    sources = [read_dataset(p, stop_before_pixels=True) for p in files]
    sr_path = args.sr or str(Path(seg_path).with_name(Path(seg_path).name.removesuffix(".dcm") + "_sr.dcm"))
    write_measurement_report(seg, sources, measured, sr_path, overwrite=args.overwrite)
    out: dict = {"sr": sr_path}
    if args.store:
        out["stored"] = store(image, [seg, pydicom.dcmread(sr_path)])
    return out


#: architectures with their own inference in float32, to which the options of medfoundry's SAM do not apply:
#: MedSAM2 (the sam2 package), SAM-Med3D (medim) and Box3DNet (one pass from a key-slice box to the 3D object)
REFERENCE_ARCHS = ("sam2", "sam_med3d", "box3d")


def _reference_arch(args: argparse.Namespace) -> str | None:
    """The model's architecture when it runs its own inference (:data:`REFERENCE_ARCHS`), after refusing the
    options that apply only to medfoundry's own SAM implementation; None for every other model."""
    from medfoundry.registry.loading import resolve_model

    if not args.model:
        return None
    arch = resolve_model(args.model, args.weights)[0].arch
    if arch not in REFERENCE_ARCHS:
        return None
    refused = [flag for flag, used in (("--onnx", args.onnx is not None), ("--fast-prompts", args.fast_prompts),
                                       ("--embed-pool", args.embed_pool != 1), ("--tta", args.tta != "none"),
                                       ("--precision bf16", args.precision == "bf16"),
                                       ("--propagation-head", args.propagation_head), ("--text", bool(args.text)))
               if used]
    if refused:
        raise InputContractError(f"{args.model} runs its own inference in float32: {', '.join(refused)} "
                                 "do not apply")
    return arch


def _planar_options_asked(args: argparse.Namespace) -> bool:
    """Options that only the 2D model honours: with any of them the default stays the 2D model everywhere (its
    propagation included), so that what was asked for is what runs."""
    return bool(args.onnx is not None or args.fast_prompts or args.embed_pool != 1 or args.tta != "none"
                or args.precision == "bf16" or args.propagation_head)


def run(args: argparse.Namespace) -> int:
    prompt_jobs = read_prompts(args.prompts) if args.prompts else None  # before any model work
    from medfoundry.predict.segment import open_segmenter
    from medfoundry.tasks.measure import measure

    if args.onnx is not None and (args.fast_prompts or args.embed_pool != 1 or args.precision == "bf16"):
        raise InputContractError("--fast-prompts, --embed-pool and --precision apply to PyTorch models; "
                                 "an ONNX export runs as it was exported")
    reference = _reference_arch(args)
    if reference == "sam_med3d":
        from medfoundry.predict.sam_med3d import open_sam_med3d

        segmenter = open_sam_med3d(args.model, args.weights)
    elif reference in ("sam2", "box3d"):
        segmenter = open_segmenter(args.model, args.weights, precision="fp32")
    elif args.model is None and args.weights is None and not _planar_options_asked(args):
        from medfoundry.predict.default_segmenter import open_default_segmenter

        segmenter = open_default_segmenter(precision=args.precision)  # box3d answers one box on a key slice
    else:
        segmenter = open_segmenter(args.model or DEFAULT_MODEL, args.weights, onnx=args.onnx, tta=args.tta,
                                   **({"precision": args.precision, "embed_pool": args.embed_pool}
                                      if args.onnx is None else {}))
    if args.fast_prompts and args.onnx is None:
        from medfoundry.models.sam_fast import native_bf16

        segmenter.set_decoder_precision("bf16" if native_bf16() else "fp32")
    if segmenter.precision_choice is not None and not args.json:
        print(f"precision: {segmenter.precision_choice.precision} ({segmenter.precision_choice.reason})",
              file=sys.stderr)
    if args.prompts:
        if not args.out_dir:
            raise InputContractError("--prompts needs --out-dir")
        jobs = prompt_jobs or []
    else:
        if not args.image or not args.out:
            raise InputContractError("give IMAGE and --out (or --prompts FILE --out-dir DIR)")
        jobs = [{"image": args.image, "boxes": [_numbers(b, (4,), "box") for b in args.box],
                 "points": [_numbers(p, (2, 3), "point") for p in args.point], "slice": args.slice_index,
                 "out": args.out}]
    if args.store and not all(is_dicomweb(j.get("image")) and str(j.get("out", "")).endswith(".dcm") for j in jobs):
        raise InputContractError("--store sends a DICOM SEG (--out X.dcm) back to the DICOMweb server the image came "
                                 "from: give a dicomweb+http:// series address")
    report = []
    if args.text:
        from medfoundry.predict.contrastive import open_contrastive
        from medfoundry.tasks.segmentation import SegmentationOutcome, write_mask
        from medfoundry.tasks.text_to_mask import segment_by_text

        if args.prompts or args.box or args.point:
            raise InputContractError("--text replaces boxes and points; give one image")
        image = read_image(args.image)
        image = image.slice(args.slice_index) if image.is_volume and args.slice_index is not None else image
        if image.is_volume:
            raise InputContractError("--text on a volume needs --slice K")
        result = segment_by_text(open_contrastive(args.text_model), segmenter, image, args.text)
        outcome = SegmentationOutcome(result.mask, image, image, measure(result.mask, image))
        write_mask(outcome, args.out, overwrite=args.overwrite)
        entry = {"image": args.image, "mask": args.out, "text": args.text, "box_xyxy": result.box.tolist(),
                 **outcome.measurement.to_dict()}
        print(json.dumps(entry, indent=2) if args.json else f"{args.out}: box {result.box.round(1).tolist()}, "
              f"{entry['pixels']} px")
        return 0
    from medfoundry.tasks.segmentation import segment_file, write_mask

    for job in jobs:
        out = job.get("out") or str(Path(args.out_dir) / f"{Path(job['image']).name.split('.')[0]}_mask.nii.gz")
        outcome, image = segment_file(segmenter, job["image"], job.get("boxes") or [], job.get("points") or [],
                                      job.get("slice"), args.propagate or bool(job.get("propagate")),
                                      args.propagation_head, progress=not args.json)
        if outcome.volume is not None and not outcome.mask.any():  # a propagation that found nothing to follow
            why = "the model's 3D mask is empty" if outcome.volume.stopped[0] == "model" else outcome.volume.stopped[0]
            raise InputContractError(f"{job['image']}: no object on key slice {job.get('slice')} inside the prompt "
                                     f"({why}); nothing written to {out}: check --slice and the box or points")
        write_mask(outcome, out, series=image.meta.get("series_folder") if is_dicomweb(job["image"]) else job["image"],
                   label=job.get("label", "object"), overwrite=args.overwrite)
        stored = None
        if out.endswith(".dcm") and (args.sr or args.store):
            folder = image.meta.get("series_folder") if is_dicomweb(job["image"]) else job["image"]
            stored = _report_and_store(args, job["image"], folder, out, outcome.measurement.to_dict())
        sizes = outcome.measurement
        entry = {"image": job["image"], "mask": out, "model": outcome.model, **sizes.to_dict(), **(stored or {})}
        report.append(entry)
        if not args.json:
            print(f"{out}: {sizes.describe()} ({outcome.model})" + (f"; SR {entry['sr']}" if "sr" in entry else "")
                  + (f"; stored {len(entry['stored'])} objects on the server" if "stored" in entry else ""))
    if args.json:
        print(json.dumps(report if args.prompts else report[0], indent=2))
    return 0
