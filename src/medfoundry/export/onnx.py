"""ONNX export of SAM-family models: the image encoder and the prompt decoder as two separate graphs.

The decoder graph is segment_anything's own ``SamOnnxModel`` (the format its ONNX demo uses): inputs
``image_embeddings``, ``point_coords`` (1, N, 2) in model-input pixels with box corners as labels 2 and 3,
``point_labels``, ``mask_input`` (1, 1, 4g, 4g), ``has_mask_input``, ``orig_im_size``; outputs masks, scores
and low-resolution logits. :class:`OnnxSam` runs both with onnxruntime behind the ``embed``/``decode``
interface of :class:`medfoundry.models.sam.SamModel` (the segmentation backend protocol,
:class:`medfoundry.predict.backend.SegmentationBackend`), so a PromptSegmenter can use it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfoundry.errors import InputContractError, MedfoundryError


def export_sam_onnx(model: Any, folder: str | Path, opset: int = 17) -> tuple[Path, Path]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` for a :class:`SamModel` into ``folder``."""
    from segment_anything.utils.onnx import SamOnnxModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    size = model.config.image_size
    grid = size // model.config.embed_stride
    enc_path, dec_path = folder / "encoder.onnx", folder / "decoder.onnx"
    with torch.no_grad():
        torch.onnx.export(model.image_encoder, (torch.zeros(1, 3, size, size),), str(enc_path),
                          input_names=["image"], output_names=["image_embeddings"], opset_version=opset, dynamo=False)
        decoder = SamOnnxModel(model, return_single_mask=False).eval()  # eval: export restores this mode
        dummy = (torch.zeros(1, 256, grid, grid), torch.zeros(1, 2, 2), torch.tensor([[2.0, 3.0]]),
                 torch.zeros(1, 1, 4 * grid, 4 * grid), torch.tensor([0.0]), torch.tensor([float(size)] * 2))
        torch.onnx.export(decoder, dummy, str(dec_path), opset_version=opset, dynamo=False,
                          input_names=["image_embeddings", "point_coords", "point_labels", "mask_input",
                                       "has_mask_input", "orig_im_size"],
                          output_names=["masks", "iou_predictions", "low_res_masks"],
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
    model.eval()
    return enc_path, dec_path


class OnnxSam:
    """Encoder and decoder ONNX graphs run by onnxruntime, with :class:`SamModel`'s ``embed``/``decode``."""

    def __init__(self, folder: str | Path, config: Any, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MedfoundryError("the ONNX runtime path needs onnxruntime: pip install onnxruntime") from exc
        folder = Path(folder)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(folder / "encoder.onnx"), opts, providers=providers)
        self.decoder = ort.InferenceSession(str(folder / "decoder.onnx"), opts, providers=providers)
        self.config = config
        self.folder = folder

    def eval(self) -> OnnxSam:
        return self

    def to(self, device: Any) -> OnnxSam:
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.encoder.run(None, {"image": x.float().numpy()})[0])

    def prepare(self, embedding: torch.Tensor) -> torch.Tensor:
        """The decoder graph takes the embedding itself: nothing to prepare."""
        return embedding

    @property
    def can_propagate(self) -> bool:
        """The export holds the prompt decoder only."""
        return False

    def set_encoder_precision(self, precision: str) -> None:
        raise InputContractError("precision applies to PyTorch models; an ONNX export runs as it was exported")

    def set_decoder_precision(self, precision: str) -> None:
        raise InputContractError("decoder precision applies to PyTorch models, not to ONNX sessions")

    def set_embed_pool(self, pool: int) -> OnnxSam:
        raise InputContractError("embedding pooling applies to PyTorch lite models, not to ONNX sessions")

    def weights_sha256(self) -> str:
        """sha256 over the two graphs (as :class:`~medfoundry.registry.loading.LoadedWeights` hashes a folder)."""
        from medfoundry.registry.loading import LoadedWeights

        return LoadedWeights(self.folder).sha256

    def decode(self, embedding: torch.Tensor, points=None, boxes=None, mask_input=None, multimask: bool = False,
               head: str = "prompt", reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """One image embedding and B prompts → (low-res logits (B, K, 4g, 4g), IoU (B, K)). The graph is
        segment_anything's own decoder (``reference`` changes nothing); only the ``prompt`` head is exported."""
        if head != "prompt":
            raise InputContractError(f"the ONNX export has no {head!r} head")
        n = 1 if boxes is None else boxes.shape[0]
        grid = embedding.shape[-1]
        logits, ious = [], []
        for b in range(n):
            coords, labels = [], []
            if points is not None:
                coords.append(points[0][b].numpy())
                labels.append(points[1][b].numpy().astype(np.float32))
            if boxes is not None:
                coords.append(boxes[b].numpy().reshape(2, 2))
                labels.append(np.array([2.0, 3.0], np.float32))
            else:  # no box: SAM pads the points with one "not a point"
                coords.append(np.zeros((1, 2), np.float32))
                labels.append(np.array([-1.0], np.float32))
            feed = {
                "image_embeddings": embedding.numpy(),
                "point_coords": np.concatenate(coords)[None].astype(np.float32),
                "point_labels": np.concatenate(labels)[None].astype(np.float32),
                "mask_input": (mask_input[b : b + 1].numpy() if mask_input is not None
                               else np.zeros((1, 1, 4 * grid, 4 * grid), np.float32)),
                "has_mask_input": np.array([1.0 if mask_input is not None else 0.0], np.float32),
                "orig_im_size": np.array([float(self.config.image_size)] * 2, np.float32),
            }
            _, iou, low = self.decoder.run(None, feed)
            sl = slice(1, None) if multimask else slice(0, 1)
            logits.append(low[:, sl])
            ious.append(iou[:, sl])
        return torch.from_numpy(np.concatenate(logits)), torch.from_numpy(np.concatenate(ious))
