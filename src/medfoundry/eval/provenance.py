"""Provenance of a result: which model and weights file, which data, which settings, which code, which machine.

:func:`collect` is the one place that says this; the evaluation harness (``results.json``) and every script in
``benchmarks/`` write its output beside their numbers, and the harness's per-case cache is keyed by it
(:func:`cache_key`), so a result can never name other weights, data or code than the ones that produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from medfoundry.registry.loading import LoadedWeights
from medfoundry.registry.sources import sha256_file

#: A folder whose files add up to more than this is described by its file names and sizes, not hashed byte by byte.
MAX_HASHED_BYTES = 2 << 30
#: Longer lists of dataset files are summarised (count, bytes, combined sha256) rather than listed one by one.
MAX_LISTED = 20


@lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """``{"package": "0.1.0", "git_commit": full sha or None, "dirty": bool or None}``: the installed package's
    version and, when it runs from a git checkout of medfoundry, the commit and whether tracked files differ."""
    import medfoundry

    package_dir = Path(medfoundry.__file__).resolve().parent
    out: dict[str, Any] = {"package": medfoundry.__version__, "git_commit": None, "dirty": None}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=package_dir)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top and (Path(top) / "src" / "medfoundry").resolve() == package_dir:  # medfoundry's own checkout
        out["git_commit"] = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
        out["dirty"] = None if status is None else bool(status)
    return out


def code_version_string() -> str:
    """``0.1.0+<12-hex commit>[.dirty]`` or the bare package version outside a git checkout."""
    code = code_version()
    if not code["git_commit"]:
        return str(code["package"])
    return f"{code['package']}+{code['git_commit'][:12]}{'.dirty' if code['dirty'] else ''}"


def portable_path(path: str | Path) -> str:
    """A path as results files record it, without this machine's folders: ``package:REL`` inside the installed
    medfoundry (the registry's spelling), ``shared:REL`` inside the shared data folder, relative inside the
    working directory, else ``<elsewhere>/NAME`` (temporary and home folders are nobody else's)."""
    from medfoundry.samples import shared_data_dir

    given = Path(path).expanduser()
    if not given.is_absolute() and ".." not in given.parts:
        return given.as_posix()
    where = given.resolve()
    import medfoundry

    shared = shared_data_dir()
    for prefix, root in (("package:", Path(medfoundry.__file__).resolve().parent),
                         ("shared:", Path(shared).resolve() if shared is not None else None), ("", Path.cwd())):
        if root is not None and where.is_relative_to(root.resolve()):
            return prefix + where.relative_to(root.resolve()).as_posix()
    return f"<elsewhere>/{where.name}"


def _portable_values(value: Any) -> Any:
    """``value`` with every string that is an absolute path (or ``~/...``) made portable (:func:`portable_path`)."""
    if isinstance(value, str) and (value.startswith(("/", "~")) or "/../" in value) and "://" not in value:
        return portable_path(value)
    if isinstance(value, Mapping):
        return {k: _portable_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable_values(v) for v in value]
    if isinstance(value, Path):
        return portable_path(value)
    return value


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model, logical cores (and those this process may use), OS, Python, numpy/torch versions, torch's
    thread count and the CUDA device (None without one). Imports torch only if it is installed."""
    import numpy

    info: dict[str, Any] = {
        "cpu": _cpu_model(), "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "os": platform.platform(), "python": platform.python_version(), "numpy": numpy.__version__,
        "torch": None, "torch_threads": None, "cuda_device": None,
    }
    try:
        import torch
    except ImportError:
        return info
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def dataset_hash(paths: str | Path | Iterable[str | Path]) -> dict[str, Any]:
    """sha256 of the data a result was computed on: each file's sha256, and for a folder the sha256 of the lines
    ``"<sha256>  <relative path>"`` of its files (names and sizes instead of bytes above
    :data:`MAX_HASHED_BYTES`, marked ``"by": "names+sizes"``). ``sha256`` is the one item's, or for several
    items the sha256 of their sha256 lines (more than :data:`MAX_LISTED` items are counted, not listed)."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            members = sorted(p for p in path.rglob("*") if p.is_file())
            total = sum(p.stat().st_size for p in members)
            by = "bytes" if total <= MAX_HASHED_BYTES else "names+sizes"
            lines = "".join(f"{sha256_file(p) if by == 'bytes' else p.stat().st_size}  {p.relative_to(path)}\n"
                            for p in members)
            files.append({"path": portable_path(path), "files": len(members), "bytes": total, "by": by,
                          "sha256": hashlib.sha256(lines.encode()).hexdigest()})
        elif path.is_file():
            files.append({"path": portable_path(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)})
        else:
            files.append({"path": portable_path(path), "sha256": None, "missing": True})
    if len(files) == 1:
        return {"sha256": files[0]["sha256"], "items": files}
    combined = hashlib.sha256("".join(f"{f['sha256']}\n" for f in files).encode()).hexdigest()
    if len(files) > MAX_LISTED:  # a long list of files (e.g. the cases of a benchmark): counted, not listed
        return {"sha256": combined, "files": len(files), "bytes": sum(f.get("bytes", 0) for f in files),
                "first": files[0]["path"]}
    return {"sha256": combined, "items": files}


def settings_sha256(settings: Any) -> str:
    """sha256 of a spec (dataclass), argparse namespace or mapping, as canonical JSON."""
    return hashlib.sha256(json.dumps(_plain(settings), sort_keys=True, default=str).encode()).hexdigest()


def _plain(settings: Any) -> Any:
    if is_dataclass(settings) and not isinstance(settings, type):
        return asdict(settings)
    if hasattr(settings, "__dict__") and not isinstance(settings, Mapping):
        return dict(vars(settings))
    return dict(settings) if isinstance(settings, Mapping) else settings


def weights_of(model: Any) -> LoadedWeights | None:
    """The :class:`LoadedWeights` of a predictor (``predictor.loaded_weights``), or of a path / state dict."""
    if model is None or isinstance(model, LoadedWeights):
        return model
    if isinstance(model, (str, Path, Mapping)):
        return LoadedWeights(Path(model) if isinstance(model, str) else model)
    return getattr(model, "loaded_weights", None)


def collect(model: Any = None, *, name: str | None = None, weights: Any = None,
            data: str | Path | Iterable[str | Path] | None = None, settings: Any = None) -> dict[str, Any]:
    """Everything that determines a result, as a JSON-ready dict.

    Args:
        model: a loaded predictor (its ``record.name`` and ``loaded_weights``), or None.
        name: the model's name when ``model`` is not a predictor (e.g. a baseline without a registry record).
        weights: what was loaded when ``model`` does not say: a :class:`LoadedWeights`, a weights file or folder,
            or an in-memory state dict (hashed). ``weights_sha256`` is the sha256 of the file actually loaded.
        data: the dataset files or folders read (see :func:`dataset_hash`).
        settings: the spec (dataclass), the script's argparse namespace, or a mapping of arguments.

    Paths are recorded without this machine's folders (:func:`portable_path`).

    Returns keys ``model``, ``weights_path``, ``weights_sha256``, ``dataset`` (None without ``data``),
    ``settings`` and ``settings_sha256``, ``code`` (:func:`code_version`), ``command`` (argv),
    ``machine`` (:func:`machine`) and ``created_utc``.
    """
    record = getattr(model, "record", None)
    loaded = weights_of(weights) if weights is not None else weights_of(model)
    return {
        "model": name or (record.name if record is not None else None),
        "weights_path": portable_path(loaded.path) if loaded is not None and loaded.path is not None else None,
        "weights_sha256": loaded.sha256 if loaded is not None else None,
        "dataset": dataset_hash(data) if data is not None else None,
        "settings": _portable_values(_plain(settings)) if settings is not None else None,
        "settings_sha256": settings_sha256(settings) if settings is not None else None,
        "code": {**code_version(), "version": code_version_string()},
        "command": [Path(sys.argv[0]).name, *_portable_values(sys.argv[1:])] if sys.argv and sys.argv[0] else None,
        "machine": machine(),
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def cache_key(model: Any, *, data_sha256: str | None, settings: Any) -> dict[str, Any]:
    """What a cached prediction depends on: model name, sha256 of the weights actually loaded, sha256 of the model's
    record (its input contract and settings such as thresholds change predictions without changing the weights),
    dataset hash, settings hash and code version (package + commit; an uncommitted edit is not seen)."""
    loaded = weights_of(model)
    record = getattr(model, "record", None)
    code = code_version()
    return {"model": record.name if record is not None else None,
            "weights_sha256": loaded.sha256 if loaded is not None else None,
            "record_sha256": None if record is None else settings_sha256(
                record.to_dict() if hasattr(record, "to_dict") else record),
            "dataset_sha256": data_sha256, "settings_sha256": settings_sha256(settings),
            "code": f"{code['package']}+{code['git_commit'] or ''}"}
