"""Captions of held-out MedPix images: the embedded captioner against the nearest-neighbour caption baseline.

Images: one image (the lowest image id) from each of ``--limit`` held-out MedPix cases
(:func:`medfoundry.datasets.splits.medpix_val_cases`; the captioner never trained on these cases), chosen with
seed 0. Reference: the radiologist's caption of that image.

Systems, all scored the same way:
- ``captioner``: the model's greedy caption (``--max-tokens`` tokens at most).
- ``nn_caption``: the caption of the most similar training image (cosine of the captioner's own image-tower
  embeddings) — the issue's nearest-neighbour baseline.
- ``nn_target``: the same neighbour's *training target* (its attributes + caption, what the captioner learned
  to write), a stronger baseline for attribute correctness.

Metrics: BLEU-4, ROUGE-L, CIDEr (``medfoundry.eval.text_metrics``) and attribute correctness (modality, plane,
body region read from the text by :mod:`medfoundry.tasks.caption_attributes`), with 95 % bootstrap intervals
over images and paired intervals of captioner − baseline.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 python benchmarks/caption_medpix.py --shared ../shared/data
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from medfoundry.eval.bootstrap import bootstrap_ci
from medfoundry.eval.provenance import collect
from medfoundry.eval.text_metrics import text_metric
from medfoundry.io import read_image
from medfoundry.models.captioner import CaptionerConfig
from medfoundry.predict.captioner import open_captioner
from medfoundry.registry.sources import cache_dir
from medfoundry.tasks.caption_attributes import ATTRIBUTES, attribute_correct
from medfoundry.train.captioner import cached_features, caption_target, medpix_rows

SYSTEMS = ("captioner", "nn_caption", "nn_target")
TEXT = ("bleu", "rouge_l", "cider")


def adapter_file(model: str) -> Path:
    """The captioner's trained weights (``adapter.safetensors``) that ``--model`` names, without loading it."""
    from medfoundry.registry.loading import fetch_weights

    folder = Path(model.removeprefix("local-dir:")) if model.startswith("local-dir:") else fetch_weights(model)[1]
    return Path(folder) / "adapter.safetensors" if Path(folder).is_dir() else Path(folder)


def provenance(args: argparse.Namespace, captioner, encoder, data: list) -> dict:
    """One entry per model: the captioner's adapter (read from the captions cache with --summarise-only), its
    language model (not loaded with --summarise-only) and the image tower that gives the neighbours' features."""
    out = {"captioner": collect(captioner, name=None if captioner else args.model, weights=adapter_file(args.model),
                                data=data, settings=args),
           "image_encoder": collect(encoder, data=data, settings=args)}
    if captioner is not None:
        from medfoundry.models.captioner import SMOLLM2, smollm2_folder

        lm = captioner.model.config.language_model
        out["language_model"] = collect(name=lm, weights=smollm2_folder() if lm == SMOLLM2 else
                                        Path(lm.removeprefix("local-dir:")))
    return out


def pick_images(rows: list[dict], limit: int) -> list[dict]:
    """One image per held-out case (lowest image id), the first ``limit`` cases of the sorted ids shuffled with
    seed 0, in that order (so a smaller limit is a prefix of a larger one)."""
    by_case: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["image_id"]):
        by_case.setdefault(r["case_id"], r)
    cases = sorted(by_case)
    random.Random(0).shuffle(cases)
    return [by_case[c] for c in cases[:limit]]


def attribute_score(texts: list[str], rows: list[dict]) -> np.ndarray:
    """N×3 booleans: does each text state the image's modality, plane, region."""
    return np.array([[attribute_correct(t, {"modality": r["modality"], "plane": r["plane"],
                                            "region": r["body_region"]})[a] for a in ATTRIBUTES]
                     for t, r in zip(texts, rows, strict=True)], dtype=float)


def summarise(texts: dict[str, list[str]], refs: list[str], rows: list[dict], n_boot: int) -> dict:
    out: dict[str, dict] = {}
    attrs = {s: attribute_score(texts[s], rows) for s in SYSTEMS}
    for s in SYSTEMS:
        entry = {}
        for m in TEXT:
            entry[m] = {"value": round(text_metric(m, texts[s], refs), 4),
                        "ci95": [round(v, 4) for v in bootstrap_ci(
                            lambda idx, s=s, m=m: text_metric(m, [texts[s][i] for i in idx],
                                                              [refs[i] for i in idx]), len(refs), n=n_boot)]}
        for j, a in enumerate((*ATTRIBUTES, "mean")):
            col = attrs[s].mean(axis=1) if a == "mean" else attrs[s][:, j]
            entry[f"attribute_{a}"] = {"value": round(float(col.mean()), 4), "ci95": [round(v, 4) for v in bootstrap_ci(
                lambda idx, col=col: float(col[idx].mean()), len(col), n=n_boot)]}
        out[s] = entry
    diffs = {}
    for base in ("nn_caption", "nn_target"):
        a, b = attrs["captioner"].mean(axis=1), attrs[base].mean(axis=1)
        diffs[f"captioner_minus_{base}"] = {
            "cider": [round(v, 4) for v in bootstrap_ci(
                lambda idx, base=base: text_metric("cider", [texts["captioner"][i] for i in idx],
                                                   [refs[i] for i in idx])
                - text_metric("cider", [texts[base][i] for i in idx], [refs[i] for i in idx]), len(refs), n=n_boot)],
            "attribute_mean": [round(v, 4) for v in bootstrap_ci(lambda idx, a=a, b=b: float((a - b)[idx].mean()),
                                                                 len(a), n=n_boot)]}
    out["paired_differences_ci95"] = diffs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--model", default="medfoundry-captioner-tiny", help="registry name or local-dir:PATH")
    ap.add_argument("--limit", type=int, default=80, help="held-out cases (one image each)")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--no-repeat-ngram", type=int, default=None,
                    help="decoding: n-gram size never repeated in a caption (default: the model config's; 0 off)")
    ap.add_argument("--out", default="benchmarks/results/caption_medpix.json")
    ap.add_argument("--summarise-only", action="store_true",
                    help="score the captions already generated for the first --limit cases, loading no LM")
    ap.add_argument("--image-encoder", default="medfoundry-clip-tiny", help="with --summarise-only")
    args = ap.parse_args()

    val = pick_images(medpix_rows(args.shared, "val"), args.limit)
    train = medpix_rows(args.shared, "train")
    if args.summarise_only:  # score the captions generated so far (no language model loaded)
        from medfoundry.predict.contrastive import open_contrastive

        captioner, encoder, name = None, open_contrastive(args.image_encoder), args.model
    else:
        captioner = open_captioner(args.model)
        encoder, name = captioner.encoder, captioner.name
    work = cache_dir() / "benchmarks" / "caption_medpix"
    train_feats = cached_features(encoder, [r["path"] for r in train], work / "train_features.npz")
    val_feats = encoder.embed_images([r["path"] for r in val])
    nearest = np.argmax(val_feats @ train_feats.T, axis=1)

    # resumable, one line per image; keyed by the adapter's sha256 so that other weights never reuse its captions
    adapter_sha = collect(weights=adapter_file(args.model))["weights_sha256"]
    if args.no_repeat_ngram is None:  # the model's own decoding setting, read from its config
        config = json.loads((adapter_file(args.model).parent / "config.json").read_text())
        args.no_repeat_ngram = CaptionerConfig.from_dict(config).no_repeat_ngram
    partial = work / f"generated_{name}_{adapter_sha[:12]}_{args.max_tokens}_nr{args.no_repeat_ngram}.jsonl"
    done = {}
    if partial.is_file():
        done = {d["image_id"]: d for d in map(json.loads, partial.read_text().splitlines())}
    start = time.perf_counter()
    with open(partial, "a", encoding="utf-8") as fh:
        for i, r in enumerate(val):
            if r["image_id"] in done:
                continue
            if captioner is None:
                raise SystemExit(f"{r['image_id']} has no caption yet: run without --summarise-only")
            cap = captioner.generate(read_image(r["path"]), args.max_tokens, no_repeat_ngram=args.no_repeat_ngram)
            done[r["image_id"]] = {"image_id": r["image_id"], "text": cap.text, "tokens": cap.new_tokens,
                                   "seconds": round(cap.seconds, 2)}
            fh.write(json.dumps(done[r["image_id"]]) + "\n")
            fh.flush()
            print(f"{i + 1}/{len(val)} {cap.seconds:.1f}s {cap.text[:90]!r}", flush=True)
    texts = {"captioner": [done[r["image_id"]]["text"] for r in val],
             "nn_caption": [" ".join(train[j]["caption"].split()) for j in nearest],
             "nn_target": [caption_target(train[j]) for j in nearest]}
    refs = [" ".join(r["caption"].split()) for r in val]
    result = {
        "benchmark": "caption_medpix",
        "model": name,
        "images": len(val), "cases": len({r["case_id"] for r in val}),
        "split": "held-out MedPix cases (medpix_val_cases), one image each",
        "max_tokens": args.max_tokens,
        "no_repeat_ngram": args.no_repeat_ngram,
        "metrics": summarise(texts, refs, val, args.bootstrap),
        "seconds_per_caption": round(float(np.mean([done[r["image_id"]]["seconds"] for r in val])), 2),
        "tokens_per_caption": round(float(np.mean([done[r["image_id"]]["tokens"] for r in val])), 1),
        "generation_seconds_this_run": round(time.perf_counter() - start, 1),
        "attribute_rule": "medfoundry.tasks.caption_attributes (first-mentioned term per attribute)",
        "examples": [{"image": r["file"], "reference": refs[i], "captioner": texts["captioner"][i],
                      "nn_caption": texts["nn_caption"][i]} for i, r in enumerate(val[:8])],
        "command": "PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 python benchmarks/caption_medpix.py "
                   f"--model {args.model} --limit {args.limit} --max-tokens {args.max_tokens} "
                   f"--bootstrap {args.bootstrap} --no-repeat-ngram {args.no_repeat_ngram}",
        "provenance": provenance(args, captioner, encoder,
                                 [Path(args.shared) / "medpix_ct_mr_captions" / "metadata.csv",
                                  *(r["path"] for r in val), *(r["path"] for r in train)]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["metrics"], indent=1)[:3000])


if __name__ == "__main__":
    main()
