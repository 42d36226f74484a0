"""``medfoundry batch embed|classify|segment``: archive-scale inference on Ray Data into Parquet shards."""

from __future__ import annotations

import argparse
import json

from medfoundry.cli.models import add_model_flags

DEFAULT_MODELS = {"embed": "medfoundry-clip-tiny", "classify": "medfoundry-clip-tiny", "segment": "medfoundry-sam-lite"}
MANIFEST_HELP = ("CSV or Parquet, one row per item: path (file, DICOM folder or dicomweb+http(s):// series address), "
                 "optional id and slice; classify: optional labels; segment: boxes (x0,y0,x1,y1) and/or points "
                 "(x,y[,label]), several separated by ';'")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="batch inference over a manifest on Ray (local or a cluster), resumable")
    bsub = p.add_subparsers(dest="batch_command", metavar="TASK")
    bsub.required = True
    for task, what in (("embed", "image embeddings"), ("classify", "zero-shot labels and scores"),
                       ("segment", "prompted masks (COCO RLE) with measurements")):
        pt = bsub.add_parser(task, help=f"{what} of every manifest row into Parquet shards")
        pt.add_argument("--manifest", required=True, help=MANIFEST_HELP)
        pt.add_argument("--out", required=True, help="output folder: results/ and errors/ Parquet shards, job.json; "
                                                     "run again with the same --out to resume")
        add_model_flags(pt, required=False)
        pt.add_argument("--workers", type=int, default=1, help="model replicas (Ray actors), each loads the model once")
        pt.add_argument("--address", default=None,
                        help="Ray cluster to join (ray://host:10001 or auto); default: a local Ray instance")
        pt.add_argument("--batch-size", type=int, default=16, help="items per inference batch")
        pt.add_argument("--shard-rows", type=int, default=1000, help="rows per Parquet shard")
        pt.add_argument("--threads-per-worker", type=int, default=None,
                        help="torch CPU threads per replica (default: CPUs / workers)")
        pt.add_argument("--num-cpus", type=int, default=None, help="local Ray instance: CPUs it may use")
        pt.add_argument("--retry-errors", action="store_true", help="process items of the errors table again")
        pt.add_argument("--json", action="store_true", help="print the run's summary as JSON")
        if task == "classify":
            pt.add_argument("--labels", default=None, help='comma-separated labels, e.g. "normal,pneumonia"')
            pt.add_argument("--label-set", default=None, help="a label set of the model's record (e.g. modality)")
            pt.add_argument("--template", action="append", default=None, help="prompt template with {} (repeatable)")
        pt.set_defaults(func=run, task=task)


def run(args: argparse.Namespace) -> int:
    from medfoundry.batch.job import run_batch_job, summary_dict

    labels = [s.strip() for s in args.labels.split(",")] if getattr(args, "labels", None) else None
    ray_init = {"num_cpus": args.num_cpus} if args.num_cpus and not args.address else None
    summary = run_batch_job(args.task, args.manifest, args.out, model=args.model or DEFAULT_MODELS[args.task],
                            weights=args.weights, workers=args.workers, address=args.address,
                            batch_size=args.batch_size, shard_rows=args.shard_rows, labels=labels,
                            label_set=getattr(args, "label_set", None), templates=getattr(args, "template", None),
                            threads_per_worker=args.threads_per_worker, retry_errors=args.retry_errors,
                            ray_init=ray_init)
    if args.json:
        print(json.dumps(summary_dict(summary), indent=2))
    else:
        print(f"{args.out}: {summary.processed} items processed now ({summary.succeeded} ok, {summary.failed} failed), "
              f"{summary.already_done} done before, {summary.duplicates} duplicate rows; "
              f"{summary.items_per_second:.1f} items/s over {summary.seconds:.1f} s with {summary.model}")
    return 0
