"""Zip archives as images: a zipped DICOM series (the way a series travels through a web upload), or a zip
holding one image file.

Members are extracted under names medfoundry makes up (``00000.dcm``, ``00001.nii.gz`` ...), never under the
names stored in the archive, so ``../`` or absolute member names cannot write outside a private temporary
folder. Before anything is decompressed the archive's declared sizes are checked against
:func:`~medfoundry.io.limits.max_expanded_bytes` and its member count against :data:`MAX_MEMBERS`; extraction
counts the bytes it writes and stops past the limit as well. Links, encrypted members and nested archives are
refused.
"""

from __future__ import annotations

import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from medfoundry.errors import ImageReadError
from medfoundry.io.image import MedImage
from medfoundry.io.limits import check_expanded, max_expanded_bytes

#: Most members a zip may hold (a DICOM series of a few thousand slices fits).
MAX_MEMBERS = 20000
_KEEP_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".npz",
                  ".mgz", ".mgh", ".mnc")


def _suffix(name: str) -> str:
    low = name.lower()
    return next((s for s in _KEEP_SUFFIXES if low.endswith(s)), "")


def _members(path: Path, z: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The file members to extract, after the count, size, link, encryption and nesting checks."""
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ImageReadError(path, f"zip holds {len(infos)} members, over the limit of {MAX_MEMBERS}")
    files = []
    for info in infos:
        name = info.filename.replace("\\", "/")
        if info.is_dir() or name.rsplit("/", 1)[-1].startswith(".") or "__MACOSX/" in name:
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ImageReadError(path, f"zip member {name!r} is a symbolic link; links are refused")
        if info.flag_bits & 0x1:
            raise ImageReadError(path, f"zip member {name!r} is encrypted")
        if name.lower().endswith((".zip", ".gz")) and not name.lower().endswith(".nii.gz"):
            raise ImageReadError(path, f"zip member {name!r} is itself an archive; nested archives are refused")
        files.append(info)
    if not files:
        raise ImageReadError(path, "zip holds no files")
    check_expanded(path, sum(i.file_size for i in files), "zip archive")
    return files


def read_zip(path: str | Path, series_uid: str | None = None) -> MedImage:
    """Read a zip holding one image file (any format :func:`~medfoundry.io.read_image` reads) or the files of
    a DICOM series (any folder layout). The image's ``source`` is the zip; errors name the zip and the member."""
    from medfoundry.io.read import read_image

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="medfoundry-zip-") as tmp:
        names: dict[str, str] = {}
        try:
            with zipfile.ZipFile(path) as z:
                members = _members(path, z)
                budget = max_expanded_bytes()
                for k, info in enumerate(members):
                    target = Path(tmp) / f"{k:05d}{_suffix(info.filename)}"
                    names[target.name] = info.filename
                    with z.open(info) as src, open(target, "wb") as dst:
                        while chunk := src.read(1 << 20):
                            budget -= len(chunk)
                            if budget < 0:
                                check_expanded(path, max_expanded_bytes() + 1, "zip archive")
                            dst.write(chunk)
        except ImageReadError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError, NotImplementedError,
                RuntimeError, OSError) as exc:
            raise ImageReadError(path, f"unreadable zip ({type(exc).__name__}: {exc})") from exc
        files = sorted(Path(tmp).iterdir())
        try:
            image = read_image(files[0]) if len(files) == 1 else read_image(Path(tmp), series_uid=series_uid)
        except ImageReadError as exc:
            member = names.get(Path(exc.path).name)
            where = f"member {member!r}: " if member else ""
            raise ImageReadError(path, where + exc.reason.replace(tmp, "<zip>")) from None
    image.source = str(path)
    return image
