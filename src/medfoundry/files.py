"""Safe output files: never overwrite unless asked, never leave a partial file under the requested name."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from medfoundry.errors import OutputExistsError

T = TypeVar("T")


def check_writable(path: str | Path, overwrite: bool) -> Path:
    """Raise :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is false; return it as a Path."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    If the body raises (or the process dies), the temporary file is removed and ``path`` is untouched, so a
    previous file of that name stays intact. The temporary name keeps the suffixes, for writers that pick
    the format from them (``x.nii.gz`` → ``.x.nii.gz.<random>.tmp.nii.gz``).
    """
    path = check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if path.exists() and not overwrite:  # created by someone else meanwhile
            raise OutputExistsError(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_dataclass_json(obj: Any, path: str | Path, overwrite: bool = False) -> Path:
    """Write a dataclass as JSON atomically (no pickles); the counterpart of :func:`load_dataclass_json`."""
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(json.dumps(dataclasses.asdict(obj), indent=2) + "\n")
    return Path(path)


def load_dataclass_json(cls: type[T], path: str | Path, what: str) -> T:
    """Read a dataclass written by :func:`save_dataclass_json`; ``what`` names the file kind in errors."""
    from medfoundry.errors import InputContractError

    try:
        return cls(**json.loads(Path(path).read_text()))
    except (OSError, TypeError, json.JSONDecodeError) as exc:
        raise InputContractError(f"{path} is not a medfoundry {what} file ({exc})") from exc
