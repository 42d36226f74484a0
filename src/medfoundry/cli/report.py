"""``medfoundry report``: a caption/report written by a generative model (``--model``), retrieved from a bank of
reports written for other images (``--bank``), or a structured measurement report (``--structured``)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="caption/report from a generative model (--model medfoundry-captioner-tiny), "
                                      "by retrieval from a bank of reports (CXR-RePaiR-style), or a structured "
                                      "measurement report from a prompted segmentation (--structured)")
    p.add_argument("image", help="image file or DICOM folder")
    p.add_argument("--model", default=None,
                   help="a generative captioner (registry name, e.g. medfoundry-captioner-tiny, or local-dir:PATH "
                        "of a `train captioner` output) or a conversational model (LLaVA-style, asked to describe)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--max-tokens", type=int, default=None, help="longest text, in tokens (greedy decoding)")
    p.add_argument("--no-repeat-ngram", type=int, default=None, metavar="N",
                   help="embedded captioner: never repeat an N-token phrase (default: the model's, 3; 0 off)")
    p.add_argument("--bank", default=None,
                   help="report bank: an index with texts, from `medfoundry index build --texts reports.csv "
                        "[--sentences] --index bank.npz` (its model is used)")
    p.add_argument("--weights", default=None, help="weights for the bank's model (default: the model's own)")
    p.add_argument("-k", type=int, default=1, help="texts to join (1 for report banks, 3-5 for sentence banks)")
    p.add_argument("--slice", type=int, default=None, dest="slice_index", help="slice of a volume")
    p.add_argument("--json", action="store_true", help="print the report and its sources as JSON")
    g = p.add_argument_group("structured report (--structured)")
    g.add_argument("--structured", action="store_true",
                   help="segment from --box/--point and report the measurements: JSON + narrative, or a DICOM SR "
                        "(TID 1500) with --out report.dcm for a DICOM series folder")
    g.add_argument("--box", action="append", default=[], help="x0,y0,x1,y1 in image pixels")
    g.add_argument("--point", action="append", default=[], help="x,y[,label]")
    g.add_argument("--propagate", action="store_true", help="follow the object through the volume (3D)")
    g.add_argument("--seg-model", default="medfoundry-sam-lite", help="the segmenter")
    g.add_argument("--region", default=None, help="organ/region to name in the report, when known")
    g.add_argument("--finding", default="lesion", help="what the mask is (default: lesion)")
    g.add_argument("--out", default=None, help="report.json (JSON with the narrative) or report.dcm (DICOM SR; "
                                               "the DICOM SEG is written beside it as report_seg.dcm)")
    g.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run_structured(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medfoundry.cli.segment import _numbers, segment_one
    from medfoundry.errors import InputContractError
    from medfoundry.io import read_image
    from medfoundry.predict.segment import open_segmenter
    from medfoundry.tasks.structured_report import narrative, structured_report, write_dicom_sr

    if not args.box and not args.point:
        raise InputContractError("--structured needs a prompt: --box x0,y0,x1,y1 and/or --point x,y")
    boxes = [_numbers(b, (4,), "box") for b in args.box]
    points = [_numbers(p, (2, 3), "point") for p in args.point]
    image = read_image(args.image)
    segmenter = open_segmenter(args.seg_model, args.weights)
    mask, grid = segment_one(segmenter, image, boxes, points, args.slice_index, args.propagate)
    prompt = {"box_xyxy": boxes[0]} if boxes else {}
    prompt.update({"points": points} if points else {})
    prompt.update({"slice": args.slice_index, "propagate": bool(args.propagate)})
    report = structured_report(mask, grid, model=args.seg_model, prompt=prompt, region=args.region,
                               finding=args.finding)
    report["narrative"] = narrative(report)
    out = args.out
    if out and out.endswith(".dcm"):
        from medfoundry.io.dicom_seg import write_dicom_seg

        if mask.ndim != 3 or not Path(args.image).is_dir():
            raise InputContractError("a DICOM SR (.dcm) needs a DICOM series folder and --propagate")
        seg_path = str(Path(out).with_name(Path(out).stem + "_seg.dcm"))
        write_dicom_seg(mask, args.image, seg_path, label=args.finding, overwrite=args.overwrite)
        write_dicom_sr(report, args.image, seg_path, out, overwrite=args.overwrite)
        print(f"wrote {out} (SR) and {seg_path} (SEG)")
    elif out:
        from medfoundry.files import atomic_output

        with atomic_output(out, args.overwrite) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    print(json.dumps(report, indent=2) if args.json else report["narrative"])
    return 0


def run_generative(args: argparse.Namespace) -> int:
    """A caption written token by token; Ctrl-C stops it cleanly and keeps the text so far."""
    import sys

    from medfoundry.cli.contrastive import _images
    from medfoundry.registry.loading import resolve_model

    image = _images([args.image], args.slice_index)[0]
    record = None if args.model.startswith("local-dir:") else resolve_model(args.model, args.weights)[0]
    if record is not None and "vqa" in record.tasks:  # a conversational model: ask it for the report
        from medfoundry.predict.conversational import open_chat

        chat = open_chat(args.model, args.weights)
        answer = chat.ask(image, "Describe the findings of this image as a short radiology report.",
                          max_new_tokens=args.max_tokens or 128)
        print(json.dumps({"model": chat.record.name, "report": answer.text}, indent=2) if args.json else answer.text)
        return 0
    from medfoundry.predict.captioner import open_captioner

    captioner = open_captioner(args.model, args.weights)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    caption = captioner.generate(image, args.max_tokens, on_text=show if args.stream and not args.json else None,
                                 no_repeat_ngram=args.no_repeat_ngram)
    if args.json:
        print(json.dumps({"model": captioner.name, "report": caption.text, "new_tokens": caption.new_tokens,
                          "seconds": round(caption.seconds, 3), "interrupted": caption.interrupted}, indent=2))
    elif args.stream:
        print(" [interrupted]" if caption.interrupted else "")
    else:
        print(caption.text + (" [interrupted]" if caption.interrupted else ""))
    return 130 if caption.interrupted else 0


def run(args: argparse.Namespace) -> int:
    if args.structured:
        return run_structured(args)
    if args.model:
        return run_generative(args)
    if not args.bank:
        from medfoundry.errors import InputContractError

        raise InputContractError("give --model NAME (a generative captioner), --bank BANK.npz (report by "
                                 "retrieval) or --structured --box ... (measurement report)")
    from medfoundry.cli.contrastive import _images
    from medfoundry.predict.contrastive import open_contrastive
    from medfoundry.tasks.report import generate_report
    from medfoundry.tasks.retrieval import RetrievalIndex

    bank = RetrievalIndex.load(args.bank)
    predictor = open_contrastive(bank.model, args.weights)
    bank.check_model(predictor, args.bank)
    report = generate_report(predictor, _images([args.image], args.slice_index)[0], bank, k=args.k)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.text)
        for h in report.sources:
            print(f"  [{h.score:.3f}] {h.item[:100]}")
    return 0
