"""The shared data's splits are defined once and stay what the published models were trained with."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from medfoundry.datasets import splits


def test_splits_are_deterministic_and_order_free() -> None:
    ids = [f"case{i}" for i in range(50)]
    shuffled = ids[:]
    random.Random(5).shuffle(shuffled)
    for held_out in (splits.covid_val_patients, splits.kvasir_val_ids, splits.medpix_val_cases):
        assert held_out(ids) == held_out(shuffled) == held_out(iter(ids))
    assert len(splits.medpix_val_cases(ids)) == 10 and len(splits.covid_val_patients(ids)) == 7
    assert len(splits.covid_val_patients(["only"])) == 1  # at least one patient held out
    assert not set(splits.LESION_TRAIN_PATIENTS) & set(splits.UNSEEN_LESION_PATIENTS)


@pytest.mark.shared_data
def test_shared_splits_match_the_published_models(shared_data: Path, tmp_path: Path) -> None:
    from medfoundry.datasets.pairs import build_shared_pairs

    with open(build_shared_pairs(shared_data, tmp_path), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    count = {}
    for r in rows:
        count.setdefault((r["source"], r["split"]), set()).add(r["image"])
    # the held-out parts of medfoundry-clip-tiny v1 (PneumoniaMNIST val, 33 COVID images, 160 Kvasir images) stay
    assert {k: len(v) for k, v in count.items() if k[1] == "val" and k[0] != "medpix"} == {
        ("pneumoniamnist", "val"): 270, ("covid_notes", "val"): 33, ("kvasir", "val"): 160}
    medpix_cases = {}
    for r in rows:
        if r["source"] == "medpix":
            medpix_cases.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in medpix_cases.values())  # a case never straddles the split
    assert sum(s == {"val"} for s in medpix_cases.values()) == len(medpix_cases) // 5
    # CT volume slices come only from the sarcoma patients of the tune split (the report ones stay unseen)
    sts = {r["group"] for r in rows if r["source"] == "ct_volumes" and r["group"].startswith("STS_")}
    with open(shared_data / "sts_ct_sarcoma_3d" / "cases.csv", newline="", encoding="utf-8") as fh:
        split = splits.sts_split(r["patient_id"] for r in csv.DictReader(fh))
    assert sts and sts == {p for p, s in split.items() if s == "tune"}
