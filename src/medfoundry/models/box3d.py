"""Box3DNet: one box on one slice in, the whole 3D object out (tensors only; no I/O).

3D segmentation from a key-slice box by slice-by-slice propagation has to guess, slice after slice, where an
object ends and how it shrinks, from a 2D model that fills whatever box it is given. Box3DNet sees the object's
neighbourhood in 3D at once: a volume patch resampled around the key-slice box (the predictor's
:mod:`medfoundry.predict.box3d` builds it) and the box itself drawn on the key slice, and returns the object's
mask logits on the same patch, empty where the object has ended.

The network is MONAI's :class:`~monai.networks.nets.BasicUNet` (3D, instance norm, LeakyReLU); this module adds
the input contract: two channels, ``(B, 2, D, H, W)``: channel 0 the patch's intensities in [0, 1] (the
predictor's window), channel 1 the prompt (1 inside the key-slice box on the patch's central slices, 0
elsewhere); output ``(B, 1, D, H, W)`` logits. D, H and W must be multiples of 16 (four poolings).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medfoundry.errors import InputContractError


@dataclass(frozen=True)
class Box3DConfig:
    """Architecture of :class:`Box3DNet`.

    Attributes:
        features: BasicUNet's six feature widths (five levels and the last decoder block).
        grid: the patch (D, H, W) in voxels the model was trained on (multiples of 16).
    """

    features: tuple[int, int, int, int, int, int] = (8, 16, 32, 64, 128, 8)
    grid: tuple[int, int, int] = (32, 64, 64)

    @classmethod
    def from_dict(cls, d: dict) -> Box3DConfig:
        """From a record's ``arch_config`` (lists become tuples; unknown keys are an error)."""
        known = {"features", "grid"}
        unknown = set(d) - known
        if unknown:
            raise InputContractError(f"unknown Box3DNet settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: tuple(int(x) for x in v) for k, v in d.items()})  # type: ignore[arg-type]


class Box3DNet(nn.Module):
    """``forward(x)``: ``x`` (B, 2, D, H, W) float (intensities in [0, 1], prompt) → (B, 1, D, H, W) logits."""

    def __init__(self, cfg: Box3DConfig | None = None) -> None:
        from monai.networks.nets import BasicUNet

        super().__init__()
        self.cfg = cfg or Box3DConfig()
        if any(n % 16 for n in self.cfg.grid):
            raise InputContractError(f"Box3DNet's grid {self.cfg.grid} must be multiples of 16")
        self.unet = BasicUNet(spatial_dims=3, in_channels=2, out_channels=1, features=self.cfg.features,
                              norm=("instance", {"affine": True}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 2:
            raise InputContractError(f"Box3DNet takes (B, 2, D, H, W) (intensity, prompt), got {tuple(x.shape)}")
        if any(n % 16 for n in x.shape[2:]):
            raise InputContractError(f"Box3DNet's patch {tuple(x.shape[2:])} must be multiples of 16 per axis")
        return self.unet(x)
