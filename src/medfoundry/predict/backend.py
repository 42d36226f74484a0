"""What a :class:`~medfoundry.predict.segment.PromptSegmenter` needs from a SAM-family model.

Two implementations: :class:`medfoundry.models.sam.SamModel` (PyTorch) and
:class:`medfoundry.export.onnx.OnnxSam` (the encoder and decoder exported by ``medfoundry models export-onnx``,
run by onnxruntime). The segmenter calls only these members, so it never asks which one it holds; a backend
that cannot do something (ONNX and precision changes) raises :class:`~medfoundry.errors.InputContractError`
saying so. Coordinates are in model-input pixels here; the segmenter maps them from and to the image.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class SegmentationBackend(Protocol):
    """A promptable segmentation model: image encoder + prompt decoder."""

    #: the architecture (a :class:`~medfoundry.models.sam.SamConfig`): ``image_size``, ``embed_stride``,
    #: ``embed_pool``, ``prompt_crop`` (> 0: box-crop model), ``propagation``
    config: Any

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised input → (B, 256, g, g) float32 image embedding."""
        ...

    def prepare(self, embedding: torch.Tensor) -> Any:
        """What the embedding cache keeps for one (1, 256, g, g) embedding and passes back to :meth:`decode`
        (PyTorch: a :class:`~medfoundry.models.sam_prepared.PreparedEmbedding`; ONNX: the tensor)."""
        ...

    def decode(self, embedding: Any, points: tuple[torch.Tensor, torch.Tensor] | None = None,
               boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None,
               multimask: bool = False, head: str = "prompt", reference: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """B prompts on one prepared embedding → (low-resolution logits (B, K, 4g, 4g), IoU (B, K)), float32.
        ``points``: (coords (B, N, 2) XY, labels (B, N)); ``boxes`` (B, 4) XYXY; ``mask_input``
        (B, 1, 4g, 4g); ``head``: ``prompt`` or ``propagation``; ``reference``: segment_anything's own
        decoder forward."""
        ...

    @property
    def can_propagate(self) -> bool:
        """Whether the model has a trained slice-propagation head."""
        ...

    def set_encoder_precision(self, precision: str) -> None:
        """``bf16``: run the image encoder in bfloat16 from now on."""
        ...

    def set_decoder_precision(self, precision: str) -> None:
        """``fp32`` (fused attention) or ``bf16`` mask decoder(s)."""
        ...

    def set_embed_pool(self, pool: int) -> Any:
        """Average-pool the embedding by ``pool`` from now on (lite encoders)."""
        ...

    def weights_sha256(self) -> str:
        """sha256 of the weights this backend runs (for cache keys when no weights file is known)."""
        ...

    def eval(self) -> Any:
        ...

    def to(self, device: Any) -> Any:
        ...
