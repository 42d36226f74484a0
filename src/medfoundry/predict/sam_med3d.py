"""SamMed3DSegmenter: point-prompted 3D segmentation of a whole volume with SAM-Med3D.

The input chain is SAM-Med3D's own (``utils/infer_utils.data_preprocess`` with TorchIO), reimplemented on
:class:`~medfoundry.io.image.MedImage` geometry and tested equal to TorchIO's transforms:

1. ``tio.Resample(1.5)``: linear resampling to 1.5 mm isotropic on a grid that keeps the volume's centre and
   has ``floor(n · spacing / 1.5)`` voxels per axis (edge values up to half a voxel beyond the border);
2. ``tio.ToCanonical()``: axes to RAS, array ``(X→R, Y→A, Z→S)``;
3. ``tio.CropOrPad(128³, mask=the prompt)``: the 128³ crop centred on the first foreground point, zero padded;
4. ``tio.ZNormalization(masking_method=x > 0)``: mean and (unbiased) standard deviation of the crop's
   positive voxels.

Points and the returned mask are in the original array's voxel indices, ``(Z, Y, X)`` as
:attr:`MedImage.array` holds them; the crop's mask (sigmoid > 0.5 of the upsampled logits) goes back to the
original grid by nearest neighbour, as the reference's ``data_postprocess`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medfoundry.errors import InputContractError
from medfoundry.io.image import MedImage
from medfoundry.registry.records import ModelRecord

#: SAM-Med3D's target spacing (mm) and crop side (voxels)
SPACING_MM = 1.5
CROP = 128


@dataclass
class Volume3DResult:
    """A 3D segmentation: ``mask`` ``(Z, Y, X)`` bool on the input grid, ``crop_logits`` the model's logits on
    the 128³ crop (RAS order), ``low_res_logits`` ``(1, 1, 32, 32, 32)`` (feed back to refine)."""

    mask: np.ndarray
    crop_logits: np.ndarray
    low_res_logits: torch.Tensor


def _orientation(image: MedImage) -> np.ndarray:
    """nibabel's transform taking the array ``(Z, Y, X)`` to RAS order (as :func:`to_ras` applies it)."""
    import nibabel as nib

    ras_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine
    return nib.orientations.ornt_transform(nib.orientations.io_orientation(ras_affine),
                                           nib.orientations.axcodes2ornt("RAS"))


def centred_grid(n: int, spacing: float, target: float) -> tuple[int, float, float]:
    """TorchIO's resampling grid along one axis: ``(m, start, step)``; output voxel ``i`` samples input index
    ``start + i * step`` (``m = floor(n * spacing / target)``, the centres of both grids coincide)."""
    m = max(int(np.floor(n * spacing / target + 1e-9)), 1) if n > 1 else 1
    step = target / spacing
    return m, (n - 1) / 2.0 - (m - 1) / 2.0 * step, step


def resample_centred(array: np.ndarray, spacing: tuple[float, ...], target: float = SPACING_MM) -> np.ndarray:
    """Linear resampling to ``target`` mm isotropic on TorchIO's centred grid (see :func:`centred_grid`)."""
    from scipy.ndimage import affine_transform

    grids = [centred_grid(n, s, target) for n, s in zip(array.shape, spacing, strict=True)]
    return affine_transform(array.astype(np.float32), [g[2] for g in grids], offset=[g[1] for g in grids],
                            output_shape=tuple(g[0] for g in grids), order=1, mode="nearest", output=np.float32)


def crop_around(array: np.ndarray, centre: np.ndarray, size: int = CROP) -> tuple[np.ndarray, np.ndarray]:
    """The ``size³`` crop starting at ``centre - size/2`` (zero outside the array) and that start."""
    start = np.asarray(centre, int) - size // 2
    out = np.zeros((size,) * 3, np.float32)
    src = [slice(max(a, 0), min(a + size, n)) for a, n in zip(start, array.shape, strict=True)]
    dst = [slice(s.start - a, s.stop - a) for s, a in zip(src, start, strict=True)]
    out[tuple(dst)] = array[tuple(src)]
    return out, start


def znormalise(crop: np.ndarray) -> np.ndarray:
    """TorchIO's ``ZNormalization(masking_method=lambda x: x > 0)`` (unbiased std; unchanged when it is 0)."""
    values = torch.from_numpy(crop)[torch.from_numpy(crop) > 0]
    if values.numel() < 2:
        return crop
    mean, std = values.mean(), values.std()
    if float(std) == 0.0:
        return crop
    return ((torch.from_numpy(crop) - mean) / std).numpy()


class SamMed3DSegmenter:
    """SAM-Med3D with its record: :meth:`segment` takes a volume and point prompts, returns a 3D mask."""

    #: whole volumes only: the segmentation flow asks for ``--propagate`` (a 3D mask) and never calls set_image
    volume_only = True
    can_propagate = False

    def __init__(self, model: Any, record: ModelRecord, device: str = "cpu") -> None:
        self.model, self.record, self.device = model.eval().to(device), record, torch.device(device)
        self.precision_choice: Any = None  # float32 (no precision probe)

    def prepare(self, image: MedImage, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """The model's input crop ``(128, 128, 128)`` (RAS, z-normalised), the points in crop indices
        ``(N, 3)`` (RAS order) and the geometry to map results back.

        Raises:
            InputContractError: not a volume with geometry, unevenly spaced slices, or points outside it.
        """
        from medfoundry.predict.volume_encoder import to_ras

        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        shape = np.asarray(image.spatial_shape if image.is_volume else (0, 0, 0))
        if not len(points) or (points < 0).any() or (points > shape - 1).any():
            raise InputContractError(f"points {points.tolist()} must be (Z, Y, X) voxel indices inside the volume "
                                     f"of shape {tuple(shape)}")
        ras, spacing = to_ras(image)  # a greyscale volume with real spacing and evenly spaced slices
        transform = _orientation(image)
        pts_ras = np.zeros_like(points)
        for axis, (out_axis, flip) in enumerate(transform):
            value = points[:, axis]
            n = image.spatial_shape[axis]
            pts_ras[:, int(out_axis)] = (n - 1 - value) if flip < 0 else value
        grids = [centred_grid(n, s, SPACING_MM) for n, s in zip(ras.shape, spacing, strict=True)]
        resampled = resample_centred(ras, spacing)
        pts_res = np.stack([(pts_ras[:, a] - grids[a][1]) / grids[a][2] for a in range(3)], axis=1)
        centre = np.clip(np.round(pts_res[0]), 0, np.asarray(resampled.shape) - 1)
        crop, start = crop_around(resampled, centre)
        geometry = {"transform": transform, "grids": grids, "start": start, "ras_shape": ras.shape,
                    "resampled_shape": resampled.shape}
        return znormalise(crop), pts_res - start, geometry

    def set_image(self, image: MedImage) -> None:
        """Refused: SAM-Med3D has no 2D image path (its :meth:`segment` takes the whole volume)."""
        raise InputContractError(self._whole_volumes())

    def predict(self, *args: Any, **kwargs: Any) -> None:
        """Refused: SAM-Med3D has no 2D prompt path (its :meth:`segment` takes the whole volume)."""
        raise InputContractError(self._whole_volumes())

    def _whole_volumes(self) -> str:
        return (f"{self.record.name} segments whole volumes from points, not 2D images: call "
                f"segmenter.segment(volume, points_zyx), or medfoundry.tasks.segmentation.segment(segmenter, volume, "
                f"points=[[x, y]], slice_index=K, propagate=True); CLI: medfoundry segment VOLUME --model "
                f"{self.record.name} --slice K --point x,y --propagate")

    @torch.no_grad()
    def segment(self, image: MedImage, points: np.ndarray, labels: np.ndarray | None = None,
                previous: torch.Tensor | None = None) -> Volume3DResult:
        """Segment the object at ``points`` (``(N, 3)`` voxel indices ``(Z, Y, X)``; the first is a foreground
        point the crop is centred on; ``labels`` 1/0, default all 1)."""
        from medfoundry.models.sam_med3d import decode

        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        labels = np.ones(len(points), int) if labels is None else np.asarray(labels).reshape(-1)
        if labels.shape != (len(points),) or labels[0] != 1:
            raise InputContractError("give one label per point, the first one foreground (1)")
        crop, pts, geometry = self.prepare(image, points)
        x = torch.from_numpy(crop)[None, None].to(self.device)
        embedding = self.model.image_encoder(x)
        low, full = decode(self.model, embedding, torch.from_numpy(pts).float()[None].to(self.device),
                           torch.from_numpy(labels)[None].to(self.device), previous)
        crop_mask = (torch.sigmoid(full) > 0.5)[0, 0].cpu().numpy()
        return Volume3DResult(self._to_original(crop_mask, image, geometry), full[0, 0].cpu().numpy(), low)

    def segment_3d(self, volume: MedImage, key_slice: int, box: np.ndarray | None,
                   points: np.ndarray | None = None, point_labels: np.ndarray | None = None) -> np.ndarray:
        """The segmentation flow's 3D entry (``medfoundry segment VOLUME --slice K --point x,y[,label]
        --propagate``): points ``(N, 2)`` XY in the pixels of slice ``key_slice`` become voxel indices
        ``(key_slice, y, x)``; returns the ``(Z, Y, X)`` bool mask of :meth:`segment`.

        Raises:
            InputContractError: a box (SAM-Med3D is point-prompted, as its inference script), no points, a key
                slice outside the volume, or a first point that is not foreground.
        """
        if box is not None or points is None or not len(points):
            raise InputContractError(f"{self.record.name} is prompted with points (--slice K --point x,y[,label], "
                                     "the first one foreground), not boxes")
        depth = volume.array.shape[0] if volume.is_volume else 0
        if not 0 <= int(key_slice) < depth:
            raise InputContractError(f"key slice {key_slice} is outside the volume's 0..{depth - 1}")
        xy = np.asarray(points, np.float64).reshape(-1, 2)
        zyx = np.column_stack([np.full(len(xy), float(key_slice)), xy[:, 1], xy[:, 0]])
        return self.segment(volume, zyx, point_labels).mask

    @staticmethod
    def _to_original(crop_mask: np.ndarray, image: MedImage, geometry: dict[str, Any]) -> np.ndarray:
        """Nearest-neighbour map of the crop's mask back to the input array ``(Z, Y, X)``."""
        import nibabel as nib

        index = []
        for axis, n in enumerate(geometry["ras_shape"]):
            _, start, step = geometry["grids"][axis]
            j = np.floor((np.arange(n) - start) / step + 0.5).astype(int) - geometry["start"][axis]
            index.append(j)
        jx, jy, jz = np.meshgrid(*index, indexing="ij")
        inside = ((jx >= 0) & (jx < CROP) & (jy >= 0) & (jy < CROP) & (jz >= 0) & (jz < CROP))
        ras_mask = np.zeros(geometry["ras_shape"], bool)
        ras_mask[inside] = crop_mask[jx[inside], jy[inside], jz[inside]]
        inverse = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                  nib.orientations.io_orientation(
                                                      np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine))
        return np.ascontiguousarray(nib.orientations.apply_orientation(ras_mask, inverse).astype(bool))


def load_sam_med3d_segmenter(record: ModelRecord, weights: Any, device: str = "cpu") -> SamMed3DSegmenter:
    """Build the record's network (``arch_config`` overrides medim's defaults) and load ``weights``."""
    from medfoundry.models.sam_med3d import load_sam_med3d

    return SamMed3DSegmenter(load_sam_med3d(weights, record.arch_config, record.name), record, device)


def open_sam_med3d(model: str = "sam-med3d-turbo", weights: Any = None, device: str = "cpu") -> SamMed3DSegmenter:
    """Resolve ``--model``/``--weights`` through the registry (weights fetched lazily) and return a segmenter."""
    from medfoundry.registry.loading import fetch_weights

    record, resolved = fetch_weights(model, weights)
    if record.arch != "sam_med3d":
        raise InputContractError(f"{record.name} is not a SAM-Med3D model")
    return load_sam_med3d_segmenter(record, resolved, device)
