"""Which modality, plane and body region a caption states, read by a fixed rule (for *attribute correctness*).

The rule, applied identically to every text (generated captions, baselines, references):

1. The text is lower-cased and split into words (letters and digits; ``t1-weighted`` gives ``t1``, ``weighted``).
2. For each attribute, every word (or two-word phrase) in that attribute's vocabulary below is looked for; the
   value whose word occurs **first** in the text is the stated value. No word: the attribute is not stated.
3. A stated value is correct when it equals the image's label. For the plane label ``other`` (oblique,
   reformatted, 3D ...), the text is correct when it states none of axial, coronal or sagittal.

The vocabularies are the terms MedPix captions use for these labels (modality: CT vs MR sequence names; plane;
body region: the organs of each MedPix region). They are deliberately plain lists, so a reader can check them.
"""

from __future__ import annotations

import re

MODALITY_TERMS: dict[str, tuple[str, ...]] = {
    "CT": ("ct", "cta", "computed tomography", "hounsfield", "noncontrast ct", "nect", "cect"),
    "MR": ("mr", "mri", "mra", "mrv", "magnetic resonance", "t1", "t2", "flair", "dwi", "adc", "diffusion",
           "weighted", "gradient echo", "stir", "gadolinium", "spin echo"),
}
PLANE_TERMS: dict[str, tuple[str, ...]] = {
    "axial": ("axial", "transverse", "transaxial"),
    "coronal": ("coronal",),
    "sagittal": ("sagittal", "midsagittal", "parasagittal"),
}
REGION_TERMS: dict[str, tuple[str, ...]] = {
    "head": ("head", "brain", "cerebral", "cerebellum", "cerebellar", "skull", "cranial", "intracranial",
             "orbit", "orbits", "orbital", "pituitary", "sella", "ventricle", "ventricles", "frontal", "parietal",
             "occipital", "temporal", "neck", "sinus", "sinuses", "thalamus", "pons", "hemisphere", "face", "mandible"),
    "thorax": ("chest", "thorax", "thoracic", "lung", "lungs", "pulmonary", "mediastinum", "mediastinal", "heart",
               "cardiac", "pleural", "pericardial", "breast", "bronchus", "trachea", "hilar"),
    "abdomen": ("abdomen", "abdominal", "liver", "hepatic", "pancreas", "pancreatic", "spleen", "splenic", "bowel",
                "colon", "stomach", "gallbladder", "biliary", "duodenum", "duodenal", "mesenteric", "appendix",
                "jejunum", "ileum", "peritoneal", "gastric"),
    "spine_and_muscles": ("spine", "spinal", "vertebra", "vertebral", "vertebrae", "lumbar", "sacrum", "disc",
                          "cord", "musculoskeletal", "bone", "bones", "muscle", "muscles", "femur", "femoral",
                          "knee", "shoulder", "hip", "tendon", "humerus", "tibia", "joint", "ankle", "wrist",
                          "elbow", "soft tissue"),
    "reproductive_and_urinary": ("pelvis", "pelvic", "kidney", "kidneys", "renal", "bladder", "uterus", "uterine",
                                 "ovary", "ovarian", "adnexal", "prostate", "testis", "testicular", "scrotal",
                                 "scrotum", "ureter", "urinary", "genitourinary", "adrenal", "cervix", "vagina"),
}
ATTRIBUTES = ("modality", "plane", "region")
_TERMS = {"modality": MODALITY_TERMS, "plane": PLANE_TERMS, "region": REGION_TERMS}


def _first_value(words: list[str], terms: dict[str, tuple[str, ...]]) -> str | None:
    best: tuple[int, str] | None = None
    for value, vocab in terms.items():
        for term in vocab:
            parts = term.split()
            for i in range(len(words) - len(parts) + 1):
                if words[i : i + len(parts)] == parts:
                    if best is None or i < best[0]:
                        best = (i, value)
                    break
    return best[1] if best else None


def stated_attributes(text: str) -> dict[str, str | None]:
    """``{"modality": "CT"|"MR"|None, "plane": "axial"|"coronal"|"sagittal"|None, "region": ...}`` stated by
    ``text`` under the module's rule (the first-mentioned value of each attribute)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {name: _first_value(words, terms) for name, terms in _TERMS.items()}


def attribute_correct(text: str, labels: dict[str, str]) -> dict[str, bool]:
    """Per attribute, whether ``text`` states the labelled value (``labels`` keys: modality, plane, region;
    plane ``other`` is correct when no plane is stated)."""
    stated = stated_attributes(text)
    out = {}
    for name in ATTRIBUTES:
        want = labels[name]
        out[name] = stated[name] is None if (name == "plane" and want == "other") else stated[name] == want
    return out
