"""MI-Zero and XrayGPT are registered but cannot run here: their records say which reference code and weights
are missing, ``models list`` shows it, and every way of loading them raises ModelUnavailableError with that
reason before any weights are looked for (nothing is downloaded, nothing half-built)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medfoundry.cli.main import main
from medfoundry.errors import ModelUnavailableError, RegistryError
from medfoundry.registry import get_record, list_models

#: model → words its reason must contain (the package and the weights that are missing)
EXPECTED = {
    "mi-zero": ("not on PyPI", "timm_ctp", "Google Drive", "epoch_50.pt"),
    "xraygpt": ("not on PyPI", "Vicuna", "SharePoint", "Q-Former"),
}


def test_only_these_records_are_marked_unavailable() -> None:
    marked = {r.name for r in list_models() if r.arch_config.get("unavailable")}
    assert marked == set(EXPECTED)
    for name, words in EXPECTED.items():
        reason = get_record(name).arch_config["unavailable"]
        assert all(w in reason for w in words), (name, reason)


def test_models_list_shows_the_reason(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")  # one table row per model, nothing folded
    assert main(["models", "list", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name, words in EXPECTED.items():
        assert words[0] in listed[name]["arch_config"]["unavailable"]
    assert main(["models", "list", "--family", "TPM-conversational"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "xraygpt" in line]
    assert len(rows) == 1 and "cannot run here: no installable reference" in rows[0] and "SharePoint" in rows[0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loading_raises_the_typed_reason(name: str, tmp_path: Path) -> None:
    from medfoundry.predict.contrastive import load_contrastive, open_contrastive
    from medfoundry.predict.conversational import load_chat, open_chat
    from medfoundry.registry.loading import fetch_weights

    weights = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, weights)
    words = EXPECTED[name]
    opener, loader = (open_contrastive, load_contrastive) if name == "mi-zero" else (open_chat, load_chat)
    for call in (lambda: fetch_weights(name), lambda: fetch_weights(name, str(weights)),
                 lambda: opener(name, weights=str(weights)), lambda: loader(get_record(name), tmp_path)):
        with pytest.raises(ModelUnavailableError, match=words[1]) as info:
            call()
        assert isinstance(info.value, RegistryError) and "cannot run it here" in str(info.value)


@pytest.mark.parametrize("argv", [["classify", "IMG", "--model", "mi-zero", "--labels", "tumor,normal"],
                                  ["ask", "IMG", "any effusion?", "--model", "xraygpt"],
                                  ["models", "fetch", "--model", "xraygpt"]])
def test_cli_says_why_in_one_line(argv: list[str], capsys, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (32, 32), 90).save(tmp_path / "x.png")
    argv = [str(tmp_path / "x.png") if a == "IMG" else a for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "cannot run it here" in err and "Traceback" not in err and err.count("\n") == 1
