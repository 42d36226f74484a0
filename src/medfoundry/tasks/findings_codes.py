"""Human finding codes of the Indiana University chest X-ray reports (Open-i ``MeSH`` column) → CheXpert
observations, for validating the findings extractor (:mod:`medfoundry.tasks.findings`).

A ``MeSH`` cell lists a report's *abnormal* findings, ``;``-separated, each as ``Head/attribute/attribute...``
(``Opacity/lung/base/left/patchy``), or ``normal`` when the radiologist coded no abnormality. So a code gives a
*positive* reference label; an observation without a code is "not positive" (the codes do not say whether the
report denied it or never mentioned it), and ``normal`` is No Finding positive.

:data:`CODE_TABLE` is the one mapping: rows ``(head, attribute, observation)``, tried in order; the first row whose
head equals the code's head (case-insensitive) and whose attribute is ``None`` or among the code's attributes
wins. ``observation is None`` marks codes that map to no CheXpert observation — listed on purpose, not dropped
silently. A head that no row names is reported by :func:`unmapped_heads`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

CODE_TABLE: tuple[tuple[str, str | None, str | None], ...] = (
    ("normal", None, "No Finding"),
    ("No Indexing", None, None),  # the coder indexed nothing: no reference
    ("Technical Quality of Image Unsatisfactory", None, None),
    # heart and mediastinum
    ("Cardiomegaly", None, "Cardiomegaly"),
    ("Cardiac Shadow", "enlarged", "Cardiomegaly"),
    ("Heart", "enlarged", "Cardiomegaly"),
    ("Heart Ventricles", "enlarged", "Cardiomegaly"),
    ("Heart Atria", "enlarged", "Cardiomegaly"),
    ("Cardiac Shadow", None, None),
    ("Heart", None, None),
    ("Heart Ventricles", None, None),
    ("Heart Atria", None, None),
    ("Mediastinum", "enlarged", "Enlarged Cardiomediastinum"),
    ("Mediastinum", "prominent", "Enlarged Cardiomediastinum"),
    ("Mediastinum", "widened", "Enlarged Cardiomediastinum"),
    ("Mediastinum", None, None),
    ("Shift", None, None),
    # lung parenchyma
    ("Opacity", "ribs", None),
    ("Opacity", "bone", None),
    ("Opacity", "breast", None),
    ("Opacity", "soft tissue", None),
    ("Opacity", None, "Lung Opacity"),
    ("Airspace Disease", None, "Lung Opacity"),
    ("Infiltrate", None, "Lung Opacity"),
    ("Density", "lung", "Lung Opacity"),
    ("Density", "retrocardiac", "Lung Opacity"),
    ("Density", None, None),
    ("Markings", "interstitial", "Lung Opacity"),
    ("Markings", "prominent", "Lung Opacity"),
    ("Markings", "increased", "Lung Opacity"),
    ("Markings", None, None),
    ("Lung Diseases, Interstitial", None, "Lung Opacity"),
    ("Cicatrix", "pleura", "Pleural Other"),
    ("Cicatrix", None, "Lung Opacity"),  # CheXpert counts parenchymal scarring as lung opacity
    ("Nodule", None, "Lung Lesion"),
    ("Mass", None, "Lung Lesion"),
    ("Cavitation", None, "Lung Lesion"),
    ("Pulmonary Edema", None, "Edema"),
    ("Pulmonary Congestion", None, "Edema"),
    ("Heart Failure", None, "Edema"),
    ("Consolidation", None, "Consolidation"),
    ("Pneumonia", None, "Pneumonia"),
    ("Pulmonary Atelectasis", None, "Atelectasis"),
    ("Volume Loss", None, "Atelectasis"),
    # pleura
    ("Pneumothorax", None, "Pneumothorax"),
    ("Hydropneumothorax", None, "Pneumothorax"),
    ("Hemopneumothorax", None, "Pneumothorax"),
    ("Pleural Effusion", None, "Pleural Effusion"),
    ("Hemothorax", None, "Pleural Effusion"),
    ("Thickening", "pleura", "Pleural Other"),
    ("Thickening", None, None),
    ("Pulmonary Fibrosis", None, "Pleural Other"),  # CheXpert lists "fibrosis" under Pleural Other
    ("Pleura", None, "Pleural Other"),
    # bones
    ("Fractures, Bone", None, "Fracture"),
    # devices
    ("Catheters, Indwelling", None, "Support Devices"),
    ("Implanted Medical Device", None, "Support Devices"),
    ("Medical Device", None, "Support Devices"),
    ("Tube, Inserted", None, "Support Devices"),
    ("Stents", None, "Support Devices"),
    ("Surgical Instruments", None, "Support Devices"),  # surgical clips, sternotomy wires
    ("Sutures", None, "Support Devices"),
    ("Spinal Fusion", None, None),
    ("Breast Implants", None, None),
    # abnormal, but no CheXpert observation
    *((h, None, None) for h in (
        "Lung", "Calcinosis", "Calcified Granuloma", "Granuloma", "Granulomatous Disease", "Thoracic Vertebrae",
        "Spine", "Aorta", "Aorta, Thoracic", "Diaphragm", "Atherosclerosis", "Deformity", "Scoliosis",
        "Costophrenic Angle", "Osteophyte", "Emphysema", "Pulmonary Emphysema", "Spondylosis", "Arthritis",
        "Hernia, Hiatal", "Hernia, Diaphragmatic", "Pulmonary Disease, Chronic Obstructive", "Foreign Bodies",
        "Kyphosis", "Diaphragmatic Eventration", "Bone Diseases, Metabolic", "Lucency", "Lung, Hyperlucent",
        "Shoulder", "Lumbar Vertebrae", "Cervical Vertebrae", "Sclerosis", "Epicardial Fat", "Pulmonary Artery",
        "Hypertension, Pulmonary", "Funnel Chest", "Pectus Carinatum", "Mastectomy", "Aortic Aneurysm",
        "Bone and Bones", "Dislocations", "Adipose Tissue", "Ribs", "Pneumonectomy", "Nipple Shadow", "Sulcus",
        "Cysts", "Pneumoperitoneum", "Sarcoidosis", "Pericardial Effusion", "Blister", "Bronchiectasis",
        "Cystic Fibrosis", "Subcutaneous Emphysema", "Bullous Emphysema", "Trachea", "Trachea, Carina", "Humerus",
        "Cholelithiasis", "Thorax", "Hypovolemia", "Contrast Media", "Tuberculosis", "Lymph nodes",
        "Abdomen", "Clavicle", "Colon", "Hyperostosis, Diffuse Idiopathic Skeletal", "Hypertension",
        "Lymph Nodes", "Osteoporosis", "Polydactyly", "Pulmonary Alveoli", "Bronchi", "Bronchitis",
        "Expansile Bone Lesions",
        "Hilum", "Neck", "Sternum", "Scapula", "Tuberculosis, Pulmonary", "Trachea, Deviation",
        "Azygos Lobe", "Heart Valve Diseases", "Catheterization, Central Venous", "Pulmonary Veins",
        "Hyperinflation", "Respiratory Aspiration", "Esophagus", "Stomach", "Mediastinal Emphysema",
    )),
)

_ROWS = tuple((h.strip().lower(), a, o) for h, a, o in CODE_TABLE)
_HEADS = frozenset(h for h, _, _ in _ROWS)


def _split(mesh: str) -> list[tuple[str, set[str]]]:
    codes = []
    for code in (mesh or "").split(";"):
        parts = [p.strip().lower() for p in code.split("/") if p.strip()]
        if parts:
            codes.append((re.sub(r"\s+", " ", parts[0]), set(parts[1:])))
    return codes


def code_observation(code: str) -> str | None:
    """The observation one code (``Head/attr/...``) maps to, or None (no CheXpert observation, or not in the
    table: see :func:`unmapped_heads`)."""
    for head, attrs in _split(code):
        for h, a, o in _ROWS:
            if h == head and (a is None or a in attrs):
                return o
    return None


def reference_positives(mesh: str) -> set[str]:
    """The observations a report's ``MeSH`` cell makes positive (``normal`` → {"No Finding"})."""
    return {o for code in (mesh or "").split(";") if (o := code_observation(code)) is not None}


def has_reference(mesh: str) -> bool:
    """False for reports the coders did not index (``No Indexing``, unsatisfactory image, empty cell)."""
    heads = {h for h, _ in _split(mesh)}
    return bool(heads) and not heads <= {"no indexing", "technical quality of image unsatisfactory"}


def unmapped_heads(meshes: Iterable[str]) -> Counter:
    """Code heads no row of :data:`CODE_TABLE` names, with their counts (they are reported, not silently lost)."""
    return Counter(h for m in meshes for h, _ in _split(m) if h not in _HEADS)


def unmapped_codes(meshes: Iterable[str]) -> Counter:
    """Codes that map to no observation (listed in the table with ``None`` or absent from it), by head."""
    return Counter(h for m in meshes for h, attrs in _split(m)
                   if code_observation(h + "/" + "/".join(sorted(attrs))) is None)

