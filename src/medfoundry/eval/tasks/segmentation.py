"""Box-prompted segmentation benchmarks, 2D and 3D, scored by MONAI's metrics beside the no-model baseline.

- ``segmentation-2d``: the prompt is the tight box of the true mask; baseline: the ellipse inscribed in it.
- ``segmentation-3d``: the prompt is the tight box of the true mask on its key slice (the ``dataset.key_slice``
  column, else the slice where the object is largest) only; the mask is propagated slice by slice; baseline:
  the ellipsoid inscribed in the true 3D bounding box (which knows the object's extent in z, the model does
  not).

``dataset.units: HU`` marks images whose files do not say they are CT (NIfTI) as Hounsfield units, so that
models see them through the same CT window as a DICOM series. A label map selects its object by the
``mask_value`` column; a mask stored with another orientation than its image is flipped onto the image's
voxel grid. Both run the segmentation flow the CLI runs (:func:`medfoundry.tasks.segmentation.segment`).
Predicted masks are written to ``out/predictions/<id>.png``
(2D) or ``.npz`` (3D) so the report can show them.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from medfoundry.eval.tasks import Summary, run_cases


def truth_mask(case: dict, image, mask_key: str | None = None) -> np.ndarray:
    """The case's true object as a bool array on ``image``'s voxel grid (spatial axes only)."""
    from medfoundry.errors import InputContractError
    from medfoundry.io import read_image

    mask_image = read_image(case["mask"], key=mask_key)
    values = mask_image.array[..., 0] if mask_image.is_color else mask_image.array
    truth = values == case["mask_value"] if "mask_value" in case else values > 0
    if image.is_volume and mask_image.orientation != image.orientation:
        for i, (a, b) in enumerate(zip(mask_image.orientation, image.orientation, strict=True)):
            if a != b:  # opposite directions along the same axis (X, Y, Z ↔ array axes 2, 1, 0)
                truth = np.flip(truth, axis=2 - i)
    if truth.shape != image.spatial_shape:
        raise InputContractError(f"{case['mask']}: mask shape {truth.shape} differs from image {image.spatial_shape}")
    if not truth.any():
        raise InputContractError(f"{case['mask']}: the mask is empty (value {case.get('mask_value', '>0')})")
    return np.ascontiguousarray(truth)


def _save_prediction(folder: Path, case_id: str, mask: np.ndarray) -> str:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    case_id = re.sub(r"[^\w.-]", "_", case_id)
    if mask.ndim == 2:
        path = folder / f"{case_id}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    else:
        path = folder / f"{case_id}.npz"
        np.savez_compressed(path, mask=np.packbits(mask), shape=np.array(mask.shape))
    return path.name


def load_prediction(path: Path) -> np.ndarray:
    """A mask written by the benchmark run (PNG for 2D, packed bits in ``.npz`` for 3D)."""
    if path.suffix == ".png":
        from PIL import Image

        return np.asarray(Image.open(path)) > 0
    with np.load(path) as z:
        shape = tuple(int(v) for v in z["shape"])
        return np.unpackbits(z["mask"])[: int(np.prod(shape))].reshape(shape).astype(bool)


def predict(spec, cases, model, weights, cache_path, progress):
    from medfoundry.errors import InputContractError
    from medfoundry.eval.baselines import ellipse_in_box, ellipsoid_in_box
    from medfoundry.eval.metrics import segmentation_case
    from medfoundry.io import read_image
    from medfoundry.predict.boxes import mask_box
    from medfoundry.predict.segment import open_segmenter
    from medfoundry.tasks.measure import measure
    from medfoundry.tasks.segmentation import segment

    segmenter = open_segmenter(model, weights)
    predictions = Path(cache_path).parent / "predictions"

    def predict_one(case: dict) -> dict:
        image = read_image(case["image"], key=spec.dataset.image_key)
        if spec.dataset.units == "HU" and image.units != "HU":  # NIfTI CT: HU windows, as a DICOM series gets
            image = replace(image, units="HU", modality="CT")
        truth = truth_mask(case, image, spec.dataset.mask_key)
        if spec.task == "segmentation-3d":
            key = case["key_slice"] if "key_slice" in case else int(truth.sum(axis=(1, 2)).argmax())
            if not 0 <= key < truth.shape[0] or not truth[key].any():
                raise InputContractError(f"{case['id']}: key slice {key} holds no object "
                                         f"(slices 0..{truth.shape[0] - 1})")
            box = mask_box(truth[key])
            outcome = segment(segmenter, image, box[None], slice_index=key, propagate=True)
            assert outcome.volume is not None  # propagated
            pred, baseline = outcome.mask, ellipsoid_in_box(truth)
            z = np.nonzero(truth.any(axis=(1, 2)))[0]
            extra = {"key_slice": key, "slices_pred": [outcome.volume.first, outcome.volume.last],
                     "slices_true": [int(z[0]), int(z[-1])], "volume_ml_pred": outcome.measurement.volume_ml,
                     "volume_ml_true": measure(truth, image).volume_ml}
        else:
            box = mask_box(truth)
            pred, baseline = segment(segmenter, image, box[None]).mask, ellipse_in_box(truth.shape, box)
            extra = {}
        return {"box": box.tolist(), "model": segmentation_case(pred, truth, image.spacing),
                "baseline": segmentation_case(baseline, truth, image.spacing),
                "prediction": _save_prediction(predictions, case["id"], pred), **extra}

    return run_cases(spec.name, cases, cache_path, predict_one, progress, model=segmenter), segmenter.record


def summarise(spec, results: list[dict]) -> Summary:
    def mean_of(values: np.ndarray):
        return lambda idx: float(np.nanmean(values[idx]))

    metrics, baseline = {}, {}
    for name in spec.metrics:
        metrics[name] = mean_of(np.array([r["model"][name] for r in results], dtype=np.float64))
        baseline[name] = mean_of(np.array([r["baseline"][name] for r in results], dtype=np.float64))
    name = "ellipsoid inscribed in the true 3D box" if spec.task == "segmentation-3d" else \
        "ellipse inscribed in the prompt box"
    return Summary(results, metrics, baseline, name)
