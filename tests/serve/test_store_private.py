"""The upload folder is private (mode 0700) and uploaded files are readable by the server's user only (0600)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfoundry.serve.store import ImageStore

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


def _png() -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
    buf.seek(0)
    return buf


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_default_store_is_private_and_removed(tmp_path: Path) -> None:
    store = ImageStore()
    try:
        assert _mode(store.folder) == 0o700
        stored = store.add(_png(), "x.png")
        assert _mode(stored.path) == 0o600
    finally:
        store.close()
    assert not store.folder.exists()


@pytest.mark.parametrize("exists", [False, True])
def test_given_store_is_made_private_even_if_it_was_open(tmp_path: Path, exists: bool) -> None:
    folder = tmp_path / "uploads"
    old = os.umask(0o022)
    try:
        if exists:
            folder.mkdir(mode=0o777)
            os.chmod(folder, 0o777)
        store = ImageStore(folder)
    finally:
        os.umask(old)
    try:
        assert _mode(folder) == 0o700
        stored = store.add(_png(), "x.png")
        assert _mode(stored.path) == 0o600 and stored.path.parent == folder
    finally:
        store.close()
    assert folder.is_dir()  # a folder the user gave is kept
