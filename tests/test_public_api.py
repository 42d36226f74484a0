"""The public API: every name in ``medfoundry.__all__`` resolves, and ``import medfoundry`` stays light (no
torch, no model) because the heavy names are imported on first use."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import medfoundry


@pytest.mark.parametrize("name", medfoundry.__all__)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(medfoundry, name)
    assert value is not None
    assert name in dir(medfoundry)
    if callable(value) and name != "__version__":
        assert value.__doc__, f"medfoundry.{name} has no docstring"


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        medfoundry.no_such_name  # noqa: B018
    assert not hasattr(medfoundry, "_no_such_private")


def test_import_medfoundry_imports_no_torch() -> None:
    code = ("import sys, json, medfoundry; print(json.dumps({m: m in sys.modules for m in "
            "('torch', 'transformers', 'pydicom', 'medfoundry.predict.segment')}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout) == {"torch": False, "transformers": False, "pydicom": False,
                                       "medfoundry.predict.segment": False}


def test_the_lazy_names_are_the_defining_modules_objects() -> None:
    from medfoundry.eval.provenance import collect
    from medfoundry.predict.segment import open_segmenter

    assert medfoundry.open_segmenter is open_segmenter and medfoundry.collect_provenance is collect
