"""Classification benchmarks: zero-shot (text prompts) and linear probe (logistic regression on frozen
embeddings), with the mask-of-truth occlusion test.

Baselines: the class prevalence for zero-shot (AUROC 0.5), logistic regression on the raw 32×32 pixels (fit on
the same training rows) for the linear probe. A zero-shot spec with ``dataset.train_filter`` reports that
raw-pixel logistic regression too (fit on those rows, which the model itself never uses), as a supervised
reference beside the no-model baseline.

Mask of truth: each image is classified three times — as it is, with the annotated region (boxes or mask)
filled with the image's mean value, and with an equal-area blob elsewhere filled the same way (grown outside
the annotation around a random seed point). A model that looks at the finding moves more when the truth is
hidden than when the control region is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medfoundry.eval.bootstrap import bootstrap_ci
from medfoundry.eval.metrics import classification_metric
from medfoundry.eval.tasks import Summary, read_2d, run_cases


def truth_region(case: dict[str, Any], shape: tuple[int, int], mask_key: str | None = None) -> np.ndarray:
    """(H, W) bool region annotated for ``case``: the union of its ``boxes`` ([x, y, w, h] pixels) or its mask."""
    region = np.zeros(shape, dtype=bool)
    if case.get("boxes"):
        for x, y, w, h in case["boxes"]:
            x0, y0 = max(round(x), 0), max(round(y), 0)
            region[y0 : round(y + h), x0 : round(x + w)] = True
    elif case.get("mask"):
        m = read_2d(case["mask"], mask_key).array
        region = (m[..., 0] if m.ndim == 3 else m) > 0
    return region


def control_region(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A blob with the area of ``region`` outside it: the outside pixels nearest a random outside seed point
    (all outside pixels when there are fewer)."""
    ys, xs = np.nonzero(~region)
    area = int(region.sum())
    out = np.zeros_like(region)
    if area == 0 or len(ys) == 0:
        return out
    seed = rng.integers(len(ys))
    d = (ys - ys[seed]) ** 2 + (xs - xs[seed]) ** 2
    take = np.argpartition(d, area - 1)[:area] if area < len(d) else np.arange(len(d))
    out[ys[take], xs[take]] = True
    return out


def _occluded(image, region: np.ndarray):
    from dataclasses import replace

    array = image.array.copy()
    array[region] = image.array.mean(axis=(0, 1)) if array.ndim == 3 else image.array.mean()
    return replace(image, array=array)


def predict(spec, cases, model, weights, cache_path, progress):
    from medfoundry.predict.contrastive import open_contrastive

    predictor = open_contrastive(model, weights)
    if spec.task == "linear-probe":
        return _predict_probe(spec, cases, predictor, cache_path, progress), predictor.record
    from medfoundry.eval.baselines import pixel_features
    from medfoundry.tasks.zero_shot import label_set, zero_shot_classify

    prompts = None
    if spec.label_set and spec.label_set in predictor.record.label_sets:
        prompts = {lab: texts for lab, texts in label_set(predictor, spec.label_set).items() if lab in spec.labels}
    with_pixels = bool(spec.dataset.train_filter)

    def predict_one(case: dict) -> dict:
        image = read_2d(case["image"], spec.dataset.image_key)
        if case["role"] == "train":  # rows of the raw-pixel baseline only: the model never sees them
            return {"pixels": pixel_features(image).round(4).tolist()}
        images = [image]
        if spec.mask_of_truth:
            region = truth_region(case, image.array.shape[:2], spec.dataset.mask_key)
            rng = np.random.default_rng([spec.seed, case["row"]])
            control = control_region(region, rng)
            images += [_occluded(image, region), _occluded(image, control)]
        probs = zero_shot_classify(predictor, images, spec.labels, templates=spec.templates or None,
                                   prompts=prompts).probs
        out = {"probs": probs[0].round(6).tolist(), "prompts": "label_set" if prompts else "templates"}
        if with_pixels:
            out["pixels"] = pixel_features(image).round(4).tolist()
        if spec.mask_of_truth:
            out.update(probs_truth_hidden=probs[1].round(6).tolist(), probs_control_hidden=probs[2].round(6).tolist(),
                       region_fraction=float(region.mean()))
        return out

    results = run_cases(spec.name, cases, cache_path, predict_one, progress)
    if with_pixels:
        results = _with_pixel_baseline(spec, results)
    return results, predictor.record


def _with_pixel_baseline(spec, results: list[dict]) -> list[dict]:
    """Test results with ``pixel_probs``: logistic regression on the raw pixels of the ``role == "train"`` rows."""
    from sklearn.linear_model import LogisticRegression

    train = [r for r in results if r["role"] == "train" and r["label"] in spec.labels]
    test = [r for r in results if r["role"] == "test"]
    y_train = [spec.labels.index(r["label"]) for r in train]
    pixel_lr = LogisticRegression(C=1.0, max_iter=5000).fit(np.array([r["pixels"] for r in train]), y_train)
    probs = np.zeros((len(test), len(spec.labels)))
    probs[:, pixel_lr.classes_] = pixel_lr.predict_proba(np.array([r["pixels"] for r in test]))
    return [{k: v for k, v in r.items() if k != "pixels"} | {"pixel_probs": probs[i].round(6).tolist(),
                                                              "train_cases": len(train)}
            for i, r in enumerate(test)]


def _predict_probe(spec, cases, predictor, cache_path, progress) -> list[dict]:
    from sklearn.linear_model import LogisticRegression

    from medfoundry.eval.baselines import pixel_features
    from medfoundry.tasks.probe import fit_linear_probe

    def predict_one(case: dict) -> dict:
        image = read_2d(case["image"], spec.dataset.image_key)
        emb = predictor.embed_images([image])[0]
        return {"embedding": emb.round(5).tolist(), "pixels": pixel_features(image).round(4).tolist()}

    results = run_cases(spec.name, cases, cache_path, predict_one, progress)
    train = [r for r in results if r["role"] == "train"]
    test = [r for r in results if r["role"] == "test"]
    head = fit_linear_probe(predictor.record.name, np.array([r["embedding"] for r in train]),
                            [r["label"] for r in train])
    probs = head.predict_proba(np.array([r["embedding"] for r in test]))
    order = [head.classes.index(lab) for lab in spec.labels]  # columns in the spec's label order
    y_train = [spec.labels.index(r["label"]) for r in train]
    pixel_lr = LogisticRegression(C=1.0, max_iter=5000).fit(np.array([r["pixels"] for r in train]), y_train)
    base = pixel_lr.predict_proba(np.array([r["pixels"] for r in test]))
    base_full = np.zeros((len(test), len(spec.labels)))
    base_full[:, pixel_lr.classes_] = base
    return [{k: v for k, v in r.items() if k not in ("embedding", "pixels")} |
            {"probs": probs[i, order].round(6).tolist(), "baseline_probs": base_full[i].round(6).tolist(),
             "train_cases": len(train)} for i, r in enumerate(test)]


def summarise(spec, results: list[dict]) -> Summary:
    results = [r for r in results if r.get("role", "test") == "test"]
    y = np.array([spec.labels.index(r["label"]) for r in results])
    probs = np.array([r["probs"] for r in results])
    if "baseline_probs" in results[0]:
        base, base_name = np.array([r["baseline_probs"] for r in results]), "logistic regression on raw pixels"
    else:
        base = np.tile(np.bincount(y, minlength=len(spec.labels)) / len(y), (len(y), 1))
        base_name = "class prevalence (no model)"

    def stat(name: str, scores: np.ndarray):
        return lambda idx: classification_metric(name, y[idx], scores[idx])

    summary = Summary(results, {m: stat(m, probs) for m in spec.metrics}, {m: stat(m, base) for m in spec.metrics},
                      base_name)
    if spec.mask_of_truth:
        summary.extra["mask_of_truth"] = _mask_of_truth(spec, results, probs)
    if "pixel_probs" in results[0]:
        pixel = np.array([r["pixel_probs"] for r in results])
        groups = [r["group"] for r in results] if spec.dataset.group else None
        summary.extra["raw_pixel_baseline"] = {
            "description": f"logistic regression on raw 32×32 pixels fit on {results[0]['train_cases']} labelled "
                           f"rows ({spec.dataset.train_filter}) that the model never uses: a supervised reference",
            "train_cases": results[0]["train_cases"],
            **{m: {"value": stat(m, pixel)(np.arange(len(y))),
                   "ci95": bootstrap_ci(stat(m, pixel), len(y), groups, spec.bootstrap, spec.seed)}
               for m in spec.metrics}}
    return summary


def _mask_of_truth(spec, results: list[dict], probs: np.ndarray) -> dict[str, Any]:
    k = probs.argmax(axis=1)
    rows = np.arange(len(k))
    hidden = np.array([r["probs_truth_hidden"] for r in results])
    control = np.array([r["probs_control_hidden"] for r in results])
    shift_t, shift_c = np.abs(hidden[rows, k] - probs[rows, k]), np.abs(control[rows, k] - probs[rows, k])
    groups = [r["group"] for r in results] if spec.dataset.group else None

    def mean_ci(values: np.ndarray) -> dict[str, Any]:
        return {"value": float(values.mean()), "ci95": bootstrap_ci(lambda idx: float(values[idx].mean()),
                                                                     len(values), groups, spec.bootstrap, spec.seed)}

    return {
        "description": "mean |change| of the predicted class's probability when the annotated region (truth) or an "
                       "equal-area region elsewhere (control) is filled with the image mean",
        "shift_truth_hidden": mean_ci(shift_t), "shift_control_hidden": mean_ci(shift_c),
        "shift_difference": mean_ci(shift_t - shift_c),
        "flip_rate_truth_hidden": float((hidden.argmax(1) != k).mean()),
        "flip_rate_control_hidden": float((control.argmax(1) != k).mean()),
        "mean_region_fraction": float(np.mean([r["region_fraction"] for r in results])),
    }
