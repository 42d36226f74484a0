"""MedSAM's CT contract: a ``minmax`` model sees CT in HU through a soft-tissue window before min-max, as
MedSAM's own CT preprocessing prepared its training slices, not min-max over the whole HU range."""

from __future__ import annotations

import numpy as np

from medfoundry.io import MedImage
from medfoundry.predict.preprocess import preprocess
from medfoundry.registry import get_record


def test_minmax_contract_windows_ct_in_hu_first() -> None:
    ct = np.full((64, 64), -1000, np.int16)  # air, with bone (1500 HU), fat (-100) and muscle (50)
    ct[8:56, 8:56] = -100
    ct[20:44, 20:44] = 50
    ct[30:34, 30:34] = 1500
    contract = get_record("litemedsam").preprocess
    x, _ = preprocess(MedImage(array=ct, spacing=(1.0, 1.0), units="HU", modality="CT"), contract)
    fat, muscle = float(x[0, 40, 40]), float(x[0, 100, 100])  # input 256 px = 4 × the 64-px image
    assert muscle - fat > 0.3  # soft-tissue window: fat and muscle far apart (min-max over HU: 0.04 apart)
    raw, _ = preprocess(MedImage(array=ct, spacing=(1.0, 1.0), units="raw", modality="OT"), contract)
    assert abs(float(raw[0, 100, 100]) - float(raw[0, 40, 40]) - 150 / 2500) < 0.01  # other images: plain min-max
