"""Limits that keep a hostile or broken file from exhausting memory: every reader checks what a file *declares*
(pixel dimensions, frame counts, uncompressed sizes) against these limits before it allocates or expands
anything, and refuses with :class:`~medfoundry.errors.ImageReadError` past them.

Each limit is read from its environment variable at call time (a positive integer number of bytes):

- ``MEDFOUNDRY_MAX_FILE_BYTES`` (default 4 GiB): size of a file on disk (or of an upload).
- ``MEDFOUNDRY_MAX_IMAGE_BYTES`` (default 2 GiB): size of the decoded pixel array a file declares
  (rows × columns × frames × samples × bytes per sample, NIfTI dims × itemsize, TIFF series shape, PNG size ...).
  Reading may use a few times this (modality rescale to floating point, display conversion).
- ``MEDFOUNDRY_MAX_EXPANDED_BYTES`` (default 4 GiB): what compressed content may expand to (zip members,
  deflated DICOM, ``.npz`` members); checked from declared sizes, or by bounded streaming decompression.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from medfoundry.errors import ImageReadError

DEFAULT_MAX_FILE_BYTES = 4 * 2**30
DEFAULT_MAX_IMAGE_BYTES = 2 * 2**30
DEFAULT_MAX_EXPANDED_BYTES = 4 * 2**30


def _env_bytes(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


def max_file_bytes() -> int:
    """Largest file (bytes) a reader opens: ``MEDFOUNDRY_MAX_FILE_BYTES``, default 4 GiB."""
    return _env_bytes("MEDFOUNDRY_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES)


def max_image_bytes() -> int:
    """Largest decoded pixel array (bytes) a file may declare: ``MEDFOUNDRY_MAX_IMAGE_BYTES``, default 2 GiB."""
    return _env_bytes("MEDFOUNDRY_MAX_IMAGE_BYTES", DEFAULT_MAX_IMAGE_BYTES)


def max_expanded_bytes() -> int:
    """Largest expansion (bytes) of compressed content: ``MEDFOUNDRY_MAX_EXPANDED_BYTES``, default 4 GiB."""
    return _env_bytes("MEDFOUNDRY_MAX_EXPANDED_BYTES", DEFAULT_MAX_EXPANDED_BYTES)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_declared(path: str | Path, shape: tuple[int, ...] | list[int], bytes_per_value: float,
                   what: str = "image") -> int:
    """Refuse a file whose declared array ``shape`` × ``bytes_per_value`` exceeds :func:`max_image_bytes`
    (or whose shape has a negative entry). Returns the declared size in bytes."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise ImageReadError(path, f"{what} declares a negative dimension {tuple(dims)}")
    total = float(bytes_per_value)
    for d in dims:
        total *= d
    limit = max_image_bytes()
    if total > limit:
        raise ImageReadError(path, f"{what} declares {tuple(dims)} values ({_size(int(total))} decoded), over the "
                                   f"{_size(limit)} limit (set MEDFOUNDRY_MAX_IMAGE_BYTES to raise it)")
    return int(total)


def check_expanded(path: str | Path, declared: int, what: str = "compressed content") -> None:
    """Refuse ``declared`` expanded bytes past :func:`max_expanded_bytes`."""
    limit = max_expanded_bytes()
    if declared > limit:
        raise ImageReadError(path, f"{what} expands to {_size(declared)}, over the {_size(limit)} limit "
                                   "(set MEDFOUNDRY_MAX_EXPANDED_BYTES to raise it)")


def raw_deflate_size(path: str | Path, data: bytes, limit: int | None = None) -> int:
    """Inflate raw-deflate ``data`` (no zlib header, as in deflated DICOM) in bounded chunks, keeping nothing,
    and return its expanded size; raise :class:`ImageReadError` as soon as it passes ``limit``
    (default :func:`max_expanded_bytes`) or if the stream is corrupt."""
    limit = max_expanded_bytes() if limit is None else limit
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pending, chunk = 0, data, 1 << 20
    try:
        while pending and not inflater.eof:
            total += len(inflater.decompress(pending, chunk))
            pending = inflater.unconsumed_tail
            if total > limit:
                check_expanded(path, total, "deflated DICOM data set")
        total += len(inflater.flush())
    except zlib.error as exc:
        raise ImageReadError(path, f"corrupt deflated data ({exc})") from exc
    check_expanded(path, total, "deflated DICOM data set")
    return total
