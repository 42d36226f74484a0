"""VolumeEncoderPredictor: one feature vector per CT volume from a 3D encoder (Merlin/Astra's I3ResNet-152).

The input contract lives in the record's ``arch_config`` (Merlin's own MONAI chain, reimplemented here on
:class:`~medfoundry.io.image.MedImage` geometry and tested equal to MONAI's): orientation RAS, resampling to
``spacing_mm`` (trilinear, edge values beyond the last voxel), HU ``hu_range`` scaled to 0..1 and clipped,
symmetric zero padding then a centre crop to ``size``. Arrays are in RAS order ``(X→R, Y→A, Z→S)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medfoundry.errors import InputContractError, RegistryError
from medfoundry.io.image import MedImage
from medfoundry.registry.records import ModelRecord

#: architectures this predictor runs (``record.arch``)
VOLUME_ARCHS = ("i3resnet152",)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_volume_encoder(record: ModelRecord) -> bool:
    """Whether ``record`` is a 3D volume encoder this module runs (family vision-encoder, a volume arch)."""
    return record.family == "vision-encoder" and record.arch in VOLUME_ARCHS


def to_ras(image: MedImage) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The volume as a float32 array in RAS axis order ``(X→R, Y→A, Z→S)`` and its spacing along those axes
    (mm): MONAI's ``Orientation(axcodes="RAS")`` (the nearest axis permutation and flips; oblique volumes keep
    their obliquity, as in MONAI).

    Raises:
        InputContractError: not a greyscale volume of at least two slices, spacing that is only a default, a
            NIfTI header without orientation (qform and sform codes 0), or a DICOM series whose slices are not
            evenly spaced (a missing slice: one spacing would misplace them).
    """
    import nibabel as nib

    if not image.is_volume or image.is_color:
        raise InputContractError(f"{image.source or 'image'}: a 3D encoder needs a greyscale volume, got array "
                                 f"shape {image.array.shape}")
    if min(image.spatial_shape) < 2:
        raise InputContractError(f"{image.source or 'volume'} has shape {image.spatial_shape}: a single slice is "
                                 "not a volume")
    if str(image.meta.get("spacing_source", "")).startswith("default"):
        raise InputContractError(f"{image.source or 'volume'} has no voxel spacing ({image.meta['spacing_source']})"
                                 ": use a NIfTI file, a DICOM series or an .npz with geometry")
    if image.meta.get("qform_code") == 0 and image.meta.get("sform_code") == 0:  # io.nifti records both codes
        raise InputContractError(f"{image.source or 'volume'} has no orientation (its NIfTI qform_code and sform_code "
                                 "are 0, so the axes' directions are unknown): save it with its scanner geometry")
    if image.meta.get("slice_spacing_uniform") is False:  # io.dicom.read_dicom_series marks it; refused here only
        steps = image.meta.get("slice_step_range_mm")
        seen = f" (steps from {steps[0]:g} to {steps[1]:g} mm)" if steps else ""
        raise InputContractError(f"{image.source or 'the volume'}: its slices are not evenly spaced{seen}; a slice "
                                 f"is missing? Resampling with one slice spacing ({image.spacing[0]:g} mm) would "
                                 "misplace them: give the complete series")
    ras_affine = _LPS_TO_RAS @ image.affine  # array index (Z, Y, X) → RAS mm
    ornt = nib.orientations.io_orientation(ras_affine)
    transform = nib.orientations.ornt_transform(ornt, nib.orientations.axcodes2ornt("RAS"))
    array = nib.orientations.apply_orientation(np.asarray(image.array, dtype=np.float32), transform)
    # transform[i, 0]: the output axis that input axis i goes to
    spacing = [0.0, 0.0, 0.0]
    for axis, (out_axis, _) in enumerate(transform):
        spacing[int(out_axis)] = float(image.spacing[axis])
    return np.ascontiguousarray(array), (spacing[0], spacing[1], spacing[2])


def resample(array: np.ndarray, spacing: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """Trilinear resampling of a 3D array from ``spacing`` to ``target`` mm, as MONAI's ``Spacing`` does:
    voxel 0 stays in place, the output has ``round((n - 1) * s / t) + 1`` voxels per axis, and points past the
    last voxel take its value."""
    from scipy.ndimage import affine_transform

    zoom = np.asarray(target, float) / np.asarray(spacing, float)
    shape = tuple(int(np.round((n - 1) / z)) + 1 for n, z in zip(array.shape, zoom, strict=True))
    return affine_transform(array, zoom, output_shape=shape, order=1, mode="nearest", output=np.float32)


def pad_crop(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Symmetric zero padding up to ``size`` (the extra voxel after), then a centre crop to ``size`` (MONAI's
    ``SpatialPad`` + ``CenterSpatialCrop``)."""
    pads = [(max(s - n, 0) // 2, max(s - n, 0) - max(s - n, 0) // 2) for n, s in zip(array.shape, size, strict=True)]
    array = np.pad(array, pads)
    starts = [n // 2 - s // 2 for n, s in zip(array.shape, size, strict=True)]
    return np.ascontiguousarray(array[tuple(slice(a, a + s) for a, s in zip(starts, size, strict=True))])


def preprocess_volume(image: MedImage, contract: dict[str, Any], size: Sequence[int] | None = None) -> np.ndarray:
    """Merlin's input from a CT volume in HU: ``(X, Y, Z)`` float32 in 0..1, RAS, at ``contract["spacing_mm"]``,
    padded/cropped to ``size`` (default ``contract["size"]``, 224 × 224 × 160)."""
    array, spacing = to_ras(image)
    array = resample(array, spacing, contract["spacing_mm"])
    lo, hi = contract["hu_range"]
    array = np.clip((array - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return pad_crop(array, size or contract["size"])


class VolumeEncoderPredictor:
    """A 3D encoder with its record: :meth:`embed_volumes` gives one unit-norm vector per volume."""

    def __init__(self, record: ModelRecord, model: torch.nn.Module, device: str = "cpu") -> None:
        self.record, self.model, self.device = record, model.eval().to(device), torch.device(device)
        self.contract = dict(record.arch_config)
        self.dtype = torch.float32
        self.precision_choice: Any = None  # predict.precision.PrecisionChoice: what ran and why

    def set_precision(self, precision: str, features: Any = None) -> VolumeEncoderPredictor:
        """Follow the hardware: ``auto`` runs bfloat16 where it is native (a CPU with AVX512-BF16/AMX/Arm BF16, or
        a GPU) and float32 where it would be emulated (AVX2 CPUs, where bf16 is several times slower); ``bf16``
        asks for bfloat16 (on a CPU without native support it warns and stays float32); ``fp32`` always widens
        the bfloat16 checkpoint once. ``features``: a :class:`~medfoundry.models.hardware.CpuFeatures` (default:
        this machine's). The decision is kept in ``precision_choice``."""
        from medfoundry.models.hardware import cpu_features
        from medfoundry.predict.precision import PrecisionChoice, choose_precision

        if precision not in ("auto", "fp32", "bf16"):
            raise InputContractError(f"{self.record.name} runs in auto, fp32 or bf16, not {precision!r}")
        if self.device.type != "cpu":
            choice = PrecisionChoice("fp32" if precision == "fp32" else "bf16", f"{precision} on {self.device.type}")
        else:
            features = features or cpu_features()
            if precision == "auto" and features.native_bf16:
                choice = PrecisionChoice("bf16", f"auto: bfloat16 is native on this CPU ({features.model})")
            else:
                choice = choose_precision("fp32" if precision == "auto" else precision, features)
                if precision == "auto":
                    choice = PrecisionChoice("fp32", f"auto: bfloat16 would be emulated on this CPU "
                                                     f"({features.model or 'unknown'}, {features.capability})")
        self.precision_choice = choice
        self.dtype = torch.bfloat16 if choice.precision == "bf16" else torch.float32
        self.model.to(self.dtype)
        return self

    @torch.inference_mode()
    def features(self, volumes: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(B, X, Y, Z)`` preprocessed volumes → ``(B, 2048)`` float32 features (not normalised)."""
        x = torch.as_tensor(np.asarray(volumes, np.float32))[:, None].to(self.device, self.dtype)
        model: Any = self.model  # a MerlinImageEncoder (typed loosely: the module attribute is an nn.Module)
        return model.features(x).float().cpu().numpy()

    def embed_volumes(self, images: Sequence[MedImage], *, progress: bool = False,
                      normalise: bool = True) -> np.ndarray:
        """One ``(N, 2048)`` float32 row per CT volume (unit norm unless ``normalise=False``)."""
        from rich.progress import track

        inputs = [preprocess_volume(image, self.contract) for image in images]  # every input checked first
        rows = [self.features(x[None])[0]
                for x in track(inputs, description="embedding volumes", disable=not progress or len(inputs) < 2)]
        out = np.stack(rows) if rows else np.zeros((0, int(self.contract["feature_dim"])), np.float32)
        if normalise:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.astype(np.float32)


def load_volume_encoder(record: ModelRecord, weights: Any, device: str = "cpu") -> VolumeEncoderPredictor:
    """Build the record's network and load its checkpoint with ``strict=True`` (float32 parameters)."""
    from medfoundry.models.merlin import I3ResNet, strip_prefix
    from medfoundry.registry.loading import load_state_dict

    if not is_volume_encoder(record):
        raise RegistryError(f"{record.name} ({record.family}, {record.arch}) is not a 3D volume encoder")
    state = strip_prefix(load_state_dict(weights), (str(record.arch_config.get("state_dict_prefix", "")),
                                                     "encode_image.i3_resnet."))
    model = I3ResNet()
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise RegistryError(f"{record.name}: the checkpoint does not fit {record.arch}: {str(exc)[:300]}") from exc
    return VolumeEncoderPredictor(record, model, device)


def open_volume_encoder(model: str, weights: Any = None, device: str = "cpu") -> VolumeEncoderPredictor:
    """Resolve ``--model``/``--weights`` through the registry and return a ready volume encoder."""
    from medfoundry.registry.loading import fetch_weights

    record, resolved = fetch_weights(model, weights)
    return load_volume_encoder(record, resolved, device)
