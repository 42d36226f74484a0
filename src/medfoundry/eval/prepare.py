"""Case tables (CSV) for the built-in benchmarks, made from the project's shared data folder.

Splits match the embedded models' training: ``val`` rows (PneumoniaMNIST val, Kvasir val ids, the COVID patients
held out by :mod:`medfoundry.datasets.pairs`) were never trained on; the tables flag the rest.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import numpy as np

from medfoundry.datasets.splits import UNSEEN_LESION_PATIENTS


def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _covid(root: Path, out: Path) -> Path:
    from medfoundry.datasets.pairs import covid_note_rows

    folder = root / "covid_cxr_clinical_notes"
    split = {r["image"]: r["split"] for r in covid_note_rows(root, random.Random(0))}
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    rows = []
    for r in records:
        finding = r["finding"].strip().lower()
        label = "" if finding == "todo" else "no finding" if finding == "no finding" else \
            "covid-19" if finding.startswith("covid-19") else "other pneumonia"
        rows.append({"id": Path(r["image"]).stem, "image": os.path.relpath(folder / r["image"], out),
                     "label": label, "text": " ".join(r["clinical_notes"].split())[:600], "patient": r["patientid"],
                     "sex": r["sex"] or "unknown", "view": r["view"] if r["view"] in ("PA", "AP", "AP Supine")
                     else "unknown", "split": split[str(folder / r["image"])],
                     "right_lung": r["right_lung_bbox_xywh"], "left_lung": r["left_lung_bbox_xywh"]})
    return _write(out / "covid.csv", rows)


def _lesions(root: Path, out: Path) -> Path:
    rows = []
    for path in sorted((root / "deeplesion_ct_lesion_3d" / "volumes").glob("*.npz")):
        patient = path.stem.split("_")[2]
        rows.append({"id": path.stem, "image": os.path.relpath(path, out), "mask": os.path.relpath(path, out),
                     "patient": patient, "seen_in_training": "no" if patient in UNSEEN_LESION_PATIENTS else "yes"})
    return _write(out / "lesion3d.csv", rows)


def _organs(root: Path, out: Path, min_voxels: int = 300, min_slices: int = 3) -> Path:
    from medfoundry.io import read_image

    folder = root / "totalsegmentator_examples"
    with open(folder / "labels_total.csv", newline="", encoding="utf-8") as fh:
        names = {int(r["label"]): r["name"] for r in csv.DictReader(fh)}
    pairs = [("ct_sm", folder / "nifti" / "example_ct_sm.nii.gz", folder / "nifti" / "example_seg.nii.gz"),
             ("ct_dicom", folder / "dicom" / "example_ct_dicom", folder / "nifti" / "example_seg_dicom.nii.gz")]
    rows = []
    for tag, ct, seg in pairs:
        labels = read_image(seg).array
        for value in np.unique(labels):
            obj = labels == value
            if value == 0 or obj.sum() < min_voxels or obj.any(axis=(1, 2)).sum() < min_slices:
                continue
            rows.append({"id": f"{tag}_{names.get(int(value), value)}", "image": os.path.relpath(ct, out),
                         "mask": os.path.relpath(seg, out), "mask_value": int(value), "volume": tag,
                         "organ": names.get(int(value), str(value))})
    return _write(out / "organs3d.csv", rows)


def _medpix(root: Path, out: Path) -> Path:
    """MedPix CT/MR images with modality, plane, body region, caption and case; split by case
    (:func:`~medfoundry.datasets.splits.medpix_val_cases`, the split of medfoundry-clip-tiny's training)."""
    from medfoundry.datasets.splits import medpix_val_cases

    folder = root / "medpix_ct_mr_captions"
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    val = medpix_val_cases(r["case_id"] for r in records)
    rows = [{"id": r["image_id"], "image": os.path.relpath(folder / r["file"], out), "modality": r["modality"],
             "plane": r["plane"], "region": r["body_region"], "case": r["case_id"],
             "text": " ".join(r["caption"].split()) if r["caption_placeholder"] != "1" else "",
             "has_caption": "no" if r["caption_placeholder"] == "1" or not r["caption"].strip() else "yes",
             "split": "val" if r["case_id"] in val else "train"} for r in records]
    return _write(out / "medpix.csv", rows)


def _modality(out: Path) -> Path:
    """Images of four modalities from the other tables: MedPix CT and MR, chest radiographs (COVID-19 collection
    and PneumoniaMNIST), colonoscopy frames (Kvasir-SEG); ``split`` is each source's own."""
    rows = []
    for table, label_of in (("medpix.csv", lambda r: r["modality"]), ("covid.csv", lambda r: "radiograph"),
                            ("pneumonia.csv", lambda r: "radiograph"), ("kvasir.csv", lambda r: "endoscopy")):
        with open(out / table, newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                rows.append({"id": f"{table.removesuffix('.csv')}_{r['id']}", "image": r["image"],
                             "label": label_of(r), "source": table.removesuffix(".csv"), "split": r["split"]})
    return _write(out / "modality.csv", rows)


def prepare_shared(shared_root: str | Path, out: str | Path) -> list[Path]:
    """Write the case tables of every built-in benchmark into ``out`` (``pneumonia.csv`` with its PNGs,
    ``kvasir.csv``, ``covid.csv``, ``lesion3d.csv``, ``organs3d.csv``, ``medpix.csv``, ``modality.csv``); returns
    their paths."""
    from medfoundry.datasets.pairs import _pneumonia
    from medfoundry.train.seg_data import shared_manifest

    root, out = Path(shared_root).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = _pneumonia(root, out, random.Random(0))
    pneumonia = _write(out / "pneumonia.csv", [{"id": r["group"], "image": os.path.relpath(r["image"], out),
                                                "label": r["label"], "split": r["split"]} for r in rows])
    manifest = shared_manifest(root, out / "seg_manifest.jsonl")
    kvasir = []
    for line in manifest.read_text().splitlines():
        r = json.loads(line)
        if r["source"] == "kvasir":
            kvasir.append({"id": Path(r["image"]).stem, "image": r["image"], "mask": r["mask"], "split": r["split"]})
    tables = [pneumonia, _write(out / "kvasir.csv", kvasir), _covid(root, out), _lesions(root, out),
              _organs(root, out), _medpix(root, out)]
    return [*tables, _modality(out)]
