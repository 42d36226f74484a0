"""Calibration: ECE by hand, temperature recovery on synthetic data, and the CLI round trip."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfoundry.cli.main import main
from medfoundry.tasks.calibration import expected_calibration_error, fit_temperature, softmax


def test_ece_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    # bins of width 0.5: (0.5, 1.0] holds all four: mean confidence 0.75, accuracy 0.75 → but 15 bins split them
    ece = expected_calibration_error(probs, labels, bins=2)
    assert ece == pytest.approx(abs(0.75 - 0.75))
    ece15 = expected_calibration_error(probs, labels, bins=10)
    expected = 0.25 * abs(0.9 - 1) + 0.25 * abs(0.8 - 0) + 0.25 * abs(0.7 - 1) + 0.25 * abs(0.6 - 1)
    assert ece15 == pytest.approx(expected)


def test_temperature_is_recovered() -> None:
    rng = np.random.default_rng(0)
    sims = rng.normal(size=(4000, 3)) * 0.2
    true_t = 0.05
    labels = np.array([rng.choice(3, p=p) for p in softmax(sims / true_t)])
    assert fit_temperature(sims, labels) == pytest.approx(true_t, rel=0.1)


def test_calibrate_cli_round_trip(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "label": "pneumonia" if i % 2 else "normal"})
    with open(tmp_path / "cal.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "cal.json"
    assert main(["calibrate", "--data", str(tmp_path / "cal.csv"), "--labels", "normal,pneumonia",
                 "--out", str(out)]) == 0
    cal = json.loads(out.read_text())
    assert cal["temperature"] > 0 and cal["cases"] == 12
    capsys.readouterr()
    assert main(["classify", str(tmp_path / "0.png"), "--labels", "normal,pneumonia", "--calibration", str(out),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["prediction"] in ("normal", "pneumonia")
    assert main(["classify", str(tmp_path / "0.png"), "--labels", "a,b", "--calibration", str(out)]) == 2
