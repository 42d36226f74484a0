"""Retrieval benchmarks, scored per query by torchmetrics' retrieval metrics.

Modes:
- ``image-to-image``: every case queries all the other cases; relevant = same label. Baseline: cosine
  similarity of the raw 32×32 pixels.
- ``text-to-image`` / ``image-to-text``: every case's text (image) queries all images (texts); relevant =
  the case's own partner and those of the same group (patient) when the spec names a group column.
  Baseline: random ranking (the mean over 50 random orderings).

Metrics: ``recall@K`` (hit rate: at least one relevant item in the top K, the CLIP-retrieval convention),
``precision@K`` and ``map`` (mean average precision).
A query whose candidates hold no relevant item scores 0.
"""

from __future__ import annotations

import numpy as np

from medfoundry.eval.tasks import Summary, read_2d, run_cases


def predict(spec, cases, model, weights, cache_path, progress):
    from medfoundry.eval.baselines import pixel_features
    from medfoundry.predict.contrastive import open_contrastive

    predictor = open_contrastive(model, weights)

    def predict_one(case: dict) -> dict:
        image = read_2d(case["image"], spec.dataset.image_key)
        out = {"embedding": predictor.embed_images([image])[0].round(5).tolist()}
        if spec.mode == "image-to-image":
            out["pixels"] = pixel_features(image).round(4).tolist()
        else:
            out["text_embedding"] = predictor.embed_texts([case["text"]])[0].round(5).tolist()
        return out

    return run_cases(spec.name, cases, cache_path, predict_one, progress, model=predictor), predictor.record


def query_metric(name: str, scores: np.ndarray, relevant: np.ndarray) -> float:
    """One retrieval metric of one query: ``scores`` (N,) of the candidates, ``relevant`` (N,) bool.

    Average precision comes from scikit-learn; hit rate and precision at K from torchmetrics, given scores
    shifted to be positive (a rank-preserving change: torchmetrics treats scores ≤ 0 as not retrieved, and
    cosine similarities can be negative).
    """
    import torch
    from sklearn.metrics import average_precision_score
    from torchmetrics.functional.retrieval import retrieval_hit_rate, retrieval_precision

    scores, relevant = np.asarray(scores, np.float64), np.asarray(relevant, bool)
    if name == "map":
        return float(average_precision_score(relevant, scores)) if relevant.any() else 0.0
    s, t = torch.from_numpy(scores - scores.min() + 1.0), torch.from_numpy(relevant)
    kind, k = name.split("@")
    fn = retrieval_hit_rate if kind == "recall" else retrieval_precision
    return float(fn(s, t, top_k=int(k)))


def _relevance(spec, results: list[dict]) -> np.ndarray:
    """(Q, N) bool: which candidates are relevant to each query (queries and candidates in case order)."""
    n = len(results)
    if spec.mode == "image-to-image":
        labels = np.array([r["label"] for r in results])
        return labels[:, None] == labels[None, :]
    keys = np.array([r["group"] if spec.dataset.group else r["id"] for r in results])
    return (keys[:, None] == keys[None, :]) | np.eye(n, dtype=bool)


def _per_query(spec, scores: np.ndarray, relevant: np.ndarray) -> dict[str, np.ndarray]:
    keep = ~np.eye(len(scores), dtype=bool) if spec.mode == "image-to-image" else np.ones_like(relevant)
    out = {}
    for name in spec.metrics:
        out[name] = np.array([query_metric(name, scores[q][keep[q]], relevant[q][keep[q]])
                              for q in range(len(scores))])
    return out


def summarise(spec, results: list[dict]) -> Summary:
    emb = np.array([r["embedding"] for r in results])
    relevant = _relevance(spec, results)
    if spec.mode == "image-to-image":
        pixels = np.array([r["pixels"] for r in results])
        pixels = pixels - pixels.mean(axis=1, keepdims=True)
        pixels /= np.linalg.norm(pixels, axis=1, keepdims=True) + 1e-8
        scores, base_scores = [emb @ emb.T], [pixels @ pixels.T]
        base_name = "cosine similarity of raw 32×32 pixels"
    else:
        text = np.array([r["text_embedding"] for r in results])
        sim = text @ emb.T  # (texts, images)
        scores = [sim if spec.mode == "text-to-image" else sim.T]
        rng = np.random.default_rng(spec.seed)
        base_scores = [rng.random(sim.shape) for _ in range(50)]
        base_name = "random ranking (mean of 50 orderings)"
    model = _per_query(spec, scores[0], relevant)
    draws = [_per_query(spec, s, relevant) for s in base_scores]
    base = {m: np.mean([d[m] for d in draws], axis=0) for m in spec.metrics}
    ranked = scores[0] - (np.eye(len(results)) * 1e9 if spec.mode == "image-to-image" else 0)
    top = np.argsort(-ranked, axis=1)[:, :5]
    per_case = [{k: v for k, v in r.items() if k not in ("embedding", "text_embedding", "pixels")}
                | {"model": {m: float(model[m][i]) for m in spec.metrics},
                   "baseline": {m: float(base[m][i]) for m in spec.metrics},
                   "top5": [int(j) for j in top[i]], "top5_relevant": [bool(relevant[i, j]) for j in top[i]]}
                for i, r in enumerate(results)]

    def mean_of(values: np.ndarray):
        return lambda idx: float(values[idx].mean())

    return Summary(per_case, {m: mean_of(model[m]) for m in spec.metrics}, {m: mean_of(base[m]) for m in spec.metrics},
                   base_name, {"queries": len(results), "mode": spec.mode})
