"""Window presets and conversions."""

from __future__ import annotations

import numpy as np
import pytest

from medfoundry.errors import InputContractError
from medfoundry.io import PRESETS, Window, get_window
from medfoundry.io.window import percentile_window


def test_presets_cover_the_usual_ct_windows() -> None:
    for name in ("lung", "mediastinum", "bone", "brain", "soft_tissue", "abdomen"):
        assert name in PRESETS
    assert get_window("Soft-Tissue") is PRESETS["soft_tissue"]
    assert get_window("40,400") == Window(40.0, 400.0)


@pytest.mark.parametrize("spec", ["nonsense", "40", "40,-5", "a,b"])
def test_bad_window_specs(spec: str) -> None:
    with pytest.raises(InputContractError):
        get_window(spec)


def test_apply_maps_edges() -> None:
    w = Window(40.0, 400.0)
    values = np.array([-1000.0, w.low, 40.0, w.high, 3000.0])
    np.testing.assert_allclose(w.apply(values), [0.0, 0.0, 0.5, 1.0, 1.0])
    assert w.to_uint8(values).tolist() == [0, 0, 128, 255, 255]


def test_percentile_window_of_constant_image() -> None:
    w = percentile_window(np.full((4, 4), 7.0))
    assert w.width > 0 and w.low <= 7.0 <= w.high
