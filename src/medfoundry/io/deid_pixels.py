"""Pixel cleaning for images with burned-in annotation, on the curated filters of pydicom's ``deid`` package.

``deid`` (github.com/pydicom/deid) ships a recipe (``deid.dicom``) of filters, collected from the RSNA CTP
anonymizer and from Stanford's de-identification work, that say for a device (manufacturer, model, modality,
image type, size, ...) where it burns text into the pixels. :func:`clean_burned_in` asks those filters about
one dataset and blanks (sets to 0) every region a matching filter names, with ``deid``'s own cleaner. An image
for which no filter names a region is refused with :class:`NoPixelFilterError`: medfoundry never passes an image
that declares burned-in text through uncleaned, and never guesses where the text is.

What is blanked is what the curated filters know; text a device burns elsewhere, or a device the filters do not
know, is not found. The filters match on header fields, so they are asked before the header is de-identified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medfoundry.errors import DeidentificationError, InputContractError


class BurnedInAnnotationError(DeidentificationError):
    """An image declares burned-in annotation (``BurnedInAnnotation = YES``) and its pixels were not cleaned."""


class NoPixelFilterError(BurnedInAnnotationError):
    """An image declares burned-in annotation and no ``deid`` filter gives the regions to clean for its device."""


@dataclass(frozen=True)
class CleanedRegions:
    """What :func:`clean_burned_in` blanked in one image.

    ``regions`` are ``(x0, y0, x1, y1)`` pixel boxes (columns ``x0:x1``, rows ``y0:y1``, end exclusive; ``"all"``
    for the whole image), ``filters`` the ``deid`` filter descriptions that named them."""

    regions: tuple[tuple[int, int, int, int] | str, ...]
    filters: tuple[str, ...]


def _require_deid():
    try:
        from deid.config import DeidRecipe
        from deid.dicom.pixels.clean import clean_pixel_data
        from deid.dicom.pixels.detect import has_burned_pixels
    except ImportError as exc:
        raise InputContractError("pixel cleaning needs pydicom's deid package: pip install 'medfoundry[pacs]'") from exc
    return DeidRecipe, has_burned_pixels, clean_pixel_data


def deid_version() -> str:
    """The installed ``deid`` version (recorded in the cleaned object's De-identification Method)."""
    from importlib.metadata import version

    return version("deid")


def _device(ds: Any) -> str:
    """Device fields (not identifying) that the filters match, for messages."""
    parts = [f"{k}={str(ds.get(k, '') or '').strip()!r}" for k in ("Modality", "Manufacturer", "ManufacturerModelName")]
    value = ds.get("ImageType") or []
    image_type = value if isinstance(value, str) else "\\".join(str(v) for v in value)
    parts.append(f"ImageType={image_type!r}")
    parts.append(f"{ds.get('Columns', '?')}x{ds.get('Rows', '?')} px")
    return ", ".join(parts)


def find_regions(ds: Any, source: str = "<dataset>") -> tuple[dict, CleanedRegions]:
    """Ask the ``deid`` filters where ``ds``'s device burns text. Returns ``deid``'s detection result (restricted
    to the filters that name regions) and the regions; ``regions`` is empty when no filter names one."""
    recipe, has_burned_pixels, _ = _require_deid()
    try:
        # a fresh recipe per image: deid writes the coordinates it reads from a header ("from:" regions) into it
        result = has_burned_pixels(ds, force=True, deid=recipe("dicom"))
    except Exception as exc:  # deid's filters raise many types on odd headers; the text may quote values
        raise DeidentificationError(source, f"the deid filters cannot read its header ({type(exc).__name__})") from exc
    kept, regions, filters = [], [], []
    for item in result.get("results", []):
        try:
            boxes = _boxes(item.get("coordinates", []))
        except (ValueError, TypeError) as exc:
            raise DeidentificationError(source, f"a deid filter gives an unusable region ({type(exc).__name__})") \
                from exc
        if boxes:
            kept.append(item)
            regions += boxes
            filters.append(f"{item.get('group', '')}: {' '.join(str(item.get('reason', '')).split())}")
    return {"flagged": bool(kept), "results": kept}, CleanedRegions(tuple(regions), tuple(filters))


def _boxes(coordinates: list) -> list[tuple[int, int, int, int] | str]:
    """deid's ``[[mask value, "x0,y0,x1,y1" | "all" | [...]], ...]`` → the boxes to blank (mask value 0)."""
    boxes: list[tuple[int, int, int, int] | str] = []
    for mask_value, coords in coordinates:
        for coord in coords if isinstance(coords, list) else [coords]:
            if int(mask_value) != 0:
                continue  # keep-regions only restore pixels inside blanked ones
            if str(coord).strip().lower() == "all":
                boxes.append("all")
                continue
            x0, y0, x1, y1 = (int(float(v)) for v in str(coord).split(","))
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1, y1))
    return boxes


def clean_burned_in(ds: Any, source: str = "<dataset>") -> CleanedRegions:
    """Blank the burned-in annotation regions of ``ds`` (in place) that the ``deid`` filters name for its device.

    The pixels are decoded, the regions set to 0 in every frame and channel by ``deid``'s cleaner, and written
    back uncompressed (Explicit VR Little Endian; colour images as RGB). ``BurnedInAnnotation`` becomes ``NO``.
    Pixels outside the regions keep their decoded values.

    Raises :class:`NoPixelFilterError` (naming ``source`` and the device fields) when no filter names a region,
    and :class:`DeidentificationError` when the pixels cannot be decoded or written.
    """
    if "PixelData" not in ds:
        raise NoPixelFilterError(source, "it declares burned-in annotation but has no PixelData to clean")
    detected, found = find_regions(ds, source)
    if not found.regions:
        raise NoPixelFilterError(source, f"it declares BurnedInAnnotation YES and no deid {deid_version()} filter "
                                         f"knows where this device burns text ({_device(ds)}); refused, not "
                                         "passed through")
    _, _, clean_pixel_data = _require_deid()
    try:
        photometric = str(ds.PhotometricInterpretation)
        samples = int(ds.get("SamplesPerPixel", 1))
        cleaned = clean_pixel_data(ds, detected, fix_interpretation=False)
        if cleaned is None:
            raise ValueError(f"deid cannot clean a pixel array of this shape ({samples} samples per pixel)")
        if samples == 3 and photometric.startswith("YBR"):
            photometric = "RGB"  # pydicom decodes YCbCr to RGB
        original = ds.pixel_array
        ds.set_pixel_data(cleaned.astype(original.dtype, copy=False), photometric, int(ds.BitsStored),
                          generate_instance_uid=False)
    except DeidentificationError:
        raise
    except Exception as exc:  # decoders and deid raise many types; the message carries no header values
        raise DeidentificationError(source, f"cannot clean its pixels ({type(exc).__name__})") from exc
    ds.BurnedInAnnotation = "NO"
    return found
