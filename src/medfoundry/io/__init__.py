"""Medical image I/O: read DICOM/NIfTI/raster/NumPy into :class:`MedImage`, window it, write it back."""

from medfoundry.io.image import MedImage
from medfoundry.io.read import read_image
from medfoundry.io.window import PRESETS, Window, get_window
from medfoundry.io.write import write_image

__all__ = ["PRESETS", "MedImage", "Window", "get_window", "read_image", "write_image"]
