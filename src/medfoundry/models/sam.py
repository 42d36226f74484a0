"""SAM-family promptable segmenters built from segment_anything's own modules.

- ``vit_b`` / ``vit_l`` / ``vit_h``: exactly segment_anything's architectures, so its checkpoints (SAM, MedSAM)
  load key for key.
- ``adapter=True`` with a ViT encoder: SAM-Med2D's layout — each encoder block carries an ``Adapter``
  (channel attention, then a stride-2 convolution / transposed-convolution spatial branch with a residual and
  LayerNorm) added beside the MLP, at a 256-pixel input; its checkpoints load key for key.
- ``tinyvit``: LiteMedSAM's TinyViT encoder (256-pixel input, 64 × 64 embedding), see
  :mod:`medfoundry.models.tinyvit`.
- ``lite``: medfoundry's small encoder (a timm convolutional backbone with a light feature-pyramid neck giving
  a 256-channel embedding at stride 4, LiteMedSAM-class size) in front of segment_anything's prompt encoder
  and mask decoder at a 256-pixel input.

Tensors in, tensors out: ``image_encoder(x (B, 3, S, S)) → (B, 256, S/16 or S/4, ...)``; the predictor does
the rest. Building never downloads (timm backbones are built with ``pretrained=False``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medfoundry.errors import InputContractError

VIT_SETTINGS = {
    # a tiny ViT for tests and reference comparisons (timm-style test model), not a published checkpoint
    "vit_test": {"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn_indexes": (1,)},
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
}


@dataclass
class SamConfig:
    """Architecture of a SAM-family model.

    Attributes:
        encoder: ``vit_b``/``vit_l``/``vit_h`` (segment_anything), ``tinyvit`` (LiteMedSAM) or ``lite``
            (medfoundry).
        image_size: square input side (1024 for SAM, 256 for lite models).
        backbone: timm backbone of the lite encoder.
        embed_stride: stride of the image embedding (16 for SAM's ViTs, 4 for the lite encoder).
        prompt_crop: lite models trained on box crops: the predictor crops each box with this margin
            (fraction of the box size on every side); 0 = whole-image prompting as in SAM.
        adapter: SAM-Med2D adapter layers in every ViT encoder block.
        embed_pool: lite encoder: average-pool the embedding by this factor (2: a 32 × 32 embedding at stride 8,
            four times fewer tokens for the mask decoder, so each further prompt is about 3× faster).
        propagation: a second prompt encoder + mask decoder (``propagation.*``) trained to carry a mask from
            one slice to the next (box and mask of the previous slice in, this slice's mask, possibly empty,
            out); used by :func:`medfoundry.tasks.volume.segment_volume`.
    """

    encoder: str = "vit_b"
    image_size: int = 1024
    backbone: str = "resnet18"
    embed_stride: int = 16
    prompt_crop: float = 0.0
    adapter: bool = False
    embed_pool: int = 1
    propagation: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LiteEncoder(nn.Module):
    """timm backbone (features at strides 4–32) + feature-pyramid neck → (B, 256, S/4, S/4), average-pooled
    by ``pool`` (no parameters, so the same weights serve every pooling)."""

    def __init__(self, backbone: str, image_size: int, out_chans: int = 256, pool: int = 1) -> None:
        super().__init__()
        import timm

        self.img_size = image_size
        self.pool = pool
        self.body = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
        chans = self.body.feature_info.channels()
        self.lateral = nn.ModuleList([nn.Conv2d(c, out_chans, 1) for c in chans])
        self.smooth = nn.Sequential(
            nn.Conv2d(out_chans, out_chans, 3, padding=1, groups=out_chans, bias=False),
            nn.GroupNorm(32, out_chans), nn.GELU(), nn.Conv2d(out_chans, out_chans, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.body(x)
        top = self.lateral[-1](feats[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1]), strict=True):
            top = lateral(f) + F.interpolate(top, size=f.shape[-2:], mode="bilinear", align_corners=False)
        out = self.smooth(top) + top
        return F.avg_pool2d(out, self.pool) if self.pool > 1 else out


class AdapterLayer(nn.Module):
    """SAM-Med2D's encoder adapter on (B, H, W, C) tokens: channel gating from the pooled tokens, a spatial
    branch (3×3 stride-2 convolution, ReLU, 4×4 stride-2 transposed convolution, ReLU) with a residual, then
    LayerNorm. Module names follow the published checkpoints (``norm``, ``channel``, ``spatial``)."""

    def __init__(self, dim: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.channel = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False),
                                     nn.Sigmoid())
        self.spatial = nn.Sequential(nn.Conv2d(dim, dim, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                                     nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1, bias=False), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        gated = self.channel(x.mean(dim=(2, 3)))[:, :, None, None] * x
        return self.norm((x + self.spatial(gated)).permute(0, 2, 3, 1))


def _adapter_block_class():
    from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition

    class AdapterBlock(Block):
        """segment_anything's ViT block plus SAM-Med2D's ``Adapter`` beside the MLP."""

        def __init__(self, dim: int, **kwargs: Any) -> None:
            super().__init__(dim=dim, **kwargs)
            self.Adapter = AdapterLayer(dim)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shortcut = x
            x = self.norm1(x)
            if self.window_size > 0:
                h, w = x.shape[1], x.shape[2]
                x, pad_hw = window_partition(x, self.window_size)
            x = self.attn(x)
            if self.window_size > 0:
                x = window_unpartition(x, self.window_size, pad_hw, (h, w))
            x = shortcut + x
            normed = self.norm2(x)
            return x + self.mlp(normed) + self.Adapter(normed)

    return AdapterBlock


class SamModel(nn.Module):
    """Image encoder + prompt encoder + mask decoder (segment_anything's ``Sam`` layout and key names)."""

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

        self.config = config
        size = config.image_size
        if config.encoder in VIT_SETTINGS:
            from functools import partial

            from segment_anything.modeling import ImageEncoderViT

            v = VIT_SETTINGS[config.encoder]
            window = 14 if config.encoder != "vit_test" else 4
            norm = partial(torch.nn.LayerNorm, eps=1e-6)
            self.image_encoder = ImageEncoderViT(
                depth=v["depth"], embed_dim=v["embed_dim"], img_size=size, mlp_ratio=4, norm_layer=norm,
                num_heads=v["num_heads"], patch_size=16, qkv_bias=True, use_rel_pos=True,
                global_attn_indexes=v["global_attn_indexes"], window_size=window, out_chans=256,
            )
            if config.adapter:
                block = _adapter_block_class()
                grid = size // 16
                self.image_encoder.blocks = nn.ModuleList([
                    block(dim=v["embed_dim"], num_heads=v["num_heads"], mlp_ratio=4, qkv_bias=True, norm_layer=norm,
                          use_rel_pos=True, window_size=0 if i in v["global_attn_indexes"] else window,
                          input_size=(grid, grid))
                    for i in range(v["depth"])])
        elif config.adapter:
            raise InputContractError("adapters (SAM-Med2D) need a ViT encoder")
        elif config.encoder == "lite":
            if config.embed_stride != 4 * config.embed_pool:
                raise InputContractError(f"lite encoder: embed_stride must be 4 × embed_pool ({4 * config.embed_pool})")
            self.image_encoder = LiteEncoder(config.backbone, size, pool=config.embed_pool)
        elif config.encoder == "tinyvit":
            from medfoundry.models.tinyvit import LiteMedSamEncoder

            self.image_encoder = LiteMedSamEncoder(size)
        else:
            raise InputContractError(f"unknown SAM encoder {config.encoder!r}")
        grid = size // config.embed_stride
        self.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                            input_image_size=(size, size), mask_in_chans=16)
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        )
        if config.propagation:
            self.add_propagation_head()

    def add_propagation_head(self) -> SamModel:
        """Add (or reset) the slice-propagation head as a copy of the prompt encoder and mask decoder."""
        import copy

        self.propagation = nn.ModuleDict({"prompt_encoder": copy.deepcopy(self.prompt_encoder),
                                          "mask_decoder": copy.deepcopy(self.mask_decoder)})
        self.config.propagation = True
        return self

    def _heads(self, head: str) -> tuple[nn.Module, nn.Module]:
        if head == "prompt":
            return self.prompt_encoder, self.mask_decoder
        if head == "propagation" and self.config.propagation:
            return self.propagation["prompt_encoder"], self.propagation["mask_decoder"]
        raise InputContractError(f"this model has no {head!r} head")

    # -- the segmentation backend protocol (medfoundry.predict.backend) ---------------------------------------
    @property
    def can_propagate(self) -> bool:
        """Whether the model has a slice-propagation head (box-crop models only)."""
        return self.config.prompt_crop > 0 and self.config.propagation and "propagation" in self._modules

    def prepare(self, embedding: torch.Tensor) -> Any:
        """A :class:`~medfoundry.models.sam_prepared.PreparedEmbedding` of one (1, 256, g, g) embedding: further
        prompts on it skip the decoder's image side."""
        from medfoundry.models.sam_prepared import PreparedEmbedding

        return PreparedEmbedding(embedding)

    def set_encoder_precision(self, precision: str) -> None:
        """``bf16``: the image encoder runs in bfloat16 with fused attention (:mod:`medfoundry.models.sam_fast`)."""
        from medfoundry.models.sam_fast import accelerate_encoder

        if precision != "bf16":
            raise InputContractError(f"encoder precision {precision!r}: only bf16 can be switched on")
        self.image_encoder = accelerate_encoder(self.image_encoder, bf16=True)

    def set_decoder_precision(self, precision: str) -> None:
        """Fused attention in the mask decoder(s), in float32 (``fp32``) or bfloat16 (``bf16``)."""
        from medfoundry.models.sam_fast import accelerate_decoder

        if precision not in ("fp32", "bf16"):
            raise InputContractError(f"unknown decoder precision {precision!r}: use fp32 or bf16")
        decoders = [self.mask_decoder] + ([self.propagation["mask_decoder"]] if self.config.propagation else [])
        for decoder in decoders:
            accelerate_decoder(decoder, bf16=precision == "bf16")
            if precision == "fp32":
                decoder.float()

    def weights_sha256(self) -> str:
        """sha256 of the state dict (names, dtypes, shapes and bytes), as :class:`LoadedWeights` computes it."""
        from medfoundry.registry.loading import LoadedWeights

        return LoadedWeights(self.state_dict()).sha256

    def set_embed_pool(self, pool: int) -> SamModel:
        """Lite encoders only: pool the embedding by ``pool`` from now on (1 = as trained). The same weights
        then decode on a (64 / pool)² grid: each further prompt runs about 3× faster at pool 2, at a small
        cost in boundary detail (measured by benchmarks/seg_kvasir.py --embed-pool 2)."""
        if not isinstance(self.image_encoder, LiteEncoder):
            raise InputContractError("embedding pooling applies to lite encoders only")
        if pool not in (1, 2, 4):
            raise InputContractError(f"embedding pool must be 1, 2 or 4, got {pool}")
        base_stride = self.config.embed_stride // self.config.embed_pool
        self.image_encoder.pool = pool
        self.config.embed_pool, self.config.embed_stride = pool, base_stride * pool
        grid = self.config.image_size // self.config.embed_stride
        for enc in [self.prompt_encoder] + ([self.propagation["prompt_encoder"]] if self.config.propagation else []):
            enc.image_embedding_size = (grid, grid)
            enc.mask_input_size = (4 * grid, 4 * grid)
        return self

    def check_input(self, x: torch.Tensor) -> None:
        s = self.config.image_size
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-2:] != (s, s):
            raise InputContractError(f"expected images (B, 3, {s}, {s}), got {tuple(x.shape)}")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised input → (B, 256, S/stride, S/stride) image embedding."""
        self.check_input(x)
        return self.image_encoder(x)

    def decode(
        self,
        embedding: Any,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
        head: str = "prompt",
        reference: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode B prompts on one image embedding (1, 256, g, g), a tensor or a
        :class:`~medfoundry.models.sam_prepared.PreparedEmbedding` (which keeps the decoder's image side, so
        further prompts without a mask input skip it).

        Args:
            points: (coords (B, N, 2) XY in input pixels, labels (B, N): 1 foreground, 0 background).
            boxes: (B, 4) XYXY in input pixels.
            mask_input: (B, 1, 4g, 4g) low-resolution logits of a previous prediction (``propagation`` head:
                the previous slice's mask as ±4 logits).
            head: ``prompt`` (interactive prompts) or ``propagation`` (slice-to-slice, if the model has it).
            reference: run segment_anything's own ``MaskDecoder.forward`` instead (for comparisons).
        Returns:
            low-resolution mask logits (B, K, 4g, 4g) and predicted IoU (B, K) in float32; K = 3 if multimask
            else 1.
        """
        from medfoundry.models.sam_prepared import PreparedEmbedding, decode_prepared, prepare_image_parts

        prompt_encoder, mask_decoder = self._heads(head)
        sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        dtype = mask_decoder.iou_token.weight.dtype  # bfloat16 after sam_fast.accelerate_decoder(bf16=True)
        tensor = embedding.embedding if isinstance(embedding, PreparedEmbedding) else embedding
        if reference:
            logits, iou = mask_decoder(image_embeddings=tensor.to(dtype),
                                       image_pe=prompt_encoder.get_dense_pe().to(dtype),
                                       sparse_prompt_embeddings=sparse.to(dtype),
                                       dense_prompt_embeddings=dense.to(dtype), multimask_output=multimask)
            return logits.float(), iou.float()
        if isinstance(embedding, PreparedEmbedding) and mask_input is None:
            parts = embedding.parts(prompt_encoder, mask_decoder)  # computed once per image
        else:
            parts = prepare_image_parts(prompt_encoder, mask_decoder, tensor,
                                        None if mask_input is None else dense)
        logits, iou = decode_prepared(mask_decoder, parts, sparse.to(dtype))
        sl = slice(1, None) if multimask else slice(0, 1)
        return logits[:, sl].float(), iou[:, sl].float()

    def decode_batch(
        self,
        embeddings: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
        head: str = "prompt",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`decode`, for B images with one prompt each (embeddings (B, 256, g, g), prompts batched
        along B), so a training batch is one decoder call; the same forward
        (:func:`~medfoundry.models.sam_prepared.decode_prepared`), in the dtype autocast gives it."""
        from medfoundry.models.sam_prepared import decode_prepared, prepare_image_parts

        prompt_encoder, decoder = self._heads(head)
        sparse, dense = prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        parts = prepare_image_parts(prompt_encoder, decoder, embeddings, dense)
        logits, iou = decode_prepared(decoder, parts, sparse.to(decoder.iou_token.weight.dtype))
        sl = slice(1, None) if multimask else slice(0, 1)
        return logits[:, sl], iou[:, sl]


def build_sam(arch_config: dict[str, Any]) -> SamModel:
    """Build a :class:`SamModel` from a record's ``arch_config`` (no weights, no download)."""
    unknown = set(arch_config) - set(SamConfig.__dataclass_fields__)
    if unknown:
        raise InputContractError(f"unknown SAM settings {sorted(unknown)}")
    config = SamConfig(**arch_config)
    if config.encoder in VIT_SETTINGS:
        config.embed_stride = 16
    elif config.encoder == "tinyvit":
        config.embed_stride = 4  # LiteMedSAM: 64 × 64 embedding of a 256-pixel input
    return SamModel(config)
