"""Writers: NIfTI (with geometry), PNG (through a window), NumPy (``.npy`` array, ``.npz`` with geometry)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfoundry.errors import ImageWriteError
from medfoundry.files import atomic_output
from medfoundry.io.image import MedImage
from medfoundry.io.window import Window

WRITE_SUFFIXES = (".nii.gz", ".nii", ".png", ".npy", ".npz")


def write_image(
    image: MedImage,
    out: str | Path,
    *,
    window: Window | None = None,
    slice_index: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``image`` to ``out``; the format follows the suffix.

    - ``.nii``/``.nii.gz``: values and geometry (spacing, origin, direction) kept.
    - ``.png``: 8-bit through ``window`` (default: the image's default window); a volume needs ``slice_index``.
    - ``.npy``: the array only. ``.npz``: ``image`` plus ``spacing_array_order``, ``origin``, ``direction`` arrays.

    The file appears atomically; an existing ``out`` is kept unless ``overwrite``.
    Raises ImageWriteError for an unsupported suffix or layout, OutputExistsError if ``out`` exists.
    """
    out = Path(out)
    name = out.name.lower()
    if not name.endswith(WRITE_SUFFIXES):
        raise ImageWriteError(f"cannot write {out}: use one of {', '.join(WRITE_SUFFIXES)}")
    if name.endswith(".png"):
        if image.is_volume:
            if slice_index is None:
                raise ImageWriteError(
                    f"{out}: PNG holds one 2D image; choose a slice 0..{image.array.shape[0] - 1} (--slice)"
                )
            image = image.slice(slice_index)
        pixels = image.to_display(window)
    with atomic_output(out, overwrite) as tmp:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            from medfoundry.io.nifti import to_nifti

            if image.is_color:
                raise ImageWriteError(f"{out}: NIfTI output of colour images is not supported")
            nib.save(to_nifti(image), str(tmp))
        elif name.endswith(".png"):
            from PIL import Image

            Image.fromarray(pixels).save(tmp, format="PNG")
        elif name.endswith(".npy"):
            with open(tmp, "wb") as fh:
                np.save(fh, image.array, allow_pickle=False)
        else:
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh, image=image.array, spacing_array_order=np.asarray(image.spacing),
                    origin=np.asarray(image.origin), direction=np.asarray(image.direction),
                )
    return out
