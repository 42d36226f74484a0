"""Is Merlin's CT encoder, collapsed to 2D, a better image tower for medfoundry-clip? (issue 14)

    OMP_NUM_THREADS=1 python benchmarks/merlin2d_tower_probe.py [--orientation rot|plain]

Merlin's image encoder (shipped fine-tuned by Astra, ``astra-ct-encoder``; an I3D ResNet-152 inflated from
ImageNet and trained on CT volumes) has torchvision's ResNet-152 parameter names. Summing each 3D kernel over its
slice axis gives the 2D ResNet-152 whose response to one image equals the 3D network's response to a volume made
of that image repeated along z (away from the volume's ends): a medical-pretrained 2D tower, offline. This script
embeds every MedPix image with it (grey values 0..1, 224 × 224, the image rotated 90° clockwise so that its rows
run along Merlin's X axis as in its RAS training volumes; ``--orientation plain`` skips the rotation), takes the
global averages of its last two stages (1024-d ``layer3``, 2048-d ``layer4``), and fits the linear probe of
``clip_tower_probe.py`` (balanced logistic regression, C by 3-fold CV on the training cases, scored on the
held-out cases) for modality, plane and region, beside the shipped CLIP tower and raw pixels measured the same
way here, and the CLIP tower's features and ``layer3``'s together. The probe is supervised: an upper bound on
what a zero-shot head on those features could do.
Features are cached in ``$MEDFOUNDRY_CACHE/benchmarks/merlin2d`` (resumable). Writes
``benchmarks/results/merlin2d_tower_probe.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from clip_tower_probe import ATTRIBUTES, attribute_labels, probe_towers, raw_pixels  # noqa: E402

from medfoundry.eval.provenance import collect  # noqa: E402
from medfoundry.io import read_image  # noqa: E402
from medfoundry.models.merlin import strip_prefix  # noqa: E402
from medfoundry.predict.contrastive import open_contrastive  # noqa: E402
from medfoundry.registry.loading import fetch_weights, load_state_dict  # noqa: E402
from medfoundry.registry.sources import cache_dir  # noqa: E402
from medfoundry.train.captioner import medpix_rows  # noqa: E402


def collapsed_resnet152() -> tuple[torchvision.models.ResNet, dict]:
    """torchvision's ResNet-152 with Astra's Merlin weights, every 3D kernel summed over its slice axis."""
    record, weights = fetch_weights("astra-ct-encoder")
    state = strip_prefix(load_state_dict(weights), (str(record.arch_config.get("state_dict_prefix", "")),
                                                     "encode_image.i3_resnet."))
    net = torchvision.models.resnet152(weights=None)
    own = net.state_dict()
    collapsed = {k: (v.float().sum(2) if v.ndim == 5 else v.float() if v.is_floating_point() else v)
                 for k, v in state.items()}
    missing = sorted(set(own) - set(collapsed))
    if missing != ["fc.bias", "fc.weight"]:
        raise RuntimeError(f"unexpected layout: missing {missing[:5]}")
    net.load_state_dict({**{k: own[k] for k in missing}, **collapsed}, strict=True)
    return net.eval(), {"record": record.name, "weights": weights}


def embed(net: torchvision.models.ResNet, paths: list[str], rotate: bool, cache: Path) -> np.ndarray:
    """(N, 1024 + 2048) global averages of layer3 and layer4, cached every 100 images."""
    done = list(np.load(cache)) if cache.is_file() else []
    for i in range(len(done), len(paths)):
        grey = np.asarray(read_image(paths[i]).to_display(), dtype=np.float32)
        grey = grey.mean(-1) if grey.ndim == 3 else grey
        if rotate:
            grey = np.ascontiguousarray(np.rot90(grey, k=-1))
        x = torch.nn.functional.interpolate(torch.from_numpy(grey / 255.0)[None, None], size=(224, 224),
                                            mode="area").expand(-1, 3, -1, -1)
        with torch.inference_mode():
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            l3 = net.layer3(net.layer2(net.layer1(x)))
            l4 = net.layer4(l3)
            done.append(torch.cat([l3.mean((2, 3)), l4.mean((2, 3))], 1)[0].numpy().astype(np.float16))
        if (i + 1) % 100 == 0 or i + 1 == len(paths):
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, np.stack(done))
            print(f"merlin2d {i + 1}/{len(paths)}", flush=True)
    return np.stack(done).astype(np.float32)


def confusion(features: np.ndarray, labels: np.ndarray, train: np.ndarray, c: float) -> dict:
    """Held-out confusion matrix of the probe refitted with its chosen C (as ``probe`` fits it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import confusion_matrix
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit(features[train]).transform(features)
    fit = LogisticRegression(max_iter=3000, class_weight="balanced", C=c).fit(x[train], labels[train])
    classes = sorted(set(labels))
    matrix = confusion_matrix(labels[~train], fit.predict(x[~train]), labels=classes)
    return {"classes": classes, "matrix": matrix.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--orientation", choices=["rot", "plain"], default="rot")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "merlin2d_tower_probe.json"))
    args = ap.parse_args()
    rows = [dict(r, split=split) for split in ("train", "val") for r in medpix_rows(args.shared, split)]
    paths = [r["path"] for r in rows]
    train = np.array([r["split"] == "train" for r in rows])
    start = time.perf_counter()
    net, source = collapsed_resnet152()
    key = hashlib.sha1(("\n".join(paths) + args.orientation).encode()).hexdigest()[:16]
    merlin = embed(net, paths, args.orientation == "rot", cache_dir() / "benchmarks" / "merlin2d" / f"{key}.npy")
    clip = open_contrastive("medfoundry-clip-tiny")
    towers = {"medfoundry-clip-tiny (256-d)": clip.embed_images(paths),
              "merlin2d layer3 mean (1024-d)": merlin[:, :1024],
              "merlin2d layer4 mean (2048-d)": merlin[:, 1024:],
              "merlin2d layer3 + layer4 (3072-d)": merlin,
              "raw pixels 32 x 32": raw_pixels(paths)}
    # both kinds together (each feature standardised by the probe): do they hold different information?
    towers["medfoundry-clip-tiny + merlin2d layer3 (1280-d)"] = np.concatenate(
        [towers["medfoundry-clip-tiny (256-d)"], merlin[:, :1024]], 1)
    results = probe_towers(rows, train, towers, args.bootstrap)
    combined = "medfoundry-clip-tiny + merlin2d layer3 (1280-d)"
    for attr in ATTRIBUTES:
        labels, keep = attribute_labels(rows, attr)
        results[attr]["confusion (clip-tiny + merlin2d layer3; rows truth, columns predicted)"] = confusion(
            towers[combined][keep], labels[keep], train[keep], results[attr][combined]["C"])
    out = {"benchmark": "merlin2d_tower_probe", "orientation": args.orientation,
           "images": {"train": int(train.sum()), "held_out": int((~train).sum())},
           "split": "MedPix cases by medpix_val_cases (held out never used to fit the probe)",
           "results": results, "seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
           "command": f"OMP_NUM_THREADS=1 python benchmarks/merlin2d_tower_probe.py --orientation {args.orientation}",
           "provenance": {"medfoundry-clip-tiny": collect(clip, settings=args),
                          "astra-ct-encoder (collapsed to 2D)": collect(None, name=source["record"],
                                                                        weights=source["weights"], settings=args)},
           "load_average": os.getloadavg()[0]}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
