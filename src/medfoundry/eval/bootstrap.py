"""Percentile bootstrap confidence intervals, resampling whole groups (patients) when ids exist."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n_cases: int, groups: Sequence[str] | None = None,
                 n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """(low, high) of ``statistic(indices)`` over ``n`` resamples of the cases (of the groups, if given).

    Resamples on which the statistic fails (e.g. one class only for AUROC) are skipped.
    """
    rng = np.random.default_rng(seed)
    if groups is not None:
        groups = np.asarray(groups)
        uniq = np.unique(groups)
        members = [np.nonzero(groups == g)[0] for g in uniq]
    values = []
    for _ in range(n):
        if groups is None:
            idx = rng.integers(0, n_cases, n_cases)
        else:
            idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        try:
            v = statistic(idx)
        except ValueError:
            continue
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
