"""Whole-slide images: pyramidal TIFF/SVS/NDPI/... through tiffslide (the openslide API in pure Python), and
any other large raster (PNG/JPEG/plain TIFF) as a one-level slide.

Coordinates: ``(x, y)`` in level-0 pixels, sizes ``(width, height)`` in pixels of the level read — openslide's
conventions. Regions are returned as (H, W, 3) uint8 RGB; pixels outside the slide read as white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfoundry.errors import ImageReadError, InputContractError
from medfoundry.io.limits import check_declared

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".mrxs", ".svslide")


class Slide:
    """A pyramidal image. Use :func:`open_slide`; close it (or use ``with``) to release the file."""

    def __init__(self, path: Path, handle=None, array: np.ndarray | None = None, mpp: float | None = None) -> None:
        self.path = path
        self._handle, self._array = handle, array
        if handle is not None:
            self.level_dimensions = [tuple(int(v) for v in d) for d in handle.level_dimensions]
            self.level_downsamples = [float(d) for d in handle.level_downsamples]
            mpp_x = handle.properties.get("tiffslide.mpp-x")
            self.mpp = float(mpp_x) if mpp_x else mpp
        else:
            self.level_dimensions = [(array.shape[1], array.shape[0])]
            self.level_downsamples = [1.0]
            self.mpp = mpp

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0 in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_for_mpp(self, mpp: float) -> int:
        """The finest level whose resolution is at most ``mpp`` µm/pixel coarser than asked (level 0 if unknown)."""
        if self.mpp is None:
            return 0
        wanted = mpp / self.mpp
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= wanted * 1.05]
        return ok[-1] if ok else 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 RGB of ``size`` = (w, h) pixels at ``level``, top-left ``location`` in level-0 pixels."""
        if not 0 <= level < self.level_count:
            raise InputContractError(f"level {level} is outside 0..{self.level_count - 1}")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise InputContractError(f"region size {size} must be positive")
        check_declared(self.path, (h, w, 4), 1, "slide region")
        if self._handle is not None:
            try:
                region = np.asarray(self._handle.read_region(location, level, (w, h), as_array=True))
            except Exception as exc:  # corrupt tiles: tiffslide, tifffile and the codecs raise many types
                raise ImageReadError(self.path, f"cannot read a region ({type(exc).__name__}: {exc})") from exc
            return _rgb(region, self.path)
        out = np.full((h, w, 3), 255, np.uint8)
        x, y = int(location[0]), int(location[1])
        src = self._array[max(y, 0) : y + h, max(x, 0) : x + w]
        out[max(-y, 0) : max(-y, 0) + src.shape[0], max(-x, 0) : max(-x, 0) + src.shape[1]] = src
        return out

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """(h, w, 3) uint8 RGB of the whole slide, longer side ``max_size`` at most."""
        from PIL import Image

        if self._handle is not None:
            w, h = min(self.level_dimensions, key=lambda d: d[0] * d[1])  # the thumbnail reads at least this
            check_declared(self.path, (h, w, 4), 1, "slide's smallest level")
            try:
                return np.asarray(self._handle.get_thumbnail((max_size, max_size)).convert("RGB"))
            except Exception as exc:  # corrupt tiles
                raise ImageReadError(self.path, f"cannot make a thumbnail ({type(exc).__name__}: {exc})") from exc
        im = Image.fromarray(self._array)
        im.thumbnail((max_size, max_size))
        return np.asarray(im)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _rgb(region: np.ndarray, path: Path) -> np.ndarray:
    """(h, w, 3) from a region read as (h, w), (h, w, 1), (h, w, 3) or (h, w, 4)."""
    if region.ndim == 2:
        region = region[..., None]
    if region.ndim != 3 or region.shape[-1] not in (1, 3, 4):
        raise ImageReadError(path, f"slide region of unsupported layout {region.shape}")
    return np.repeat(region, 3, axis=-1) if region.shape[-1] == 1 else region[..., :3]


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a whole-slide image (``mpp``: µm per level-0 pixel when the file does not say)."""
    from medfoundry.io.limits import max_file_bytes

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    if path.suffix.lower() in SLIDE_SUFFIXES:
        try:
            import tiffslide
        except ImportError as exc:  # pragma: no cover - the slides extra is part of the dev install
            raise ImageReadError(path, "reading slides needs tiffslide: pip install 'medfoundry[slides]'") from exc
        try:
            return Slide(path, handle=tiffslide.TiffSlide(path), mpp=mpp)
        except Exception as exc:  # tiffslide raises many kinds of errors for corrupt files
            raise ImageReadError(path, f"not a readable slide ({type(exc).__name__}: {exc})") from exc
    if path.stat().st_size > max_file_bytes():
        raise ImageReadError(path, "file is over the size limit (set MEDFOUNDRY_MAX_FILE_BYTES to raise it)")
    from medfoundry.io import read_image

    image = read_image(path)
    if image.is_volume:
        raise InputContractError(f"{path} is a volume, not a slide")
    return Slide(path, array=image.to_display() if image.is_color else np.repeat(image.to_display()[..., None], 3, -1),
                 mpp=mpp)


def write_pyramid(path: str | Path, rgb: np.ndarray, levels: int = 3, mpp: float | None = None,
                  tile: int = 256) -> Path:
    """Write (H, W, 3) uint8 ``rgb`` as a tiled pyramidal BigTIFF (each level half the previous, zlib), readable
    by :func:`open_slide`, tiffslide and openslide's generic-TIFF reader; ``mpp`` µm/pixel of level 0."""
    import tifffile

    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise InputContractError(f"write_pyramid needs (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    opts = {"tile": (tile, tile), "photometric": "rgb", "compression": "zlib"}
    if mpp is not None:
        opts |= {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(rgb, subifds=levels - 1, **opts)
        for level in range(1, levels):
            step = 2**level
            tif.write(rgb[::step, ::step], subfiletype=1, **opts)
    return path
