"""Shared fixtures: the shared data folder (tests that need it skip without it) and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfoundry.samples import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data is not present on this machine")
    return root
