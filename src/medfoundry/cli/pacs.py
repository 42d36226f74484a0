"""``medfoundry pacs``: talk to a PACS over DICOMweb (search now; reading is any image argument's dicomweb+ address)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pacs", help="search a PACS over DICOMweb (QIDO-RS)")
    psub = p.add_subparsers(dest="pacs_command", metavar="ACTION")
    psub.required = True
    s = psub.add_parser("search", help="list series on a DICOMweb server")
    s.add_argument("url", help="the server's DICOMweb root, e.g. http://host:8042/dicom-web (dicomweb+ optional)")
    s.add_argument("--patient", default=None, help="Patient ID")
    s.add_argument("--modality", default=None, help="e.g. CT, MR, SEG, SR")
    s.add_argument("--study-date", default=None, help="YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
    s.add_argument("--study", default=None, help="only this Study Instance UID")
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.set_defaults(func=run_search)


def run_search(args: argparse.Namespace) -> int:
    from medfoundry.io.dicomweb import search

    rows = search(args.url, patient=args.patient, modality=args.modality, study_date=args.study_date,
                  study=args.study, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['PatientID'] or '-'}\t{r['StudyDate'] or '-'}\t{r['Modality'] or '-'}\t"
              f"{r['NumberOfSeriesRelatedInstances'] or '?'} instances\t{r['SeriesDescription'] or ''}\t{r['address']}")
    print(f"{len(rows)} series")
    return 0
