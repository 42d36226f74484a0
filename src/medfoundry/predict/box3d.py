"""Box3DSegmenter: a key-slice box → the object's 3D mask, in one pass of :class:`~medfoundry.models.box3d.Box3DNet`.

The input contract (held in the record's ``arch_config["contract"]``, used alike by training and inference):

- **Patch geometry.** The patch is centred on the box's centre on the key slice. In-plane it spans ``context`` ×
  the box's longer side (in mm) on both axes; along z it spans ``depth_context`` × that side, centred on the key
  slice (objects may be longer along the body axis than across it). It is sampled on the model's ``grid``
  ``(D, H, W)`` by trilinear interpolation (``grid_sample`` with ``align_corners=True``). Beyond the volume's
  ends, ``padding``: ``"border"`` (the end slice repeated; medfoundry-box3d-tiny, chosen on its validation
  patients) or ``"reflection"`` (mirrored; the default of records that do not say).
- **Intensities.** CT in HU: clipped to ``hu_window`` and scaled to [0, 1]. Anything else (already windowed
  8-bit CT, MR): the volume's ``percentiles`` scaled to [0, 1].
- **Test-time mirroring** (``flips``): the logits are the mean over the patch as it is and mirrored along
  each axis and all three (:data:`FLIPS`, one batch of five).
- **Prompt channel.** 1 inside the box on the patch's slices within half a source slice of the key slice
  (the two central slices at least), 0 elsewhere.

The patch's logits go back to the volume's voxels by trilinear interpolation of the same coordinates; the mask
is ``sigmoid > threshold``, then the 3D connected part that meets the key-slice box (the largest one if none
does). Voxels outside the patch are background.

Coordinates: boxes are XYXY pixel edges of the key slice (x1 = last column + 1), arrays ``(Z, Y, X)``,
spacing ``(dz, dy, dx)`` mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from medfoundry.errors import InputContractError, WeightsError
from medfoundry.io.image import MedImage
from medfoundry.registry.records import ModelRecord

#: the mirrorings of test-time augmentation (dims of a (C, D, H, W) patch): none, each axis, all three
FLIPS: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (3,), (1, 2, 3))


@dataclass(frozen=True)
class Box3DContract:
    """How a volume and a key-slice box become the model's patch (see the module docstring)."""

    grid: tuple[int, int, int] = (32, 64, 64)
    context: float = 1.6
    depth_context: float = 3.6
    hu_window: tuple[float, float] = (-160.0, 240.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    threshold: float = 0.5
    flips: bool = False
    padding: str = "reflection"

    @classmethod
    def from_record(cls, record: ModelRecord) -> Box3DContract:
        """The contract of a ``box3d`` record (its ``arch_config["contract"]`` and ``grid``)."""
        c = dict(record.arch_config.get("contract", {}))
        grid: Any = record.arch_config.get("grid") or c.get("grid") or cls.grid
        d = cls()
        return cls(grid=(int(grid[0]), int(grid[1]), int(grid[2])),
                   context=float(c.get("context", d.context)),
                   depth_context=float(c.get("depth_context", d.depth_context)),
                   hu_window=_pair(c.get("hu_window", d.hu_window)),
                   percentiles=_pair(c.get("percentiles", d.percentiles)),
                   threshold=float(c.get("threshold", d.threshold)),
                   flips=bool(c.get("flips", d.flips)), padding=str(c.get("padding", d.padding)))


def _pair(values: Any) -> tuple[float, float]:
    lo, hi = (float(v) for v in values)
    return lo, hi


def normalised(volume: MedImage, contract: Box3DContract) -> np.ndarray:
    """(Z, Y, X) float32 in [0, 1]: HU through the contract's window, other units through the volume's
    percentiles."""
    a = volume.array.astype(np.float32)
    if volume.units == "HU":
        lo, hi = contract.hu_window
    else:
        lo, hi = (float(v) for v in np.percentile(a, contract.percentiles))
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def patch_coordinates(shape: tuple[int, int, int], spacing: tuple[float, ...], key: float, box: np.ndarray,
                      contract: Box3DContract, context_scale: float = 1.0) -> torch.Tensor:
    """(D, H, W, 3) ``grid_sample`` coordinates (x, y, z in [-1, 1], ``align_corners=True``) of the patch's voxels
    in a volume of ``shape`` (Z, Y, X) with ``spacing`` (mm), around ``box`` (XYXY pixel edges) on slice ``key``.
    ``context_scale`` widens or narrows the patch (training augmentation; 1 at inference)."""
    depth, height, width = shape
    if depth < 2:
        raise InputContractError("a volume of one slice has no 3D extent: segment it as a 2D image")
    dz, dy, dx = (float(s) for s in spacing)
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max((x1 - x0) * dx, (y1 - y0) * dy)
    if side <= 0:
        raise InputContractError(f"the box {list(box)} is empty")
    half_xy = contract.context * context_scale * side / 2
    half_z = contract.depth_context * context_scale * side / 2
    d, h, w = contract.grid
    u = [torch.linspace(-1.0, 1.0, n, dtype=torch.float64) for n in (d, h, w)]
    cz, cy, cx = float(key), (y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5  # pixel centres at integer indices
    zi = cz + u[0] * half_z / dz
    yi = cy + u[1] * half_xy / dy
    xi = cx + u[2] * half_xy / dx
    gz, gy, gx = torch.meshgrid(zi, yi, xi, indexing="ij")
    norm: list[torch.Tensor] = [2 * g / max(n - 1, 1) - 1 for g, n in ((gx, width), (gy, height), (gz, depth))]
    return torch.stack(norm, dim=-1).float()


def prompt_channel(coords: torch.Tensor, shape: tuple[int, int, int], key: float, box: np.ndarray) -> torch.Tensor:
    """(D, H, W) float: 1 where a patch voxel lies inside ``box`` and within half a slice of ``key`` (the two
    central patch slices when the patch's z step is longer than a source slice)."""
    depth, height, width = shape
    x = (coords[..., 0] + 1) / 2 * (width - 1)
    y = (coords[..., 1] + 1) / 2 * (height - 1)
    z = (coords[..., 2] + 1) / 2 * (depth - 1)
    x0, y0, x1, y1 = (float(v) for v in box)
    inside = (x >= x0 - 0.5) & (x <= x1 - 0.5) & (y >= y0 - 0.5) & (y <= y1 - 0.5)
    dzs = (z[:, 0, 0] - key).abs()
    near = dzs <= max(0.5, float(torch.sort(dzs).values[1]))  # at least the two central slices
    return (inside & near[:, None, None]).float()


def sample(array: np.ndarray | torch.Tensor, coords: torch.Tensor, mode: str = "bilinear",
           padding: str = "reflection") -> torch.Tensor:
    """(D, H, W) values of the (Z, Y, X) ``array`` at ``coords`` (see :func:`patch_coordinates`); beyond the
    array's ends ``padding``: ``"reflection"`` (mirrored) or ``"border"`` (the end slice repeated)."""
    t = torch.as_tensor(array, dtype=torch.float32)[None, None]
    return F.grid_sample(t, coords[None], mode=mode, padding_mode=padding, align_corners=True)[0, 0]


def patch_input(values: np.ndarray, shape: tuple[int, int, int], spacing: tuple[float, ...], key: float,
                box: np.ndarray, contract: Box3DContract, context_scale: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The model input (2, D, H, W) (normalised intensities, prompt) from normalised ``values`` (Z, Y, X), and the
    patch coordinates (D, H, W, 3)."""
    coords = patch_coordinates(shape, spacing, key, box, contract, context_scale)
    return torch.stack([sample(values, coords, padding=contract.padding), prompt_channel(coords, shape, key, box)]), \
        coords


def logits_to_volume(logits: torch.Tensor, shape: tuple[int, int, int], spacing: tuple[float, ...], key: float,
                     box: np.ndarray, contract: Box3DContract) -> np.ndarray:
    """(Z, Y, X) float32 logits on the volume's voxels from the patch's (D, H, W) ``logits`` (``-inf`` outside
    the patch)."""
    depth, height, width = shape
    d, h, w = contract.grid
    corners = patch_coordinates(shape, spacing, key, box, contract)
    lo = [(corners[..., a].min().item() + 1) / 2 * (n - 1) for a, n in enumerate((width, height, depth))]
    hi = [(corners[..., a].max().item() + 1) / 2 * (n - 1) for a, n in enumerate((width, height, depth))]
    idx = [np.arange(max(int(np.ceil(lo[a])), 0), min(int(np.floor(hi[a])), n - 1) + 1)
           for a, n in enumerate((width, height, depth))]
    out = np.full(shape, -np.inf, dtype=np.float32)
    if any(len(i) == 0 for i in idx):
        return out
    # voxel index → patch grid coordinate in [-1, 1] (inverse of patch_coordinates' affine map, per axis)
    maps = []
    for a, n in enumerate((width, height, depth)):
        first, last = corners[..., a].min().item(), corners[..., a].max().item()
        g = 2 * torch.as_tensor(idx[a], dtype=torch.float64) / max(n - 1, 1) - 1
        maps.append(((g - first) / max(last - first, 1e-12) * 2 - 1).float())
    gz, gy, gx = torch.meshgrid(maps[2], maps[1], maps[0], indexing="ij")
    grid = torch.stack([gx, gy, gz], dim=-1)[None]
    values = F.grid_sample(logits[None, None].float(), grid, mode="bilinear", padding_mode="border",
                           align_corners=True)[0, 0]
    out[np.ix_(idx[2], idx[1], idx[0])] = values.numpy()
    del d, h, w
    return out


def keep_prompted_part(mask: np.ndarray, key: int, box: np.ndarray) -> np.ndarray:
    """The 3D connected part of ``mask`` that meets ``box`` on slice ``key`` most (the largest part if none does)."""
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    x0, y0, x1, y1 = np.round(np.asarray(box, dtype=np.float64)).astype(int)
    hits = np.bincount(labels[key, max(y0, 0):y1, max(x0, 0):x1].ravel(), minlength=n + 1)[1:]
    best = int(hits.argmax()) + 1 if hits.max() > 0 else int(np.bincount(labels.ravel())[1:].argmax()) + 1
    return labels == best


class Box3DSegmenter:
    """A :class:`Box3DNet` with its record and contract; 3D only (``volume_only``): the segmentation flow calls
    :meth:`segment_3d`."""

    volume_only = True
    can_propagate = False
    precision_choice = None

    def __init__(self, model: torch.nn.Module, record: ModelRecord, device: str = "cpu") -> None:
        self.loaded_weights: Any = None  # set by load_box3d (registry.loading.LoadedWeights)
        self.model = model.eval().to(device)
        self.record = record
        self.device = device
        self.contract = Box3DContract.from_record(record)

    @torch.inference_mode()
    def predict_logits(self, volume: MedImage, key_slice: int, box: np.ndarray) -> np.ndarray:
        """(Z, Y, X) float32 logits of the object prompted by ``box`` (XYXY pixel edges) on ``key_slice``."""
        shape = tuple(volume.array.shape[:3])
        x, _ = patch_input(normalised(volume, self.contract), shape, volume.spacing, key_slice, box, self.contract)
        if self.contract.flips:  # test-time mirroring: the mean logits over the patch mirrored along each axis set
            batch = torch.stack([x.flip(dims) for dims in FLIPS])
            out = self.model(batch.to(self.device))[:, 0].float().cpu()
            logits = torch.stack([o.flip([d - 1 for d in dims]) for o, dims in zip(out, FLIPS, strict=True)]).mean(0)
        else:
            logits = self.model(x[None].to(self.device))[0, 0].float().cpu()
        return logits_to_volume(logits, shape, volume.spacing, key_slice, box, self.contract)

    def segment_3d(self, volume: MedImage, key_slice: int, box: np.ndarray | None, points: Any = None,
                   point_labels: Any = None) -> np.ndarray:
        """(Z, Y, X) bool mask of the object ``box`` (XYXY pixel edges of ``key_slice``) marks.

        Raises:
            InputContractError: not a greyscale volume of at least two slices, no box, points given (the model
                takes one box), the key slice or the box outside the volume.
        """
        if not volume.is_volume or volume.is_color:
            raise InputContractError(f"{self.record.name} segments greyscale volumes")
        depth, height, width = volume.array.shape[:3]
        if depth < 2:
            raise InputContractError("a volume of one slice has no 3D extent: segment it as a 2D image")
        if points is not None and len(points):
            raise InputContractError(f"{self.record.name} is prompted by one box on the key slice, not by points")
        if box is None:
            raise InputContractError(f"{self.record.name} needs a box on the key slice (--box x0,y0,x1,y1)")
        if not 0 <= key_slice < depth:
            raise InputContractError(f"key slice {key_slice} is outside the volume's 0..{depth - 1}")
        box = np.asarray(box, dtype=np.float64).reshape(4)
        if not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
            raise InputContractError(f"the box {box.tolist()} is not x0 < x1, y0 < y1")
        if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
            raise InputContractError(f"the box {box.tolist()} lies outside the {width} x {height} slice")
        mask = self.predict_logits(volume, key_slice, box) > np.log(self.contract.threshold /
                                                                    (1 - self.contract.threshold))
        return keep_prompted_part(mask, key_slice, box)


def load_box3d(record: ModelRecord, resolved: Any, device: str = "cpu") -> Box3DSegmenter:
    """The segmenter of a ``box3d`` record from its resolved weights (a file, folder or state dict).

    Raises:
        WeightsError: the weights do not fit the record's network (missing, unexpected or mis-shaped tensors).
    """
    from medfoundry.models.box3d import Box3DConfig, Box3DNet
    from medfoundry.registry.loading import LoadedWeights, load_state_dict

    if record.arch != "box3d":
        raise InputContractError(f"{record.name} is not a Box3DNet model (arch {record.arch!r})")
    net = Box3DNet(Box3DConfig.from_dict({k: v for k, v in record.arch_config.items() if k != "contract"}))
    try:
        net.load_state_dict(load_state_dict(resolved))
    except RuntimeError as exc:  # missing, unexpected or mis-shaped tensors
        raise WeightsError(f"{record.name}: the weights do not fit its Box3DNet: {exc}") from exc
    segmenter = Box3DSegmenter(net, record, device)
    segmenter.loaded_weights = LoadedWeights(resolved)  # what provenance and evaluation caches record
    return segmenter
