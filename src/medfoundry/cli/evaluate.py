"""``medfoundry eval``: run a benchmark spec on a model; ``eval compare`` puts two runs side by side."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="benchmark a model reproducibly (JSON + HTML report), or compare two runs")
    p.add_argument("args", nargs="*", help="`compare A.json B.json`, `prepare --shared DIR` (built-in data), "
                   "`distance DIR_A DIR_B` (Fréchet radiomic distance of two image sets), or `list`")
    p.add_argument("--model", default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--benchmark", default=None, help="spec YAML or built-in name (`medfoundry eval list`)")
    p.add_argument("--json", action="store_true", help="for `distance`: print JSON")
    p.add_argument("--out", default=None, help="run folder (default: eval-runs/<benchmark>__<model>[__<weights>])")
    p.add_argument("--omit-texts", action="store_true",
                   help="leave case texts (notes, reports) out of results.json and report.html, e.g. to publish "
                        "results on data whose texts may not be copied")
    p.add_argument("--shared", default=None, help="for `prepare`: the shared data folder")
    p.set_defaults(func=run)


def default_run_folder(benchmark: str, model: str, weights: str | None) -> str:
    """``eval-runs/<benchmark>__<model>`` and, with ``--weights``, ``__<file name>-<8 hex of its absolute path>``:
    runs with other weights never share a folder (their per-case caches are keyed by the weights' sha256 too)."""
    import hashlib
    import re
    from pathlib import Path

    folder = f"eval-runs/{benchmark}__{model.replace(':', '_').replace('/', '_')}"
    if weights:
        local = "://" not in weights and not weights.startswith("hf-hub:")
        where = str(Path(weights.removeprefix("local-dir:")).expanduser().resolve()) if local else weights
        name = re.sub(r"[^\w.-]", "_", Path(where).name)[:40]
        folder += f"__{name}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"
    return folder


def run(args: argparse.Namespace) -> int:
    from medfoundry.errors import InputContractError

    if args.args and args.args[0] == "compare":
        if len(args.args) != 3:
            raise InputContractError("usage: medfoundry eval compare A.json B.json")
        from pathlib import Path

        from medfoundry.eval.runner import compare

        a, b = (json.loads(Path(p).read_text()) for p in args.args[1:])
        print(f"{'metric':20s} {'A':>8s} {'B':>8s} {'B-A':>8s}  intervals overlap")
        for r in compare(a, b):
            print(f"{r['metric']:20s} {r['a']:8.4f} {r['b']:8.4f} {r['difference']:+8.4f}  {r['intervals_overlap']}")
        return 0
    if args.args and args.args[0] == "prepare":
        from medfoundry.eval.prepare import prepare_shared
        from medfoundry.samples import shared_data_dir

        root = args.shared or shared_data_dir()
        if root is None:
            raise InputContractError("no shared data folder found: pass --shared DIR")
        out = args.out or "eval-data"
        for path in prepare_shared(root, out):
            print(f"wrote {path}")
        return 0
    if args.args and args.args[0] == "list":
        from medfoundry.eval.specs import builtin_specs, load_spec

        for name in sorted(builtin_specs()):
            spec = load_spec(name)
            print(f"{name:24s} {spec.task:26s} {spec.description}")
        return 0
    if args.args and args.args[0] == "distance":
        if len(args.args) != 3:
            raise InputContractError("usage: medfoundry eval distance DIR_A DIR_B")
        from medfoundry.eval.distance import image_set_distance
        from medfoundry.tasks.retrieval import list_images

        result = image_set_distance(list_images(args.args[1]), list_images(args.args[2]),
                                    progress=sys.stderr.isatty())
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"log FRD(A, B) = {result['log_frd']:.3f}   (A halves {result['reference_log_frd_a_halves']:.3f}, "
                  f"B halves {result['reference_log_frd_b_halves']:.3f}; {result['images_a']} vs "
                  f"{result['images_b']} images, {result['features']} features)")
        return 0
    if args.args:
        raise InputContractError(f"unknown eval action {args.args[0]!r}: use compare, prepare, distance or list")
    if not args.model or not args.benchmark:
        raise InputContractError("give --model and --benchmark (or `eval compare A.json B.json`)")
    from medfoundry.eval.runner import run_benchmark
    from medfoundry.eval.specs import load_spec

    spec = load_spec(args.benchmark)
    out = args.out or default_run_folder(spec.name, args.model, args.weights)
    report = run_benchmark(spec, args.model, out, weights=args.weights, progress=sys.stderr.isatty(),
                           omit_texts=args.omit_texts)
    for name, m in report["metrics"].items():
        base = report["baseline"].get(name)
        print(f"{name:18s} {m['value']:.4f}  [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]  baseline "
              f"{'n/a' if base is None else format(base, '.4f')}")
    print(f"wrote {out}/results.json and {out}/report.html")
    return 0
