"""Phrase tables of the findings extractor (:mod:`medfoundry.tasks.findings`): what mentions each CheXpert
observation, and the cues that put a mention in a negation or uncertainty scope.

Written for this project after the *categories* of the CheXpert labeler (Irvin et al. 2019) and NegEx (Chapman
et al. 2001); the lists themselves are our own. Phrases are lower case and matched token by token on the
lower-cased text; a token ending in ``*`` matches any token that starts with it (``effusion*`` matches
``effusions``).

Two kinds of mention:

- *finding* phrases name the abnormality itself (``cardiomegaly``, ``pleural effusion``): positive unless a
  negation or uncertainty cue scopes them;
- *anatomy* phrases name the structure that carries it (``heart size``, ``cardiac silhouette``): they count only
  when their sentence also holds an abnormal qualifier (``enlarged``, ``widened``) — or a normal one, which
  negates them. "Stable heart size." alone mentions nothing.
"""

from __future__ import annotations

OBSERVATIONS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)

# observation -> (finding phrases, anatomy phrases)
MENTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Enlarged Cardiomediastinum": (
        ("mediastinal widening", "widened mediastinum", "widening of the mediastinum", "mediastinal enlargement",
         "enlarged mediastinum", "enlargement of the mediastinum", "mediastinal mass*"),
        ("cardiomediastinal silhouette*", "cardiomediastinal contour*", "cardiomediastinum", "mediastinal contour*",
         "mediastinal silhouette*", "mediastinum", "mediastinal configuration", "superior mediastinum",
         "pericardial silhouette"),
    ),
    "Cardiomegaly": (
        ("cardiomegaly", "cardiac enlargement", "enlarged heart", "enlargement of the heart",
         "enlarged cardiac silhouette", "enlargement of the cardiac silhouette", "cardiomyopathy"),
        ("heart", "heart size", "cardiac size", "cardiac silhouette*", "cardiac contour*", "cardiac shadow",
         "heart silhouette", "cardiac diameter", "cardiothoracic ratio"),
    ),
    "Lung Opacity": (
        ("opacit*", "opacification", "opacified", "density", "densities", "infiltrat*", "airspace disease",
         "air space disease", "air - space disease", "airspace process", "interstitial marking*",
         "interstitial pattern", "interstitial prominence", "interstitial process", "interstitial lung disease",
         "reticular*", "reticulonodular", "reticulation", "scar", "scars", "scarring", "parenchymal scar*",
         "peribronchial thickening", "peribronchial cuffing", "bronchial wall thickening", "haziness",
         "increased markings", "increased lung markings", "increased interstitial markings",
         "increased bronchovascular markings", "fibrotic change*", "ground glass", "ground - glass"),
        (),
    ),
    "Lung Lesion": (
        ("mass", "masses", "nodul*", "lump", "cavitary lesion*", "cavitation", "carcinoma", "neoplasm*", "tumor*",
         "tumour*", "malignan*", "metasta*", "lung lesion*", "pulmonary lesion*"),
        (),
    ),
    "Edema": (
        ("edema", "oedema", "heart failure", "chf", "vascular congestion", "pulmonary congestion",
         "venous congestion", "congestion", "congestive", "fluid overload", "cephalization", "kerley",
         "vascular prominence", "pulmonary vascular prominence", "indistinct vascula*", "vascular indistinctness",
         "indistinctness"),
        (),
    ),
    "Consolidation": (("consolidat*",), ()),
    "Pneumonia": (
        ("pneumonia*", "pneumonitis", "bronchopneumonia", "infection", "infectious process",
         "infectious infiltrate*", "aspiration"),
        (),
    ),
    "Atelectasis": (("atelecta*", "collapse", "collapsed", "volume loss"), ()),
    "Pneumothorax": (("pneumothora*", "pneumothoraces", "hydropneumothora*", "hemopneumothora*"), ()),
    "Pleural Effusion": (
        ("effusion*", "pleural fluid", "hydrothorax", "hydropneumothora*", "fluid in the fissure*",
         "hemothorax"),
        (),
    ),
    "Pleural Other": (
        ("pleural thickening", "pleural scar*", "pleural - parenchymal scar*", "pleuroparenchymal scar*",
         "pleural plaque*", "pleural calcification*", "calcified pleura*", "fibrothorax", "fibrosis",
         "apical cap*", "apical pleural thickening", "pleural reaction"),
        (),
    ),
    "Fracture": (("fractur*", "fx"), ()),
    "Support Devices": (
        ("pacer", "pacemaker*", "line", "lines", "picc", "tube", "tubes", "valve", "valves", "catheter*",
         "hardware", "arthroplast*", "icd", "defibrillator*", "device*", "drain", "drains", "plate", "plates",
         "screw*", "cannula", "apparatus", "coil*", "stent*", "clip*", "wire*", "port", "mediport", "leads",
         "prosthe*", "sternotomy", "cabg", "fixation", "rod", "rods", "staple*", "sutures", "suture",
         "generator", "port - a - cath", "portacath", "fusion"),
        (),
    ),
}

# phrases inside which an observation's mention does not count (CheXpert's "unmention" idea)
BLOCKS: dict[str, tuple[str, ...]] = {
    "Lung Opacity": ("pleural scar*", "pleural - parenchymal scar*", "pleuroparenchymal scar*", "bone density",
                     "breast density", "breast densities", "soft tissue density", "soft tissue densities",
                     "nipple shadow*", "calcified density", "calcified densities", "nodular density",
                     "nodular densities", "nodular opacit*", "metallic density", "metallic densities"),
    "Pleural Effusion": ("pericardial effusion*",),
    "Lung Lesion": ("soft tissue mass*", "breast mass*", "muscle mass"),
    "Support Devices": ("midline", "pleural line", "skin line", "skin fold line", "line of the", "tube feeding",
                        "lines of", "septal lines", "kerley b lines", "spinal fusion", "fusion of"),
    "Pneumonia": ("aspiration risk",),
    "Edema": ("sinus congestion", "nasal congestion"),
    "Enlarged Cardiomediastinum": ("mediastinal lymph*",),
}

# abnormal findings outside the 13 observations: a positive mention of one keeps No Finding off, as the
# "normal" of human finding codes means no abnormality at all (CheXpert's No Finding ignores them)
OTHER_ABNORMAL: tuple[str, ...] = (
    "granuloma*", "granulomatous", "calcified", "calcification*", "calcific", "degenerative", "spondylosis",
    "osteophyte*", "scoliosis", "kyphosis", "kyphotic", "emphysema*", "emphysematous", "copd", "hyperinfla*",
    "hyperexpan*", "hyperaerat*", "hyperlucen*", "tortuous", "tortuosity", "ectatic", "ectasia", "aneurysm*",
    "atherosclero*", "atherosclerotic", "hernia", "eventration", "elevated", "elevation", "flattened",
    "flattening", "bronchiectasis", "cyst*", "bulla*", "bullous", "deformity", "deformit*", "blunting", "blunted",
    "low lung volumes", "low lung volume", "hypoinflat*", "hypoventilat*", "thickening", "lucency", "lucencies",
    "sclerosis", "sclerotic", "osteopenia", "osteoporo*", "arthritis", "arthritic", "degeneration",
    "cholecystectomy", "mastectomy", "lobectomy", "pneumonectomy", "postoperative", "postsurgical", "surgical",
    "adenopathy", "lymphadenopathy", "hilar prominence", "prominent hilar", "abnormal*", "pectus", "shift",
    "enlarged", "enlargement", "widened", "prominent", "prominence", "chronic", "sarcoid*", "tuberculosis",
    "fibrotic", "interstitial", "hyperexpanded", "dilated", "dilatation", "pulmonary hypertension",
)

# abnormal qualifiers an anatomy mention needs in its sentence to count as a finding
ABNORMAL_QUALIFIERS: tuple[str, ...] = (
    "enlarg", "increas", "prominen", "large", "widen", "cardiomegaly", "borderline", "mildly", "moderately",
    "markedly", "severely", "globular", "abnormal",
)
NORMAL_QUALIFIERS: tuple[str, ...] = ("normal", "unremarkable", "within normal limits", "not enlarged")

NEGATION_TERMSET: dict[str, list[str]] = {
    "pseudo_negations": [
        "no change", "no interval change", "no significant change", "no significant interval change",
        "not changed", "not significantly changed", "without change", "no increase", "not only", "no new",
        "cannot exclude", "can not exclude", "cannot be excluded", "can not be excluded", "not excluded",
        "not be excluded", "not ruled out", "not be ruled out", "cannot rule out", "can not rule out",
        "not well seen", "no definite change", "not clearly seen",
    ],
    "preceding_negations": [
        "no", "not", "without", "negative for", "free of", "no evidence of", "no sign of", "no signs of",
        "absence of", "resolution of", "resolved", "clear of", "rather than", "removal of", "unlikely", "neither",
        "nor", "never", "cleared", "normal", "no focal", "no acute", "no large", "no definite", "no visible",
        "no suspicious", "no displaced", "no obvious", "no overt", "no pleural", "no radiographic",
    ],
    "following_negations": [
        "normal", "within normal limits", "unremarkable", "not seen", "not identified", "not present",
        "not visualized", "not demonstrated", "absent", "resolved", "has resolved", "have resolved", "negative",
        "not enlarged", "no longer seen", "no longer visualized", "removed", "are clear", "is clear", "free",
        "not appreciated", "not significantly enlarged", "not significantly", "is not", "are not",
        "top normal", "top - normal", "upper limits of normal", "upper limit of normal", "upper normal",
        "high normal",
    ],
    "termination": [
        "but", "however", "although", "though", "aside from", "apart from", "except", "which", "yet", ";",
        "otherwise", "nevertheless", "still", "whereas", "while", "there is", "there are", "with",
    ],
}

UNCERTAINTY_TERMSET: dict[str, list[str]] = {
    "pseudo_negations": ["no doubt", "without doubt"],
    "preceding_negations": [
        "possible", "possibly", "probable", "probably", "may", "might", "could", "questionable", "question of",
        "suspicious for", "suspicious", "concerning for", "concern for", "suggest", "suggests", "suggestive of",
        "suggesting", "likely", "cannot exclude", "can not exclude", "cannot be excluded", "not excluded",
        "cannot rule out", "can not rule out", "not ruled out", "differential", "versus", "vs", "borderline",
        "equivocal", "indeterminate", "presumed", "presumably", "represent", "represents", "representing",
        "questionably", "or", "and / or", "vs.", "doubtful", "not entirely excluded", "cannot be entirely excluded",
        "less likely", "atypical", "early",
    ],
    "following_negations": [
        "is suspected", "suspected", "cannot be excluded", "can not be excluded", "not excluded",
        "is not excluded", "is possible", "are possible", "questioned", "versus", "vs", "or", "is likely",
        "likely", "not ruled out", "could be", "may be", "would be difficult to exclude", "difficult to exclude",
        "borderline",
    ],
    "termination": ["but", "however", "although", "though", "aside from", "apart from", "except", ";", "otherwise",
                    "whereas", "while", "no", "without", "there is", "there are"],
}

# the keyword baseline: a mention with a negation word among the few tokens before it is negative
BASELINE_NEGATION_WORDS: frozenset[str] = frozenset({"no", "not", "without", "negative", "free", "absent"})
BASELINE_WINDOW = 5
