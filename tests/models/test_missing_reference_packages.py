"""Without its reference package, MedSAM2, SAM-Med3D and CONCH fail with a WeightsError naming the pip install
(the import is made to fail by hiding the module, as an uninstalled package would)."""

from __future__ import annotations

import sys

import pytest

from medfoundry.errors import WeightsError


@pytest.mark.parametrize(("hidden", "build", "extra"), [
    (("sam2",), "medfoundry.models.medsam2:build_medsam2", "medsam2"),
    (("medim", "medim.models", "medim.models.sam_med3d"), "medfoundry.models.sam_med3d:build_sam_med3d",
     "sam-med3d"),
    (("conch", "conch.open_clip_custom"), "medfoundry.models.conch:_require_conch", "conch"),
])
def test_missing_package_names_the_pip_install(hidden: tuple[str, ...], build: str, extra: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    module, function = build.split(":")
    with pytest.raises(WeightsError, match=rf"pip install 'medfoundry\[{extra}\]'"):
        getattr(importlib.import_module(module), function)()
