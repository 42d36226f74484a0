"""Build image–text pairs for contrastive training from the project's shared data folder.

Sources (see each dataset's README in the shared folder for licence and provenance; splits from
:mod:`medfoundry.datasets.splits`):

- PneumoniaMNIST (balanced): captions from the real labels; the ``train`` split trains, ``val`` is held out.
- COVID-19 chest X-rays: the free-text clinical notes of each image; split by patient.
- Kvasir-SEG: polyp captions with the polyp's size from its mask; split by image id.
- TotalSegmentator CT examples: axial slices captioned with the organs their label maps show.
- DeepLesion CT sub-volumes: slices with and without the annotated lesion.
- MedPix CT/MR: each image's own caption (written by the case's radiologist) and captions of its modality, plane
  and body region; split by case.

An image may have several rows (several captions): training draws one of them per epoch. Images that are not
files of their own (npz stacks, volume slices) are written as 8-bit PNGs under ``out/images``. The CSV has
columns ``image, text, label, split, source, group`` (group = patient, case or image id).
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import numpy as np

from medfoundry.datasets.splits import covid_val_patients, kvasir_val_ids, medpix_val_cases
from medfoundry.io import get_window, read_image

PNEUMONIA_CAPTIONS = {
    "pneumonia": [
        "pneumonia", "a chest x-ray showing pneumonia", "chest radiograph with pneumonia",
        "frontal chest x-ray with airspace opacities consistent with pneumonia",
        "patchy consolidation in the lungs, compatible with pneumonia", "bilateral pulmonary infiltrates, pneumonia",
        "chest film showing lobar consolidation", "findings consistent with infectious pneumonia",
    ],
    "normal": [
        "normal", "a normal chest x-ray", "chest radiograph with no abnormality",
        "clear lungs, no focal consolidation, normal chest", "no acute cardiopulmonary process",
        "the lungs are clear, normal study", "frontal chest x-ray within normal limits",
        "no evidence of pneumonia, normal lungs",
    ],
}
POLYP_CAPTIONS = ["an endoscopic image of a {size} colon polyp", "colonoscopy showing a {size} polyp",
                  "a {size} polyp in the colon", "endoscopy frame with a {size} colorectal polyp"]


#: Words for the MedPix attribute captions; the zero-shot prompts in the model card use related wording.
MODALITY_WORDS = {"CT": ["CT", "CT scan", "computed tomography"],
                  "MR": ["MRI", "MR image", "magnetic resonance imaging"]}
PLANE_WORDS = {"axial": ["axial", "transverse"], "coronal": ["coronal"], "sagittal": ["sagittal"], "other": [""]}
REGION_WORDS = {"head": ["the head", "the brain", "the head and neck"],
                "thorax": ["the chest", "the thorax", "the lungs and mediastinum"],
                "abdomen": ["the abdomen", "the abdominal organs", "the liver and bowel"],
                "spine_and_muscles": ["the spine", "the musculoskeletal system", "the bones and muscles"],
                "reproductive_and_urinary": ["the pelvis", "the genitourinary tract", "the kidneys and bladder"]}


def medpix_attribute_captions(modality: str, plane: str, region: str) -> list[str]:
    """Captions built from a MedPix image's labels only, e.g. ``"axial CT of the head"`` (several phrasings)."""
    out = []
    for i, mod in enumerate(MODALITY_WORDS[modality]):
        plane_word = PLANE_WORDS.get(plane, [""])[i % len(PLANE_WORDS.get(plane, [""]))]
        region_word = REGION_WORDS[region][i % len(REGION_WORDS[region])]
        out.append(" ".join(w for w in (plane_word, mod, "of", region_word) if w))
    return out


def _medpix(root: Path) -> list[dict]:
    """MedPix CT/MR: per image, its attribute captions and its own caption prefixed with the attributes."""
    folder = root / "medpix_ct_mr_captions"
    records = read_metadata(folder)
    val = medpix_val_cases(r["case_id"] for r in records)
    rows = []
    for r in records:
        attrs = medpix_attribute_captions(r["modality"], r["plane"], r["body_region"])
        texts = list(attrs)
        caption = " ".join(r["caption"].split())
        if caption and r["caption_placeholder"] != "1":
            texts.append(f"{attrs[0]}: {caption}"[:600])
        label = f"{r['modality']} {r['plane']} {r['body_region']}"
        for text in texts:
            rows.append({"image": str(folder / r["file"]), "text": text, "label": label,
                         "split": "val" if r["case_id"] in val else "train", "source": "medpix",
                         "group": r["case_id"]})
    return rows


def read_metadata(folder: Path, name: str = "metadata.csv") -> list[dict[str, str]]:
    """The rows of a shared dataset's metadata table (CSV, UTF-8, RFC 4180 quoting)."""
    with open(folder / name, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write_png(array: np.ndarray, path: Path) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        Image.fromarray(array).save(path)
    return str(path)


def _pneumonia(root: Path, out: Path, rng: random.Random) -> list[dict]:
    data = np.load(root / "pneumoniamnist_balanced" / "pneumoniamnist_balanced_trainval.npz")
    rows = []
    for split in ("train", "val"):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"][:, 0]
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            name = "pneumonia" if lab == 1 else "normal"
            path = _write_png(img, out / "images" / "pneumoniamnist" / f"{split}_{i:04d}.png")
            rows.append({"image": path, "text": rng.choice(PNEUMONIA_CAPTIONS[name]), "label": name,
                         "split": split, "source": "pneumoniamnist", "group": f"{split}_{i}"})
    return rows


def covid_note_rows(root: Path, rng: random.Random) -> list[dict]:
    """The COVID-19 chest X-ray collection as image–note rows (label, patient group, split by patient:
    :func:`~medfoundry.datasets.splits.covid_val_patients`)."""
    folder = root / "covid_cxr_clinical_notes"
    records = read_metadata(folder)
    val = covid_val_patients(r["patientid"] for r in records)
    rows = []
    for r in records:
        note = " ".join(r["clinical_notes"].split())
        finding = r["finding"].strip()
        label = "normal" if finding.lower() in ("no finding", "normal") else "pneumonia"
        text = f"chest x-ray, {finding.lower()}: {note}" if finding and finding.lower() != "todo" else note
        rows.append({"image": str(folder / r["image"]), "text": text[:600], "label": label,
                     "split": "val" if r["patientid"] in val else "train", "source": "covid_notes",
                     "group": r["patientid"]})
    return rows


def _kvasir(root: Path, rng: random.Random) -> list[dict]:
    folder = root / "kvasir_seg"
    records = read_metadata(folder)
    val = kvasir_val_ids(r["id"] for r in records)
    rows = []
    for r in records:
        frac = float(r["mask_fraction"])
        size = "small" if frac < 0.05 else "large" if frac > 0.2 else "medium-sized"
        rows.append({"image": str(folder / r["image"]), "text": rng.choice(POLYP_CAPTIONS).format(size=size),
                     "label": "polyp", "split": "val" if r["id"] in val else "train", "source": "kvasir",
                     "group": r["id"]})
    return rows


def _ct_organs(root: Path, out: Path, rng: random.Random) -> list[dict]:
    folder = root / "totalsegmentator_examples"
    names = {}
    with open(folder / "labels_total.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            names[int(r["label"])] = r["name"].replace("_", " ")
    pairs = [(folder / "nifti" / "example_ct_sm.nii.gz", folder / "nifti" / "example_seg.nii.gz", "ct_sm"),
             (folder / "dicom" / "example_ct_dicom", folder / "nifti" / "example_seg_dicom.nii.gz", "ct_dicom")]
    window = get_window("abdomen")
    rows = []
    for ct_path, seg_path, tag in pairs:
        ct, seg = read_image(ct_path), read_image(seg_path)
        if seg.orientation != ct.orientation:  # bring the label map onto the CT's voxel grid
            seg.array = seg.array[:, ::-1, :] if seg.orientation[1] != ct.orientation[1] else seg.array
        for z in range(ct.array.shape[0]):
            labels, counts = np.unique(seg.array[z], return_counts=True)
            present = [names.get(int(lab), "") for lab, c in zip(labels, counts, strict=True) if lab and c > 200]
            present = [p for p in present if p][:4]
            if not present:
                continue
            path = _write_png(window.to_uint8(ct.array[z]), out / "images" / "ct" / f"{tag}_{z:03d}.png")
            text = f"axial CT slice showing the {', '.join(present[:-1]) + ' and ' if len(present) > 1 else ''}" \
                   f"{present[-1]}"
            rows.append({"image": path, "text": text, "label": "", "split": "train", "source": "ct_organs",
                         "group": tag})
    return rows


def _ct_lesions(root: Path, out: Path, rng: random.Random) -> list[dict]:
    rows = []
    for path in sorted((root / "deeplesion_ct_lesion_3d" / "volumes").glob("*.npz")):
        with np.load(path) as z:
            imgs, gts = z["imgs"], z["gts"]
        for k in range(imgs.shape[0]):
            has = bool(gts[k].any())
            png = _write_png(imgs[k], out / "images" / "lesion" / f"{path.stem}_{k:02d}.png")
            text = rng.choice(["axial CT slice with a lesion", "CT image showing a focal lesion"]) if has else \
                rng.choice(["axial CT slice", "CT image without a visible lesion"])
            rows.append({"image": png, "text": text, "label": "lesion" if has else "no lesion", "split": "train",
                         "source": "deeplesion", "group": path.stem.split("_")[2]})
    return rows


def build_shared_pairs(shared_root: str | Path, out: str | Path, seed: int = 0) -> Path:
    """Write ``out/pairs.csv`` (+ PNGs for derived images) from the shared data folder; returns the CSV path."""
    root, out = Path(shared_root).resolve(), Path(out).resolve()
    rng = random.Random(seed)
    rows = (_pneumonia(root, out, rng) + covid_note_rows(root, rng) + _kvasir(root, rng) + _ct_organs(root, out, rng)
            + _ct_lesions(root, out, rng) + _medpix(root))
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:  # relative to the CSV, so the folder pair (data, pairs) can move together
        r["image"] = os.path.relpath(r["image"], out)
    csv_path = out / "pairs.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "text", "label", "split", "source", "group"])
        writer.writeheader()
        writer.writerows(rows)
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["source"], {}).setdefault(r["split"], 0)
        counts[r["source"]][r["split"]] += 1
    (out / "pairs_summary.json").write_text(json.dumps(counts, indent=2))
    return csv_path
