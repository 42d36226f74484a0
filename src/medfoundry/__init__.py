"""medfoundry: use, adapt and evaluate foundation models for medical images.

The public API is the names in ``__all__``; everything else lives in the subpackages (``medfoundry.io``,
``medfoundry.registry``, ...). Importing medfoundry loads no model, reads no file, touches no network and does
not import torch: the names that need it (predictors, tasks, the evaluation harness) are imported on first use.

    import medfoundry as mf

    image = mf.read_image("chest.dcm")
    clip = mf.open_contrastive("medfoundry-clip-tiny")
    print(mf.zero_shot_classify(clip, [image], ["normal", "pneumonia"]).probs)
    segmenter = mf.open_segmenter("medfoundry-sam-lite")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medfoundry.errors import (
    ChecksumMismatchError,
    ImageReadError,
    ImageWriteError,
    InputContractError,
    MedfoundryError,
    OutputExistsError,
    RegistryError,
    UnknownModelError,
    UnsafeCheckpointError,
    WeightsError,
    WeightsNotFoundError,
)
from medfoundry.io import MedImage, Window, read_image, write_image
from medfoundry.registry import ModelRecord, get_record, list_models

__version__ = "0.1.0"

#: Names imported on first use (they need torch or other heavy libraries): name → module that defines it.
_LAZY: dict[str, str] = {
    "open_contrastive": "medfoundry.predict.contrastive",
    "ContrastivePredictor": "medfoundry.predict.contrastive",
    "open_segmenter": "medfoundry.predict.segment",
    "PromptSegmenter": "medfoundry.predict.segment",
    "open_chat": "medfoundry.predict.conversational",
    "VisualChat": "medfoundry.predict.conversational",
    "zero_shot_classify": "medfoundry.tasks.zero_shot",
    "label_set": "medfoundry.tasks.zero_shot",
    "segment_volume": "medfoundry.tasks.volume",
    "segment_by_text": "medfoundry.tasks.text_to_mask",
    "measure": "medfoundry.tasks.measure",
    "build_report_bank": "medfoundry.tasks.report",
    "generate_report": "medfoundry.tasks.report",
    "build_index": "medfoundry.tasks.retrieval",
    "fit_linear_probe": "medfoundry.tasks.probe",
    "slide_zero_shot": "medfoundry.tasks.slides",
    "open_slide": "medfoundry.io.slide",
    "load_spec": "medfoundry.eval.specs",
    "SpecError": "medfoundry.eval.specs",
    "run_benchmark": "medfoundry.eval.runner",
    "collect_provenance": "medfoundry.eval.provenance",
}
_RENAMED = {"collect_provenance": "collect"}

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports these on first use
    from medfoundry.eval.provenance import collect as collect_provenance
    from medfoundry.eval.runner import run_benchmark
    from medfoundry.eval.specs import SpecError, load_spec
    from medfoundry.io.slide import open_slide
    from medfoundry.predict.contrastive import ContrastivePredictor, open_contrastive
    from medfoundry.predict.conversational import VisualChat, open_chat
    from medfoundry.predict.segment import PromptSegmenter, open_segmenter
    from medfoundry.tasks.measure import measure
    from medfoundry.tasks.probe import fit_linear_probe
    from medfoundry.tasks.report import build_report_bank, generate_report
    from medfoundry.tasks.retrieval import build_index
    from medfoundry.tasks.slides import slide_zero_shot
    from medfoundry.tasks.text_to_mask import segment_by_text
    from medfoundry.tasks.volume import segment_volume
    from medfoundry.tasks.zero_shot import label_set, zero_shot_classify


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'medfoundry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ChecksumMismatchError",
    "ContrastivePredictor",
    "ImageReadError",
    "ImageWriteError",
    "InputContractError",
    "MedImage",
    "MedfoundryError",
    "ModelRecord",
    "OutputExistsError",
    "PromptSegmenter",
    "RegistryError",
    "SpecError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "VisualChat",
    "WeightsError",
    "WeightsNotFoundError",
    "Window",
    "__version__",
    "build_index",
    "build_report_bank",
    "collect_provenance",
    "fit_linear_probe",
    "generate_report",
    "get_record",
    "label_set",
    "list_models",
    "load_spec",
    "measure",
    "open_chat",
    "open_contrastive",
    "open_segmenter",
    "open_slide",
    "read_image",
    "run_benchmark",
    "segment_by_text",
    "segment_volume",
    "slide_zero_shot",
    "write_image",
    "zero_shot_classify",
]
