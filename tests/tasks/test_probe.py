"""Probe heads: equal to scikit-learn's own predictions, prototypes, JSON round trip and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfoundry.cli.main import main
from medfoundry.errors import InputContractError
from medfoundry.tasks.probe import ProbeHead, fit_linear_probe, fit_prototypes


def _data(n: int = 60, classes: int = 3, dim: int = 8):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    x = centres[y] + 0.5 * rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), [f"c{k}" for k in y]


@pytest.mark.parametrize("classes", [2, 3])
def test_linear_probe_equals_sklearn(classes: int, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x, y = _data(classes=classes)
    head = fit_linear_probe("m", x, y)
    ref = LogisticRegression(max_iter=5000).fit(x, [sorted(set(y)).index(v) for v in y])
    np.testing.assert_allclose(head.predict_proba(x), ref.predict_proba(x), atol=1e-6)
    again = ProbeHead.load(head.save(tmp_path / "p.json"))
    np.testing.assert_allclose(again.predict_proba(x), head.predict_proba(x))


def test_prototypes_and_errors() -> None:
    x, y = _data()
    head = fit_prototypes("m", x, y)
    acc = (np.array(head.classes)[head.predict_proba(x).argmax(1)] == np.array(y)).mean()
    assert acc > 0.8
    with pytest.raises(InputContractError, match="two classes"):
        fit_prototypes("m", x[:3], ["a"] * 3)
    with pytest.raises(InputContractError, match="labels"):
        fit_linear_probe("m", x, y[:-1])


def test_probe_cli(tmp_path: Path, capsys) -> None:
    rows = []
    for i in range(8):
        Image.fromarray(np.full((32, 32), 30 if i % 2 else 220, np.uint8)).save(tmp_path / f"{i}.png")  # 8-bit
        rows.append({"image": f"{i}.png", "label": "dark" if i % 2 else "bright"})
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "label"])
        w.writeheader()
        w.writerows(rows)
    assert main(["train", "probe", "--data", str(tmp_path / "d.csv"), "--out", str(tmp_path / "p.json")]) == 0
    capsys.readouterr()
    assert main(["classify", str(tmp_path / "0.png"), str(tmp_path / "1.png"), "--probe", str(tmp_path / "p.json"),
                 "--json"]) == 0
    preds = [r["prediction"] for r in json.loads(capsys.readouterr().out)["results"]]
    assert preds == ["bright", "dark"]
