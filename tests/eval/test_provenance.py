"""Provenance: results name the weights file actually loaded, per-case caches are keyed by everything that
determines a prediction, and every results file can say which model, data, settings, code and machine made it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from medfoundry.cli.main import main
from medfoundry.eval.provenance import cache_key, collect, dataset_hash
from medfoundry.eval.tasks import CaseCache, run_cases
from medfoundry.registry.loading import LoadedWeights, load_state_dict, save_checkpoint


def _dataset(tmp_path: Path) -> None:
    """12 images with a bright rectangle and its mask (as in test_eval)."""
    rows = []
    for i in range(6):
        img = np.zeros((48, 48), np.uint8)
        img[10:30, 12 + i % 3 : 34] = 230
        Image.fromarray(img).save(tmp_path / f"i{i}.png")
        Image.fromarray((img > 0).astype(np.uint8) * 255).save(tmp_path / f"m{i}.png")
        rows.append(f"i{i}.png,m{i}.png,{i // 2}\n")
    (tmp_path / "cases.csv").write_text("image,mask,patient\n" + "".join(rows))


def _spec(tmp_path: Path) -> Path:
    path = tmp_path / "seg.yaml"
    path.write_text(f"name: toy\ntask: segmentation-2d\ndataset:\n  csv: {tmp_path / 'cases.csv'}\n  group: patient\n"
                    "metrics: [dice, iou]\nbootstrap: 20\n")
    return path


def _two_checkpoints(tmp_path: Path) -> tuple[Path, Path]:
    """The embedded sam-lite weights as they are (A) and with the mask decoder's hypernetworks perturbed (B)."""
    import torch

    from medfoundry.registry import get_record
    from medfoundry.registry.loading import fetch_weights

    record, source = fetch_weights("medfoundry-sam-lite")
    state = load_state_dict(source)
    perturbed = dict(state)
    gen = torch.Generator().manual_seed(0)
    for k, v in state.items():
        if "output_hypernetworks_mlps" in k and v.is_floating_point():
            perturbed[k] = v + 0.5 * v.std() * torch.randn(v.shape, generator=gen)
    a = save_checkpoint(state, get_record("medfoundry-sam-lite"), tmp_path / "ckpt_a") / "model.safetensors"
    b = save_checkpoint(perturbed, record, tmp_path / "ckpt_b") / "model.safetensors"
    return a, b


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_eval_with_two_weights_files_names_each_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _dataset(tmp_path)
    spec = _spec(tmp_path)
    a, b = _two_checkpoints(tmp_path)
    assert _sha(a) != _sha(b)
    monkeypatch.chdir(tmp_path)
    runs = []
    for weights in (a, b):  # no --out: the default folder depends on --weights
        assert main(["eval", "--model", "medfoundry-sam-lite", "--weights", str(weights), "--benchmark",
                     str(spec)]) == 0
        runs.append(sorted((tmp_path / "eval-runs").iterdir()))
    assert len(runs[0]) == 1 and len(runs[1]) == 2
    folder_a = runs[0][0]
    folder_b = next(p for p in runs[1] if p != folder_a)
    ra, rb = (json.loads((f / "results.json").read_text()) for f in (folder_a, folder_b))
    assert ra["config"]["weights_sha256"] == _sha(a) and rb["config"]["weights_sha256"] == _sha(b)
    assert ra["provenance"]["weights_sha256"] == _sha(a) and rb["config"]["weights_path"].endswith("model.safetensors")
    dice_a = [c["model"]["dice"] for c in ra["per_case"]]
    dice_b = [c["model"]["dice"] for c in rb["per_case"]]
    assert dice_a != dice_b  # two different results
    assert ra["provenance"]["code"]["package"] and ra["provenance"]["machine"]["cpu"]


def test_the_case_cache_is_discarded_when_the_weights_differ(tmp_path: Path) -> None:
    _dataset(tmp_path)
    spec = str(_spec(tmp_path))
    a, b = _two_checkpoints(tmp_path)
    out = tmp_path / "run"
    base = ["eval", "--model", "medfoundry-sam-lite", "--benchmark", spec, "--out", str(out)]
    assert main([*base, "--weights", str(a)]) == 0
    first = (out / "cases.jsonl").read_text().splitlines()
    assert len(first) == 7 and json.loads(first[0])["cache_key"]["weights_sha256"] == _sha(a)
    assert main([*base, "--weights", str(b)]) == 0  # same folder, other weights: every case again
    lines = (out / "cases.jsonl").read_text().splitlines()
    assert len(lines) == 7 and json.loads(lines[0])["cache_key"]["weights_sha256"] == _sha(b)
    assert main([*base, "--weights", str(b), "--out", str(tmp_path / "fresh")]) == 0
    cached, fresh = (json.loads((f / "results.json").read_text()) for f in (out, tmp_path / "fresh"))
    assert cached["metrics"] == fresh["metrics"]
    assert [c["model"] for c in cached["per_case"]] == [c["model"] for c in fresh["per_case"]]
    assert main([*base, "--weights", str(b)]) == 0  # same weights: resumed, nothing appended
    assert (out / "cases.jsonl").read_text().splitlines() == lines


def _fake(name: str, weights: Path) -> SimpleNamespace:
    return SimpleNamespace(record=SimpleNamespace(name=name), loaded_weights=LoadedWeights(weights))


def test_run_cases_recomputes_when_any_part_of_the_key_differs(tmp_path: Path) -> None:
    w1, w2 = tmp_path / "w1.safetensors", tmp_path / "w2.safetensors"
    w1.write_bytes(b"one")
    w2.write_bytes(b"two")
    cases = [{"id": str(i)} for i in range(3)]
    calls = []

    def predict_one(case: dict) -> dict:
        calls.append(case["id"])
        return {"value": len(calls)}

    def run(model, data="d1", settings=None) -> list[dict]:
        return run_cases("t", cases, CaseCache(tmp_path / "cases.jsonl", data, settings or {"seed": 0}),
                         predict_one, False, model=model)

    run(_fake("m", w1))
    assert len(calls) == 3
    run(_fake("m", w1))
    assert len(calls) == 3  # resumed
    for changed in (lambda: run(_fake("m", w2)), lambda: run(_fake("other", w2)),
                    lambda: run(_fake("other", w2), data="d2"), lambda: run(_fake("other", w2), "d2", {"seed": 1})):
        before = len(calls)
        changed()
        assert len(calls) == before + 3
    old_format = tmp_path / "cases.jsonl"  # a cache written before keys existed is not trusted
    old_format.write_text("".join(json.dumps({"id": c["id"], "value": -1}) + "\n" for c in cases))
    assert [r["value"] for r in run(_fake("m", w1))] != [-1, -1, -1]
    key = cache_key(_fake("m", w1), data_sha256="d1", settings={"seed": 0})
    assert key["weights_sha256"] == hashlib.sha256(b"one").hexdigest() and key["code"]


def test_loaded_weights_of_files_folders_and_state_dicts(tmp_path: Path) -> None:
    import torch

    (tmp_path / "single").mkdir()
    f = tmp_path / "single" / "model.safetensors"
    f.write_bytes(b"abc")
    assert LoadedWeights(f.parent).path == f and LoadedWeights(f.parent).sha256 == hashlib.sha256(b"abc").hexdigest()
    shards = tmp_path / "sharded"
    shards.mkdir()
    (shards / "model-1.safetensors").write_bytes(b"1")
    (shards / "model-2.safetensors").write_bytes(b"2")
    both = LoadedWeights(shards)
    assert both.path == shards and len(both.sha256) == 64
    (shards / "model-2.safetensors").write_bytes(b"3")
    assert LoadedWeights(shards).sha256 != both.sha256
    s1 = LoadedWeights({"w": torch.zeros(2)}).sha256
    assert s1 == LoadedWeights({"w": torch.zeros(2)}).sha256 != LoadedWeights({"w": torch.ones(2)}).sha256
    assert s1 != LoadedWeights({"w": torch.zeros(2, 1)}).sha256


def test_collect_describes_model_data_settings_code_and_machine(tmp_path: Path) -> None:
    w = tmp_path / "w.pt"
    w.write_bytes(b"weights")
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"a")
    info = collect(name="toy", weights=w, data=[data, w], settings=SimpleNamespace(seed=3, out="x.json"))
    assert info["model"] == "toy" and info["weights_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert info["dataset"]["items"][0]["files"] == 1 and info["settings"] == {"seed": 3, "out": "x.json"}
    assert info["machine"]["cores"] == os.cpu_count() and info["machine"]["torch"]
    assert set(info["code"]) >= {"package", "git_commit", "dirty", "version"}
    assert str(tmp_path) not in json.dumps(info)  # no folder of this machine in a results file
    assert info["weights_path"] == "<elsewhere>/w.pt"
    assert dataset_hash(w)["sha256"] == hashlib.sha256(b"weights").hexdigest()
    (data / "a.png").write_bytes(b"b")
    assert dataset_hash(data)["sha256"] != info["dataset"]["items"][0]["sha256"]


def test_the_cache_key_changes_with_the_record_when_the_weights_do_not() -> None:
    import dataclasses
    from types import SimpleNamespace

    from medfoundry.registry import get_record

    record = get_record("medfoundry-box3d-tiny")
    other = dataclasses.replace(record, arch_config={**record.arch_config,
                                                     "contract": {**record.arch_config["contract"], "threshold": 0.5}})
    keys = [cache_key(SimpleNamespace(record=r, loaded_weights=None), data_sha256="d", settings={"a": 1})
            for r in (record, other)]
    assert keys[0]["weights_sha256"] == keys[1]["weights_sha256"] and keys[0] != keys[1]
