"""Intensity windows: named presets and conversion to display values.

A window is (centre, width) in the image's intensity units (Hounsfield units for CT). It maps
``[centre - width/2, centre + width/2]`` linearly onto ``[0, 1]`` (DICOM PS3.3 C.11.2.1.3.2 "LINEAR" uses a
half-pixel offset; the difference is below one grey level for the widths used here and is ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medfoundry.errors import InputContractError


@dataclass(frozen=True)
class Window:
    """An intensity window. ``center`` and ``width`` are in the image's units (HU for CT); width > 0."""

    center: float
    width: float
    name: str | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.center) or not np.isfinite(self.width) or self.width <= 0:
            raise InputContractError(f"invalid window center={self.center} width={self.width}: width must be > 0")

    @property
    def low(self) -> float:
        return self.center - self.width / 2.0

    @property
    def high(self) -> float:
        return self.center + self.width / 2.0

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Map intensities to float32 in [0, 1]: values below ``low`` become 0, above ``high`` become 1."""
        out = (np.asarray(array, dtype=np.float32) - np.float32(self.low)) / np.float32(self.width)
        return np.clip(out, 0.0, 1.0)

    def to_uint8(self, array: np.ndarray) -> np.ndarray:
        """Map intensities to uint8 display values 0..255 through this window."""
        return np.round(self.apply(array) * 255.0).astype(np.uint8)


#: CT window presets in Hounsfield units (centre, width), as commonly used in radiology viewers.
PRESETS: dict[str, Window] = {
    "lung": Window(-600.0, 1500.0, "lung"),
    "mediastinum": Window(50.0, 350.0, "mediastinum"),
    "bone": Window(400.0, 1800.0, "bone"),
    "brain": Window(40.0, 80.0, "brain"),
    "soft_tissue": Window(50.0, 400.0, "soft_tissue"),
    "abdomen": Window(40.0, 350.0, "abdomen"),
    "liver": Window(60.0, 160.0, "liver"),
    "stroke": Window(40.0, 40.0, "stroke"),
}


def get_window(name_or_spec: str | Window) -> Window:
    """Return a preset by name (``"lung"``) or parse ``"C,W"`` (e.g. ``"40,400"``) into a :class:`Window`."""
    if isinstance(name_or_spec, Window):
        return name_or_spec
    key = name_or_spec.strip().lower().replace("-", "_").replace(" ", "_")
    if key in PRESETS:
        return PRESETS[key]
    parts = key.split(",")
    if len(parts) == 2:
        try:
            return Window(float(parts[0]), float(parts[1]))
        except ValueError:
            pass
    raise InputContractError(
        f"unknown window {name_or_spec!r}: use one of {', '.join(sorted(PRESETS))} or 'centre,width'"
    )


def percentile_window(array: np.ndarray, low: float = 0.5, high: float = 99.5) -> Window:
    """A window spanning the ``low``..``high`` percentiles of the finite values of ``array``."""
    values = np.asarray(array)
    values = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if values.size == 0:
        return Window(0.5, 1.0, "percentile")
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        lo, hi = values.min(), values.max()
    lo, hi = float(lo), float(hi)
    if hi <= lo:
        hi = lo + 1.0
    return Window(float(lo + hi) / 2.0, float(hi - lo), "percentile")
