"""Seconds to read one CT series (20 slices, 512×512, JPEG 2000 lossless) from a local Orthanc over DICOMweb —
first read (empty cache: QIDO listing + WADO-RS retrieval + decoding) and cached read (QIDO listing + decoding) —
against reading the same files from disk with the same series reader.

    apt-get install orthanc orthanc-dicomweb
    nice -n 10 python benchmarks/dicomweb_read.py --shared ../shared/data --repeats 9 \
        --out benchmarks/results/dicomweb_read.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "pacs"))


def series_with_uids(src: Path, dst: Path) -> tuple[str, str]:
    """Copy the example series, restoring the UIDs its anonymiser blanked (a PACS needs them)."""
    import pydicom
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True)
    study, series = generate_uid(entropy_srcs=["bench-study"]), generate_uid(entropy_srcs=["bench-series"])
    for p in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        meta = ds.file_meta
        ds.SOPInstanceUID, ds.SOPClassUID = meta.MediaStorageSOPInstanceUID, meta.MediaStorageSOPClassUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(dst / p.name)
    return study, series


def timed(fn, repeats: int, before=None) -> list[float]:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "runs_s": [round(t, 4) for t in times]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default="benchmarks/results/dicomweb_read.json")
    args = ap.parse_args()
    from orthanc_server import start_orthanc

    from medfoundry.eval.provenance import collect
    from medfoundry.io import read_image
    from medfoundry.io.dicomweb import store

    src = Path(args.shared) / "totalsegmentator_examples" / "dicom" / "example_ct_dicom"
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "ct"
        study, series = series_with_uids(src, folder)
        server = start_orthanc(tmp / "orthanc")
        try:
            import pydicom

            store(server.url, [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))])
            address = server.address(study, series)
            cache = tmp / "cache"
            os.environ["MEDFOUNDRY_DICOMWEB_CACHE"] = str(cache)
            disk_image, web_image = read_image(folder), read_image(address)  # warm-up (imports, page cache)
            assert np.array_equal(disk_image.array, web_image.array) and disk_image.spacing == web_image.spacing
            disk, first, cached = [], [], []
            for _ in range(args.repeats):  # interleaved, so that a change of machine load hits all three alike
                disk += timed(lambda: read_image(folder), 1)
                first += timed(lambda: read_image(address), 1, before=lambda: shutil.rmtree(cache, ignore_errors=True))
                cached += timed(lambda: read_image(address), 1)
            with urllib.request.urlopen(server.url.rsplit("/dicom-web", 1)[0] + "/system", timeout=10) as r:
                orthanc_version = json.load(r)["Version"]
            where = ("in a private network namespace, through a relay on 127.0.0.1 (same machine)" if server.isolated
                     else "on 127.0.0.1 (same machine)")
        finally:
            server.stop()
        size = sum(p.stat().st_size for p in folder.glob("*.dcm"))
    import dicomweb_client

    result = {
        "benchmark": "dicomweb_read",
        "series": "totalsegmentator_examples/dicom/example_ct_dicom (UIDs restored)",
        "slices": int(disk_image.array.shape[0]), "shape": list(disk_image.array.shape),
        "bytes_on_disk": size, "transfer_syntax": disk_image.meta.get("TransferSyntax"),
        "repeats": args.repeats,
        "disk_folder": summary(disk),
        "dicomweb_first_read": summary(first),
        "dicomweb_cached_read": summary(cached),
        "server": f"Orthanc {orthanc_version} + DICOMweb plugin {where}",
        "client": f"dicomweb-client {dicomweb_client.__version__}",
        "load_average_1min_at_start": load_start, "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "command": f"nice -n 10 python benchmarks/dicomweb_read.py --shared ../shared/data --repeats {args.repeats} "
                   f"--out {args.out}",
        "provenance": collect(data=src, settings=args),  # no model: the series reader
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("disk_folder", "dicomweb_first_read", "dicomweb_cached_read")}, indent=2))


if __name__ == "__main__":
    main()
