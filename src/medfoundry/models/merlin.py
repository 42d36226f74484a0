"""Merlin's 3D CT image encoder: an I3D-inflated ResNet-152 (tensors in, tensors out; no I/O).

Merlin (Blankemeier et al., 2024) inflates torchvision's ImageNet ResNet-152 to 3D ("center" inflation: each
2D kernel becomes a 3D kernel over slices, the first convolution 3 × 7 × 7 with stride (1, 2, 2)). The
parameter names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``
...), so Merlin's and Astra's checkpoints load with ``strict=True``.

Input: ``(B, 1, X, Y, Z)`` float, the volume in RAS order (X to the patient's right... as MONAI's
``Orientation("RAS")`` leaves it: axis 0 runs towards R, axis 1 towards A, axis 2 towards S), intensities
scaled to 0..1. The network works on ``(B, 3, Z, X, Y)`` (slices first, the grey channel repeated three times)
and returns ``(B, 2048, Z/16, X/32, Y/32)``; :meth:`I3ResNet.features` averages that map to ``(B, 2048)``.
Any size whose sides survive the five halvings (at least 32 in X and Y, 16 in Z) is accepted.
"""

from __future__ import annotations

import torch
from torch import nn

#: blocks per stage of ResNet-152
RESNET152_LAYERS = (3, 8, 36, 3)
FEATURE_DIM = 2048


class Bottleneck3d(nn.Module):
    """ResNet v1.5 bottleneck in 3D (1×1×1 → 3×3×3 with the stride → 1×1×1, 4× expansion)."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, project: bool = False) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv3d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_ch)
        self.relu = nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, stride=stride, bias=False),
                                         nn.BatchNorm3d(out_ch)) if project else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)


class I3ResNet(nn.Module):
    """Inflated 3D ResNet (ResNet-152 by default), Merlin's image encoder without its heads."""

    def __init__(self, layers: tuple[int, ...] = RESNET152_LAYERS) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        in_ch = 64
        for i, (blocks, width) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
            stride = 1 if i == 0 else 2
            stage = [Bottleneck3d(in_ch, width, stride, project=True)]
            in_ch = width * Bottleneck3d.expansion
            stage += [Bottleneck3d(in_ch, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, X, Y, Z)`` RAS volume in 0..1 → last feature map ``(B, 2048, Z/16, X/32, Y/32)``."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, X, Y, Z) volume, got {tuple(x.shape)}")
        x = x.permute(0, 1, 4, 2, 3).expand(-1, 3, -1, -1, -1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, X, Y, Z)`` → ``(B, 2048)``: the global average of the last feature map (Merlin's image
        feature before its projection heads)."""
        return self.forward(x).float().mean(dim=(2, 3, 4))


def strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keep only the encoder's tensors: drop the first of ``prefixes`` that some keys carry (Astra's
    ``visual_encoder.model.encode_image.i3_resnet.``, Merlin's ``encode_image.i3_resnet.``) and any heads."""
    for prefix in prefixes:
        if prefix and any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    return {k: v for k, v in state.items() if not k.startswith(("classifier.", "contrastive_head."))}
