"""Weight sources and safe loading: safetensors, weights-only torch, refused pickles, hub cache, URLs."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from medfoundry.errors import (
    ChecksumMismatchError,
    UnknownModelError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsNotFoundError,
)
from medfoundry.registry import (
    convert_to_safetensors,
    fetch_weights,
    get_record,
    load_state_dict,
    read_checkpoint_record,
    resolve,
    resolve_model,
    save_checkpoint,
)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"encoder.weight": torch.randn(4, 3, generator=g), "encoder.bias": torch.randn(4, generator=g)}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_safetensors_and_torch_files_load(tmp_path: Path) -> None:
    state = _state()
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.pth")
    assert _equal(load_state_dict(tmp_path / "w.safetensors"), state)
    assert _equal(load_state_dict(tmp_path / "w.pth"), state)  # unwrapped, prefix stripped, epoch dropped
    assert _equal(load_state_dict(state), state)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"weight": torch.zeros(2), "payload": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="refuses"):
        load_state_dict(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned-by-pickle").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_garbage_checkpoints(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.pt").write_bytes(content)
    (tmp_path / "bad.safetensors").write_bytes(content)
    for name in ("bad.pt", "bad.safetensors"):
        with pytest.raises(WeightsError):
            load_state_dict(tmp_path / name)


def test_convert_to_safetensors(tmp_path: Path) -> None:
    state = _state()
    torch.save({"model": state}, tmp_path / "ckpt.pth")
    summary = convert_to_safetensors(tmp_path / "ckpt.pth", tmp_path / "ckpt.safetensors")
    assert summary["tensors"] == 2 and summary["parameters"] == 16
    assert _equal(load_file(str(tmp_path / "ckpt.safetensors")), state)
    with pytest.raises(Exception, match="exists"):
        convert_to_safetensors(tmp_path / "ckpt.pth", tmp_path / "ckpt.safetensors")


def test_sha256_is_verified(tmp_path: Path) -> None:
    save_file(_state(), str(tmp_path / "w.safetensors"))
    digest = hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()
    assert resolve(str(tmp_path / "w.safetensors"), sha256=digest) == tmp_path / "w.safetensors"
    with pytest.raises(ChecksumMismatchError):
        resolve(str(tmp_path / "w.safetensors"), sha256="0" * 64)


def test_missing_sources_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        resolve(str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsNotFoundError, match="not a folder"):
        resolve(f"local-dir:{tmp_path / 'nope'}")


def test_url_offline_names_the_cache_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDFOUNDRY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsNotFoundError, match=r"offline.*--weights") as info:
        resolve("https://example.org/weights/sam_vit_b_01ec64.pth", offline=True)
    assert str(tmp_path / "cache") in str(info.value)


def test_url_download_from_loopback_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = tmp_path / "served"
    served.mkdir()
    save_file(_state(), str(served / "w.safetensors"))
    digest = hashlib.sha256((served / "w.safetensors").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("MEDFOUNDRY_CACHE", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{server.server_address[1]}/w.safetensors"
    try:
        with pytest.raises(ChecksumMismatchError):
            resolve(url, sha256="f" * 64, offline=False, progress=False)
        path = resolve(url, sha256=digest, offline=False, progress=False)
        assert _equal(load_state_dict(path), _state())
    finally:
        server.shutdown()
    # cached now: offline works and re-verifies
    assert resolve(url, sha256=digest, offline=True) == path


def _fake_hub_cache(root: Path, repo: str, files: dict[str, bytes]) -> None:
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<rev>/<file>}."""
    base = root / f"models--{repo.replace('/', '--')}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(rev)
    for name, data in files.items():
        target = base / "snapshots" / rev / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def test_hf_hub_offline_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("huggingface_hub")
    save_file(_state(), str(tmp_path / "w.safetensors"))
    _fake_hub_cache(tmp_path / "hub", "org/tiny", {"model.safetensors": (tmp_path / "w.safetensors").read_bytes()})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve("hf-hub:org/tiny/model.safetensors")
    assert _equal(load_state_dict(path), _state())
    with pytest.raises(WeightsNotFoundError, match="not in the local Hugging Face cache"):
        resolve("hf-hub:org/absent/model.safetensors")


def test_self_describing_checkpoint_folder(tmp_path: Path) -> None:
    record = get_record("sam-vit-b")
    folder = save_checkpoint(_state(), record, tmp_path / "ckpt")
    loaded, weights = resolve_model(f"local-dir:{folder}")
    assert loaded.arch == "sam" and loaded.preprocess == record.preprocess
    assert _equal(load_state_dict(resolve(weights)), _state())
    assert read_checkpoint_record(folder).name == "sam-vit-b"


def test_weights_override_and_manual_sources(tmp_path: Path) -> None:
    save_file(_state(), str(tmp_path / "w.safetensors"))
    record, path = fetch_weights("medsam", str(tmp_path / "w.safetensors"))
    assert record.name == "medsam" and path == tmp_path / "w.safetensors"
    with pytest.raises(WeightsNotFoundError, match="Google Drive"):
        fetch_weights("chexzero")
    with pytest.raises(UnknownModelError):
        fetch_weights("no-such-model")
