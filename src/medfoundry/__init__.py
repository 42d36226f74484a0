"""medfoundry: use, adapt and evaluate foundation models for medical images.

The public API is small; everything else lives in the subpackages (``medfoundry.io``,
``medfoundry.registry``, ...). Importing medfoundry loads no model, reads no file and touches no network.
"""

from medfoundry.errors import (
    ImageReadError,
    InputContractError,
    MedfoundryError,
    UnknownModelError,
    WeightsError,
)
from medfoundry.io import MedImage, Window, read_image, write_image
from medfoundry.registry import ModelRecord, get_record, list_models

__version__ = "0.1.0"

__all__ = [
    "ImageReadError",
    "InputContractError",
    "MedImage",
    "MedfoundryError",
    "ModelRecord",
    "UnknownModelError",
    "WeightsError",
    "Window",
    "__version__",
    "get_record",
    "list_models",
    "read_image",
    "write_image",
]
