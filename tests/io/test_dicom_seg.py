"""DICOM SEG output through highdicom, from the CLI on the shared CT series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfoundry.cli.main import main


def test_segment_series_to_dicom_seg(shared_data: Path, tmp_path: Path) -> None:
    hd = pytest.importorskip("highdicom")
    folder = shared_data / "totalsegmentator_examples" / "dicom" / "example_ct_dicom"
    out = tmp_path / "seg.dcm"
    code = main(["segment", str(folder), "--slice", "10", "--box", "200,200,300,300", "--propagate",
                 "--out", str(out)])
    assert code == 0
    seg = hd.seg.segread(str(out))
    assert seg.SOPClassUID.name == "Segmentation Storage" and seg.number_of_segments == 1
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 20
    assert np.asarray(seg.get_volume().array).sum() > 0
    assert main(["segment", str(folder), "--slice", "10", "--box", "200,200,300,300", "--out",
                 str(tmp_path / "x.dcm")]) == 2  # 2D result cannot be a SEG of the series
