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
- CT volumes in HU (the soft-tissue sarcoma CTs of the tune split, the larger TotalSegmentator example): axial
  slices and coronal / sagittal reformats (resampled to square pixels), each rendered through two windows drawn
  from the usual CT presets and the percentile window, so that "CT" is learnt from the anatomy under any window
  rather than from one display convention; captioned with their modality, plane and body region.

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

from medfoundry.datasets.splits import covid_val_patients, kvasir_val_ids, medpix_val_cases, sts_split
from medfoundry.io import get_window, read_image
from medfoundry.io.window import PRESETS, Window, percentile_window

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


#: windows a CT volume slice is rendered through (two drawn per image)
CT_RENDER_WINDOWS = ("soft_tissue", "abdomen", "bone", "lung", "mediastinum", "percentile")
LIMB_CAPTIONS = ["{plane} CT of the musculoskeletal soft tissues", "{plane} CT scan of muscles and bone",
                 "computed tomography of a limb or the body wall, {plane} view"]


def _render_windows(plane: np.ndarray, rng: random.Random) -> list[tuple[str, np.ndarray]]:
    """``plane`` (H, W) in HU through two distinct windows of :data:`CT_RENDER_WINDOWS`, as uint8."""
    out = []
    for name in rng.sample(CT_RENDER_WINDOWS, 2):
        window: Window = percentile_window(plane) if name == "percentile" else PRESETS[name]
        out.append((name, window.to_uint8(plane)))
    return out


def _square_pixels(plane: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Resample a (H, W) reformat so that rows and columns have the same pixel size (bilinear)."""
    from PIL import Image

    if abs(row_mm - col_mm) < 1e-3:
        return plane
    height = max(1, round(plane.shape[0] * row_mm / col_mm))
    img = Image.fromarray(plane.astype(np.float32), mode="F").resize((plane.shape[1], height), Image.BILINEAR)
    return np.asarray(img)


def volume_planes(volume: np.ndarray, spacing: tuple[float, float, float], axial_step: int,
                  reformats: int) -> list[tuple[str, int, np.ndarray]]:
    """Slices of a (Z, Y, X) volume with spacing (dz, dy, dx) mm: every ``axial_step``-th axial slice and
    ``reformats`` coronal and sagittal planes spread over the middle half, superior end up (square pixels).
    Returns ``(plane, index, image)`` with images (H, W) float32."""
    z, y, x = volume.shape
    out = [("axial", k, volume[k].astype(np.float32)) for k in range(axial_step // 2, z, axial_step)]
    for plane, size in (("coronal", y), ("sagittal", x)):
        for k in np.linspace(size / 4, 3 * size / 4, reformats).round().astype(int):
            cut = volume[:, k, :] if plane == "coronal" else volume[:, :, k]
            col_mm = spacing[2] if plane == "coronal" else spacing[1]
            out.append((plane, int(k), _square_pixels(cut[::-1].astype(np.float32), spacing[0], col_mm)))
    return out


def _trunk_region(axial_hu: np.ndarray) -> str:
    """``thorax`` when aerated lung (−950..−500 HU) fills over 8 % of an axial slice, else ``abdomen``."""
    lung = (axial_hu > -950) & (axial_hu < -500)
    return "thorax" if lung.mean() > 0.08 else "abdomen"


def _ct_volume_rows(volume: np.ndarray, spacing: tuple[float, float, float], tag: str, region: str,
                    captions: list[str] | None, out: Path, rng: random.Random, source: str,
                    axial_step: int = 4, reformats: int = 3) -> list[dict]:
    rows = []
    for plane, k, image in volume_planes(volume, spacing, axial_step, reformats):
        where = region if region != "trunk" else _trunk_region(image) if plane == "axial" else "trunk"
        if captions:
            texts = [c.format(plane=plane) for c in captions]
        elif where == "trunk":
            texts = [f"{plane} CT of the chest and abdomen", f"{plane} computed tomography of the trunk"]
        else:
            texts = medpix_attribute_captions("CT", plane, where)
        for window, pixels in _render_windows(image, rng):
            path = _write_png(pixels, out / "images" / "ct_volumes" / f"{tag}_{plane}_{k:03d}_{window}.png")
            for text in texts:
                rows.append({"image": path, "text": text, "label": f"CT {plane} {where}", "split": "train",
                             "source": source, "group": tag})
    return rows


def _ct_volumes(root: Path, out: Path, rng: random.Random) -> list[dict]:
    """The sarcoma CTs of the tune split (limbs) and the larger TotalSegmentator example (trunk), as slices."""
    rows = []
    folder = root / "sts_ct_sarcoma_3d"
    if folder.is_dir():
        cases = read_metadata(folder, "cases.csv")
        split = sts_split(r["patient_id"] for r in cases)
        for r in cases:
            if split[r["patient_id"]] != "tune":
                continue  # the report patients stay unseen by every model
            image = read_image(folder / r["volume_file"])
            rows += _ct_volume_rows(image.array, image.spacing, r["patient_id"], "spine_and_muscles", LIMB_CAPTIONS,
                                    out, rng, "ct_volumes")
    example = root / "totalsegmentator_examples" / "nifti" / "example_ct.nii.gz"
    if example.is_file():
        image = read_image(example)
        rows += _ct_volume_rows(image.array[:, ::-1, ::-1], image.spacing, "totalseg_ct", "trunk", None, out, rng,
                                "ct_volumes")  # RAS storage → radiological display (anterior up, left on the right)
    return rows


def build_shared_pairs(shared_root: str | Path, out: str | Path, seed: int = 0) -> Path:
    """Write ``out/pairs.csv`` (+ PNGs for derived images) from the shared data folder; returns the CSV path."""
    root, out = Path(shared_root).resolve(), Path(out).resolve()
    rng = random.Random(seed)
    rows = (_pneumonia(root, out, rng) + covid_note_rows(root, rng) + _kvasir(root, rng) + _ct_organs(root, out, rng)
            + _ct_lesions(root, out, rng) + _medpix(root) + _ct_volumes(root, out, rng))
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
