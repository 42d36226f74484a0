"""``medfoundry report``: a report for an image, retrieved from a bank of reports written for other images."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="report generation by retrieval from a bank of reports (CXR-RePaiR-style)")
    p.add_argument("image", help="image file or DICOM folder")
    p.add_argument("--bank", required=True,
                   help="report bank: an index with texts, from `medfoundry index build --texts reports.csv "
                        "[--sentences] --index bank.npz` (its model is used)")
    p.add_argument("--weights", default=None, help="weights for the bank's model (default: the model's own)")
    p.add_argument("-k", type=int, default=1, help="texts to join (1 for report banks, 3-5 for sentence banks)")
    p.add_argument("--slice", type=int, default=None, dest="slice_index", help="slice of a volume")
    p.add_argument("--json", action="store_true", help="print the report and its sources as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
