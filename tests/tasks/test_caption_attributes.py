"""The attribute rule of the caption benchmark: first-mentioned term per attribute."""

from __future__ import annotations

import pytest

from medfoundry.tasks.caption_attributes import attribute_correct, stated_attributes


@pytest.mark.parametrize(("text", "expected"), [
    ("Axial CT of the head. Lesion in the left thalamus.", {"modality": "CT", "plane": "axial", "region": "head"}),
    ("Coronal T2-weighted image of the pelvis shows a uterine mass", {"modality": "MR", "plane": "coronal",
                                                                      "region": "reproductive_and_urinary"}),
    ("Sagittal MRI of the spine; the liver is normal", {"modality": "MR", "plane": "sagittal",
                                                        "region": "spine_and_muscles"}),
    ("A large mass.", {"modality": None, "plane": None, "region": None}),
])
def test_stated_attributes(text: str, expected: dict) -> None:
    assert stated_attributes(text) == expected


def test_correctness_and_the_other_plane() -> None:
    labels = {"modality": "CT", "plane": "other", "region": "thorax"}
    assert attribute_correct("CT of the chest", labels) == {"modality": True, "plane": True, "region": True}
    assert attribute_correct("axial MRI of the lungs", labels) == {"modality": False, "plane": False, "region": True}
