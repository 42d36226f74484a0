"""``medfoundry deid``: de-identify DICOM files and folders (PS3.15 Annex E basic profile)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from medfoundry.io.deid import PROFILES

    p = sub.add_parser("deid", help="de-identify DICOM files or folders (PS3.15 Annex E basic profile)")
    p.add_argument("input", help="a DICOM file, or a folder (every DICOM file under it)")
    p.add_argument("output", help="the de-identified file, or a folder of <new SOP Instance UID>.dcm files")
    p.add_argument("--profile", choices=PROFILES, default="basic",
                   help="basic: dates replaced as Table E.1-1 says; retain-dates: dates kept; shift-dates: every "
                        "date of a patient moved back by one keyed number of days")
    p.add_argument("--key", default=None, help="re-identification key file (JSON, mode 0600): continued when it "
                                               "exists, written only when given")
    p.add_argument("--clean-pixels", action="store_true",
                   help="blank burned-in text where the curated filters of pydicom's deid package say the image's "
                        "device puts it (every image); an image that declares BurnedInAnnotation YES with no filter "
                        "for its device is refused and named. Without it, such images are refused")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medfoundry.io.deid import deidentify

    cleaned: dict = {}
    written = deidentify(args.input, args.output, profile=args.profile, key=args.key, overwrite=args.overwrite,
                         clean_pixels=args.clean_pixels, report=cleaned)
    print(f"{args.output}: {len(written)} file{'s' if len(written) != 1 else ''} de-identified ({args.profile})"
          + (f", {len(cleaned)} with burned-in text regions blanked" if args.clean_pixels else "")
          + (f"; key in {args.key}" if args.key else ""))
    for source, regions in cleaned.items():
        boxes = ", ".join(r if isinstance(r, str) else "({},{})-({},{})".format(*r) for r in regions.regions)
        print(f"  {source}: blanked {boxes} [{'; '.join(regions.filters)}]")
    return 0
