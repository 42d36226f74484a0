"""Choose the numeric precision of a segmenter's image encoder for the machine it runs on.

- ``fp32``: always; the reference.
- ``bf16``: only where bfloat16 is native (:mod:`medfoundry.models.hardware`); elsewhere (AVX2-only CPUs) it is
  emulated and several times slower than float32, so medfoundry warns and stays in float32.
- ``auto`` (the CLI's default): float32 unless bfloat16 is native *and* a one-time probe on this model shows it
  faster (≥ :data:`MIN_SPEEDUP`) with masks that agree with float32 (IoU ≥ :data:`MIN_IOU` on a probe image).
  The probe's result is cached in ``$MEDFOUNDRY_CACHE/precision.json``, keyed by model, CPU, PyTorch version
  and thread count, so it runs once per machine.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medfoundry.errors import InputContractError
from medfoundry.models.hardware import CpuFeatures, cpu_features

PRECISIONS = ("auto", "fp32", "bf16")
#: bumped whenever :func:`measure_segmenter` or the bfloat16 encoders it measures change, so older cached probes
#: are not reused (3: LiteMedSAM's patch embedding stays float32 under bf16).
PROBE_VERSION = 3
#: bf16 must be at least this much faster than fp32 for ``auto`` to choose it.
MIN_SPEEDUP = 1.2
#: and its probe masks (a large and a small object) must agree with float32's to at least this IoU.
MIN_IOU = 0.99


@dataclass(frozen=True)
class Probe:
    """One measurement: seconds per image embedding in float32 and bfloat16, and the IoU between the masks
    decoded from the two embeddings of the probe image."""

    fp32_s: float
    bf16_s: float
    iou: float

    @property
    def speedup(self) -> float:
        return self.fp32_s / max(self.bf16_s, 1e-9)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision to use and why (printed by the CLI, kept in benchmark results)."""

    precision: str
    reason: str
    probe: Probe | None = None


def choose_precision(requested: str, features: CpuFeatures, probe: Callable[[], Probe] | None = None
                     ) -> PrecisionChoice:
    """Decide the encoder precision.

    Args:
        requested: ``auto``, ``fp32`` or ``bf16``.
        features: the machine's :class:`CpuFeatures`.
        probe: measures fp32 against bf16 on the model (called only for ``auto`` on native-bf16 machines).
    Raises:
        InputContractError: unknown ``requested``.
    """
    if requested not in PRECISIONS:
        raise InputContractError(f"unknown precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return PrecisionChoice("fp32", "requested")
    if not features.native_bf16:
        why = (f"this CPU ({features.model or 'unknown'}, {features.capability}) has no native bfloat16 "
               "(AVX512-BF16, AMX or Arm BF16), where bf16 is emulated and slower than float32")
        if requested == "bf16":
            warnings.warn(f"--precision bf16 ignored: {why}; running in float32", RuntimeWarning, stacklevel=2)
        return PrecisionChoice("fp32", why)
    if requested == "bf16":
        return PrecisionChoice("bf16", "requested; bfloat16 is native here")
    if probe is None:
        return PrecisionChoice("fp32", "auto without a probe")
    p = probe()
    if p.iou < MIN_IOU:
        return PrecisionChoice("fp32", f"bf16 masks differ (probe IoU {p.iou:.3f} < {MIN_IOU})", p)
    if p.speedup < MIN_SPEEDUP:
        return PrecisionChoice("fp32", f"bf16 is not faster enough here ({p.speedup:.2f}× < {MIN_SPEEDUP}×)", p)
    return PrecisionChoice("bf16", f"native bfloat16, {p.speedup:.2f}× faster, probe IoU {p.iou:.3f}", p)


def _cache_file() -> Path:
    from medfoundry.registry.sources import cache_dir

    return cache_dir() / "precision.json"


def cached_probe(key: str, measure: Callable[[], Probe]) -> Callable[[], Probe]:
    """Wrap ``measure`` so that its result is read from / written to the precision cache under ``key``."""

    def run() -> Probe:
        path = _cache_file()
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            table = {}
        if isinstance(table.get(key), dict):
            try:
                return Probe(**table[key])
            except TypeError:
                pass
        result = measure()
        table[key] = asdict(result)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(table, indent=1), encoding="utf-8")
            tmp.replace(path)
        except OSError:
            pass  # a read-only cache only costs a probe per run
        return result

    return run


def measure_segmenter(segmenter: Any, repeats: int = 2) -> Probe:
    """Time a float32 and a bfloat16 copy of the segmenter's image encoder on a synthetic probe image (a large
    and a small bright ellipse on a gradient, with noise) and compare the masks decoded for a box around each:
    the lower of the two IoUs is reported (small structures are where bfloat16 differs first)."""
    import copy

    import numpy as np
    import torch

    from medfoundry.models.sam_fast import accelerate_encoder

    model = segmenter.model
    size = int(model.config.image_size)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.3 * xx + 0.2 * yy + 0.5 * (((xx - 0.5) / 0.22) ** 2 + ((yy - 0.45) / 0.15) ** 2 < 1)
    img = img + 0.35 * (((xx - 0.8) / 0.035) ** 2 + ((yy - 0.82) / 0.025) ** 2 < 1)
    img = img + np.random.default_rng(0).normal(0, 0.03, img.shape)
    img = (img - img.min()) / (img.max() - img.min())
    x = torch.from_numpy(np.repeat(img[None], 3, 0).astype(np.float32))[None]
    x = (x * segmenter.record.preprocess.scale - torch.tensor(segmenter.record.preprocess.mean)[:, None, None]) \
        / torch.tensor(segmenter.record.preprocess.std)[:, None, None]
    fp32 = model.image_encoder
    bf16 = accelerate_encoder(copy.deepcopy(fp32), bf16=True).eval()

    def timed(encoder: Any) -> tuple[float, torch.Tensor]:
        best, out = float("inf"), None
        for _ in range(repeats + 1):  # the first call warms the kernels up
            start = time.process_time()  # CPU seconds: steadier than wall time on a shared machine
            out = encoder(x)
            best = min(best, time.process_time() - start)
        assert out is not None  # the loop runs at least once
        return best, out

    with torch.inference_mode():
        t32, e32 = timed(fp32)
        t16, e16 = timed(bf16)
        ious = []
        for box in ([0.26, 0.28, 0.74, 0.62], [0.755, 0.79, 0.845, 0.85]):
            b = torch.tensor([box]) * size
            m32 = model.decode(e32, boxes=b)[0] > 0
            m16 = model.decode(e16.float(), boxes=b)[0] > 0
            union = int((m32 | m16).sum())
            ious.append(float((m32 & m16).sum()) / union if union else 1.0)
    return Probe(round(t32, 5), round(t16, 5), round(min(ious), 5))


def resolve_precision(segmenter: Any, requested: str, features: CpuFeatures | None = None) -> PrecisionChoice:
    """The :class:`PrecisionChoice` for ``segmenter`` (a PyTorch PromptSegmenter) on this machine; ``auto``
    probes once per machine and model (cached)."""
    import torch

    features = features or cpu_features()
    key = (f"{segmenter.record.name}|{features.key()}|torch {torch.__version__}|threads {torch.get_num_threads()}"
           f"|probe {PROBE_VERSION}")
    probe = cached_probe(key, lambda: measure_segmenter(segmenter))
    return choose_precision(requested, features, probe)
