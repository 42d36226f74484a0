"""MedSAM2 (bowang-lab): SAM 2.1 Hiera-Tiny at 512 px, run by the reference ``sam2`` package.

MedSAM2's model config ``sam2.1_hiera_t512.yaml`` is the ``sam2`` package's ``configs/sam2.1/sam2.1_hiera_t.yaml``
with three changes: ``image_size: 512`` and the memory attention's RoPE ``feat_sizes: [32, 32]`` (self and cross
attention). medfoundry composes that config from the installed package with those overrides (Hydra, as
``sam2.build_sam`` does) rather than shipping a copy, and builds the package's ``SAM2VideoPredictor`` (a
``SAM2Base``, so the same network also serves the package's ``SAM2ImagePredictor``).

The published ``MedSAM2_latest.pt`` is ``{"model": state_dict}`` (as every SAM 2 checkpoint); medfoundry reads it
with its safe loader and requires every parameter, as ``sam2.build_sam._load_checkpoint`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medfoundry.errors import WeightsError

#: the sam2 package config MedSAM2 starts from, and MedSAM2's changes to it
BASE_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
MEDSAM2_OVERRIDES = (
    "++model.image_size=512",
    "++model.memory_attention.layer.self_attention.feat_sizes=[32,32]",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[32,32]",
)
#: what sam2.build_sam.build_sam2_video_predictor adds (apply_postprocessing=True), as MedSAM2's scripts use it
VIDEO_OVERRIDES = (
    "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
    "++model.fill_hole_area=8",
)


def _require_sam2() -> None:
    try:
        import sam2  # noqa: F401  (initialises sam2's Hydra config module)
    except ImportError as exc:
        raise WeightsError("MedSAM2 needs its reference package: pip install 'medfoundry[medsam2]' "
                           "(or pip install sam2 hydra-core iopath)") from exc


def build_medsam2(config: str = BASE_CONFIG, overrides: Sequence[str] = MEDSAM2_OVERRIDES) -> Any:
    """An untrained MedSAM2 network: the sam2 package's ``SAM2VideoPredictor`` from ``config`` + ``overrides``
    (Hydra override strings; tests add some that shrink the network), float32, eval mode."""
    _require_sam2()
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose(config_name=config, overrides=[*VIDEO_OVERRIDES, *overrides])
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True).float().eval()


def load_medsam2(weights: Any, config: str = BASE_CONFIG, overrides: Sequence[str] = MEDSAM2_OVERRIDES,
                 name: str = "medsam2") -> Any:
    """Build MedSAM2 and load a SAM 2 checkpoint (``{"model": state_dict}``, or a bare state dict).

    Raises:
        WeightsError: the sam2 package is missing, or the weights do not fit (missing, unexpected or misshapen).
    """
    from medfoundry.registry.loading import load_state_dict

    model = build_medsam2(config, overrides)
    state = load_state_dict(weights)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise WeightsError(f"{name}: the weights do not fit MedSAM2: {str(exc)[:300]}") from exc
    if missing or unexpected:
        raise WeightsError(f"{name}: the weights do not fit MedSAM2: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    return model
