"""Uploaded images for the web app: stored by content hash in a private folder, recognised by their content
(never by the name a client gave), kept for a time-to-live after their last use, each with its own lock.

No web framework here: the same :class:`ImageStore` backs the HTTP routes, the tests and notebooks.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from medfoundry.errors import ImageReadError, InputContractError, MedfoundryError
from medfoundry.io import read_image
from medfoundry.io.image import MedImage

ID_PATTERN = re.compile(r"^[0-9a-f]{24}$")
MAX_NAME = 120  # characters of a client's file name kept for display


class UploadTooLargeError(MedfoundryError):
    """An upload exceeds the configured size limit (HTTP 413)."""


class UnknownImageError(MedfoundryError):
    """No uploaded image has this id: never uploaded, malformed, expired or evicted (HTTP 404)."""


class UnsupportedContentError(ImageReadError):
    """The upload's bytes are none of the formats the viewer reads, whatever its name says (HTTP 415)."""


def sniff_suffix(head: bytes) -> str:
    """The suffix medfoundry's readers need for a file starting with ``head`` (its first 4 KiB at least),
    decided from magic bytes only: ``.dcm``, ``.png``, ``.jpg``, ``.tif``, ``.bmp``, ``.gif``, ``.nii``,
    ``.nii.gz``, ``.mgz`` (FreeSurfer), ``.npy``, ``.npz`` or ``.zip``; ``""`` when nothing matches."""
    if head[128:132] == b"DICM":
        return ".dcm"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    if head.startswith(b"BM"):
        return ".bmp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return ".gif"
    if head.startswith(b"\x93NUMPY"):
        return ".npy"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"n+2\x00"):
        return ".nii"
    if head.startswith(b"\x1f\x8b"):
        try:  # a gzip stream: a NIfTI only if its first header says so (only 348 bytes are inflated)
            inner = gzip.GzipFile(fileobj=io.BytesIO(head)).read(348)
        except (OSError, EOFError, zlib.error):
            return ""
        if inner[344:348] in (b"n+1\x00", b"n+2\x00"):
            return ".nii.gz"
        return ".mgz" if inner[:4] == b"\x00\x00\x00\x01" else ""
    if head.startswith(b"PK\x03\x04"):
        return ".zip"
    return ""


def _zip_kind(path: Path) -> str:
    """``.npz`` for a zip of ``.npy`` members (NumPy's format), else ``.zip`` (a DICOM series or one image)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnsupportedContentError("upload", f"unreadable zip ({type(exc).__name__})") from None
    return ".npz" if names and all(n.endswith(".npy") and "/" not in n for n in names) else ".zip"


@dataclass
class StoredImage:
    """An uploaded image: its id (content hash prefix), the name to show, the image, its stored file.

    ``lock`` serialises work on this image (prompts, masks); other images are not blocked by it.
    ``masks`` holds the last masks computed on it, by mask id, for download.
    """

    id: str
    filename: str
    image: MedImage
    path: Path
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    last_used: float = field(default_factory=time.monotonic)
    masks: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict, repr=False)
    embedding: np.ndarray | None = None  # (D,) unit vector of the middle plane, for similar cases

    @property
    def depth(self) -> int:
        """Number of axial slices (1 for a 2D image)."""
        return int(self.image.array.shape[0]) if self.image.is_volume else 1

    def plane(self, slice_index: int | None) -> MedImage:
        """The 2D image to show or prompt: the given axial slice of a volume (default: the middle one)."""
        if not self.image.is_volume:
            if slice_index not in (None, 0):
                raise InputContractError(f"{self.filename} is a 2D image: it has no slice {slice_index}")
            return self.image
        k = self.depth // 2 if slice_index is None else slice_index
        if not 0 <= k < self.depth:
            raise InputContractError(f"slice {k} is outside the volume's 0..{self.depth - 1}")
        return self.image.slice(k)

    def keep_mask(self, mask_id: str, entry: dict[str, Any], limit: int = 8) -> None:
        """Remember a computed mask (the last ``limit`` are kept)."""
        self.masks[mask_id] = entry
        self.masks.move_to_end(mask_id)
        while len(self.masks) > limit:
            self.masks.popitem(last=False)


class ImageStore:
    """Uploads by content hash, with a size limit, a count limit and a time-to-live.

    Args:
        folder: where uploaded files are kept (default: a new private temporary folder, removed by :meth:`close`).
        max_upload_bytes: larger uploads are refused (:class:`UploadTooLargeError`) while they stream in.
        max_images: images kept; the least recently used is evicted first.
        ttl_seconds: an image unused for this long is forgotten and its file removed (:meth:`sweep`).
        deid: a :class:`medfoundry.io.deid.Deidentifier`: DICOM uploads are de-identified before they are
            stored, other formats refused, and the client's file name is not kept.
    """

    def __init__(self, folder: str | Path | None = None, max_upload_bytes: int = 512 << 20, max_images: int = 32,
                 ttl_seconds: float = 3600.0, deid: Any = None) -> None:
        self._own = folder is None
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="medfoundry-serve-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self.max_upload_bytes = max_upload_bytes
        self.max_images = max_images
        self.ttl_seconds = ttl_seconds
        self.deid = deid
        self._images: OrderedDict[str, StoredImage] = OrderedDict()
        self._lock = threading.Lock()  # guards the table only, never held while reading or predicting

    def add(self, stream: BinaryIO, filename: str) -> StoredImage:
        """Copy an upload into the store (refused past the size limit), recognise it by content, read it."""
        shown = Path((filename or "upload").replace("\\", "/")).name[-MAX_NAME:] or "upload"
        digest = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=self.folder, suffix=".part")
        tmp = Path(name)
        try:
            size, head = 0, b""
            with os.fdopen(fd, "wb") as fh:
                while chunk := stream.read(1 << 20):
                    size += len(chunk)
                    if size > self.max_upload_bytes:
                        raise UploadTooLargeError(f"upload larger than the limit of {self.max_upload_bytes} bytes")
                    if len(head) < 4096:
                        head += chunk[:4096 - len(head)]
                    digest.update(chunk)
                    fh.write(chunk)
            if size == 0:
                raise ImageReadError(shown, "the upload is empty")
            suffix = sniff_suffix(head) or ".dcm"  # DICOM without a preamble has no magic: its reader decides
            if suffix == ".zip":
                suffix = _zip_kind(tmp)
            if self.deid is not None:
                shown = "upload.dcm"  # an upload's own name can carry identity
                digest = self._deidentify(tmp, shown)
            image_id = digest.hexdigest()[:24]
            path = self.folder / f"{image_id}{suffix}"
            with self._lock:
                known = self._images.get(image_id)
            if known is not None:  # same content: the stored image, now used again
                known.last_used = time.monotonic()
                return known
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        try:
            image = read_image(path)
        except ImageReadError as exc:  # name the upload, never the server's file
            path.unlink(missing_ok=True)
            reason = exc.reason.replace(str(self.folder), "<store>")
            raise ImageReadError(shown, reason) from None
        except MedfoundryError:
            path.unlink(missing_ok=True)
            raise
        image.source = ""  # the server's path stays on the server
        stored = StoredImage(image_id, shown, image, path)
        with self._lock:
            self._images[image_id] = stored
            self._images.move_to_end(image_id)
            evicted = []
            while len(self._images) > self.max_images:
                evicted.append(self._images.popitem(last=False)[1])
        for old in evicted:
            old.path.unlink(missing_ok=True)
        self.sweep()
        return stored

    def _deidentify(self, tmp: Path, filename: str) -> Any:
        """Replace the received file by its de-identified DICOM (PS3.15 Annex E); its digest."""
        from medfoundry.io.deid import deidentify_bytes

        data = deidentify_bytes(tmp.read_bytes(), self.deid, filename)
        tmp.write_bytes(data)
        return hashlib.sha256(data)

    def get(self, image_id: str) -> StoredImage:
        """The stored image with this id, marked as used now."""
        if not ID_PATTERN.match(image_id or ""):
            raise UnknownImageError(f"no uploaded image has id {image_id!r}")
        with self._lock:
            stored = self._images.get(image_id)
            if stored is not None:
                self._images.move_to_end(image_id)
        if stored is None or self._expired(stored):
            raise UnknownImageError(f"no uploaded image has id {image_id!r} (never uploaded, or expired)")
        stored.last_used = time.monotonic()
        return stored

    def others(self, image_id: str) -> list[StoredImage]:
        """Every other stored image, oldest first."""
        with self._lock:
            return [s for k, s in self._images.items() if k != image_id and not self._expired(s)]

    def _expired(self, stored: StoredImage) -> bool:
        return time.monotonic() - stored.last_used > self.ttl_seconds

    def sweep(self) -> int:
        """Forget images unused for longer than the time-to-live and remove their files, and any partial
        upload file older than that; returns how many images were forgotten."""
        with self._lock:
            old = [k for k, s in self._images.items() if self._expired(s)]
            gone = [self._images.pop(k) for k in old]
        for stored in gone:
            stored.path.unlink(missing_ok=True)
        now = time.time()
        for part in self.folder.glob("*.part"):
            try:
                if now - part.stat().st_mtime > self.ttl_seconds:
                    part.unlink(missing_ok=True)
            except OSError:
                pass
        return len(gone)

    def remove(self, image_id: str) -> bool:
        """Forget one image and remove its file; False if it was not stored."""
        with self._lock:
            stored = self._images.pop(image_id, None)
        if stored is not None:
            stored.path.unlink(missing_ok=True)
        return stored is not None

    def __len__(self) -> int:
        return len(self._images)

    def close(self) -> None:
        """Forget the images and remove the folder if this store created it."""
        with self._lock:
            self._images.clear()
        if self._own:
            shutil.rmtree(self.folder, ignore_errors=True)
