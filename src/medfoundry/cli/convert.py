"""``medfoundry convert PATH OUT``: write an image as NIfTI, PNG (windowed), NumPy ``.npy``/``.npz``."""

from __future__ import annotations

import argparse

from medfoundry.io import get_window, read_image, write_image


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an image to .nii.gz, .png (windowed), .npy or .npz")
    p.add_argument("path", help="input image file or DICOM series folder")
    p.add_argument("out", help="output file; the format follows its suffix")
    p.add_argument("--window", default=None,
                   help="for PNG: a preset (lung, mediastinum, bone, brain, soft_tissue, abdomen, liver, stroke) "
                        "or 'centre,width'; default: the file's own window")
    p.add_argument("--slice", type=int, default=None, dest="slice_index",
                   help="for PNG of a volume: index along the first (Z) axis")
    p.add_argument("--series", default=None, help="SeriesInstanceUID, for a folder holding several series")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    image = read_image(args.path, series_uid=args.series)
    window = get_window(args.window) if args.window else None
    out = write_image(image, args.out, window=window, slice_index=args.slice_index, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
