"""``medfoundry findings``: the 14 CheXpert observations of report texts (positive / negative / uncertain / not
mentioned), with the sentence that decided each."""

from __future__ import annotations

import argparse
import csv
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("findings", help="CheXpert observations from radiology report text (negation/uncertainty "
                                        "aware)")
    p.add_argument("path", help="a report text file, or a CSV of reports (one per row)")
    p.add_argument("--column", default="text",
                   help="CSV column(s) holding the text, comma-separated and joined (default: text; IU reports: "
                        "findings,impression)")
    p.add_argument("--id-column", default=None, help="CSV column copied into the output as the report id")
    p.add_argument("--json", action="store_true", help="print JSON (labels and deciding sentences)")
    p.add_argument("--no-finding", choices=("strict", "chexpert"), default="strict",
                   help="strict: No Finding also needs no other abnormality mentioned (default); chexpert: only "
                        "the 13 observations count")
    p.add_argument("--out", default=None, help="write a CSV of labels (one row per report) here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medfoundry.tasks.findings import OBSERVATIONS, extract_findings_many, read_report_texts

    columns = [c.strip() for c in args.column.split(",") if c.strip()]
    texts, rows = read_report_texts(args.path, columns)
    # a single report must be English; in a CSV one odd row is reported as empty instead of stopping the rest
    results = extract_findings_many(texts, no_finding=args.no_finding, check_language=not rows)
    ids = [r.get(args.id_column, "") for r in rows] if rows and args.id_column else [str(i) for i in range(len(texts))]
    if args.out:
        with open(args.out, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["id", *OBSERVATIONS, "empty"])
            for i, r in zip(ids, results, strict=True):
                w.writerow([i, *(r.label(o) for o in OBSERVATIONS), r.empty])
        print(f"wrote {len(results)} reports' labels to {args.out}", file=sys.stderr)
    if args.json:
        out = [{"id": i, **r.as_dict()} for i, r in zip(ids, results, strict=True)]
        print(json.dumps(out[0] if not rows else out, indent=2))
    elif not args.out:
        if rows:
            w = csv.writer(sys.stdout)
            w.writerow(["id", *OBSERVATIONS])
            for i, r in zip(ids, results, strict=True):
                w.writerow([i, *(r.label(o) for o in OBSERVATIONS)])
        else:
            r = results[0]
            if r.empty:
                print("the report mentions nothing (empty or headings only): every observation not mentioned")
            for f in r.findings:
                print(f"{f.observation:28s} {f.label:14s} {f.sentence}")
    return 0
