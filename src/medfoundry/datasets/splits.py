"""Train / held-out splits of every dataset in the shared data folder, in one place.

Each function takes the ids of one dataset and returns the held-out set. The rules are fixed (seeded, sorted
inputs), so every caller — ``train clip-pairs``, ``train sam-manifest``, ``eval prepare``, the demo and the
benchmarks — agrees on which images a model never saw. The shared folder itself already lacks a sealed
evaluation part of every dataset (see ``../shared/data/INDEX.md``); these splits are the project's own
held-out parts inside what it has.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

#: DeepLesion patients whose CT lesion volumes train the embedded segmenter / are kept for 3D evaluation.
LESION_TRAIN_PATIENTS: tuple[str, ...] = ("000001", "000002")
UNSEEN_LESION_PATIENTS: tuple[str, ...] = ("000009", "000010")


def _held_out(ids: Iterable[str], seed: int, fraction_divisor: int, minimum: int = 0) -> set[str]:
    order = sorted(set(ids))
    random.Random(seed).shuffle(order)
    return set(order[: max(minimum, len(order) // fraction_divisor)])


def covid_val_patients(patients: Iterable[str]) -> set[str]:
    """COVID-19 chest X-ray collection: 1 in 7 patients held out (seed 7)."""
    return _held_out(patients, seed=7, fraction_divisor=7, minimum=1)


def kvasir_val_ids(ids: Iterable[str], seed: int = 0) -> set[str]:
    """Kvasir-SEG: 1 in 5 image ids held out (seed 11; ``seed`` offsets it, 0 for every published model)."""
    return _held_out(ids, seed=seed + 11, fraction_divisor=5)


def medpix_val_cases(cases: Iterable[str]) -> set[str]:
    """MedPix CT/MR captions: 1 in 5 cases held out (seed 23), so all images of a case are on one side."""
    return _held_out(cases, seed=23, fraction_divisor=5)
