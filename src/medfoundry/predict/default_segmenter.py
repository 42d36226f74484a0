"""medfoundry's default segmenter: the embedded 2D model for images, slices and points, and the embedded 3D
model for one box on a key slice of a volume.

Measured on patients neither model trained on or was tuned on (``tools/run_box3d_benchmarks.sh``, model card
of ``medfoundry-box3d-tiny``), one box on the key slice gives a better 3D mask in one pass of
``medfoundry-box3d-tiny`` than slice-by-slice propagation with ``medfoundry-sam-lite``, and in seconds instead of
tens of seconds. Box3d takes exactly one box and a volume of at least two slices; every other prompt (points,
several boxes, a one-slice volume, a colour volume, the propagation head) goes to the 2D model, whose
propagation accepts them. :func:`route` states the rule; :class:`DefaultSegmenter` applies it, and the
segmentation flow (:func:`medfoundry.tasks.segmentation.segment`) asks it through :meth:`volume_segmenter`.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from medfoundry.io.image import MedImage

#: the 2D default: images, slices, points, and propagation where box3d does not apply
DEFAULT_PLANAR_MODEL = "medfoundry-sam-lite"
#: the 3D default for one box on a key slice of a volume
DEFAULT_VOLUME_MODEL = "medfoundry-box3d-tiny"


def route(image: MedImage, box: np.ndarray | None, points: np.ndarray | None, use_head: bool = False) -> str:
    """Which default answers a 3D prompt: ``"volume"`` (box3d) for exactly one box and no points on a greyscale
    volume of at least two slices without ``use_head``; ``"planar"`` (the 2D model's propagation) otherwise.

    Args:
        image: the volume, (Z, Y, X).
        box: (B, 4) or (4,) XYXY boxes on the key slice, or None.
        points: (N, 2) points on the key slice, or None.
        use_head: the 2D model's propagation head was asked for.
    """
    one_box = box is not None and np.asarray(box).reshape(-1, 4).shape[0] == 1
    no_points = points is None or len(points) == 0
    volume = image.is_volume and not image.is_color and image.array.shape[0] >= 2
    return "volume" if one_box and no_points and volume and not use_head else "planar"


class DefaultSegmenter:
    """The planar segmenter (every 2D call is its own: ``set_image``, ``predict``, decoder precision, caches) with
    a 3D model beside it for the prompts :func:`route` sends there; the 3D model is loaded on first use.

    ``planar``: a :class:`~medfoundry.predict.segment.PromptSegmenter`; ``volume_model``: a registry name of a
    model with ``segment_3d`` (default :data:`DEFAULT_VOLUME_MODEL`).
    """

    def __init__(self, planar: Any, volume_model: str = DEFAULT_VOLUME_MODEL, device: str = "cpu") -> None:
        self.planar, self.volume_model_name, self.device = planar, volume_model, device
        self._volume: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # everything 2D is the planar model's
        if name in ("planar", "_volume", "_lock", "volume_model_name", "device"):
            raise AttributeError(name)
        return getattr(self.planar, name)

    @property
    def volume(self) -> Any:
        """The 3D model (loaded once, offline: it ships in the package)."""
        with self._lock:
            if self._volume is None:
                from medfoundry.predict.segment import open_segmenter

                self._volume = open_segmenter(self.volume_model_name, device=self.device)
            return self._volume

    def volume_segmenter(self, image: MedImage, box: np.ndarray | None, points: np.ndarray | None,
                         use_head: bool = False) -> Any:
        """The segmenter that answers this 3D prompt: the 3D model or the planar one (see :func:`route`)."""
        return self.volume if route(image, box, points, use_head) == "volume" else self.planar


def open_default_segmenter(device: str = "cpu", **planar_options: Any) -> DefaultSegmenter:
    """The default segmenter: :data:`DEFAULT_PLANAR_MODEL` opened with ``planar_options`` (``precision``,
    ``embed_pool``, ``tta``, ...; see :func:`~medfoundry.predict.segment.open_segmenter`) and
    :data:`DEFAULT_VOLUME_MODEL` for one box on a key slice."""
    from medfoundry.predict.segment import open_segmenter

    return DefaultSegmenter(open_segmenter(DEFAULT_PLANAR_MODEL, device=device, **planar_options), device=device)
