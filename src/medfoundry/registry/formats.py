"""Published checkpoint formats recognised as they are, by sniffing the files (``--model local-dir:PATH``,
``--weights PATH``).

Looked for, in this order:

1. a medfoundry checkpoint folder: ``medfoundry.json`` beside the weights (the record travels with them);
2. an open_clip folder: ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``, as open_clip itself reads
   a ``local-dir:``) beside ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``;
3. a Hugging Face model folder: ``config.json`` whose ``model_type`` is ``clip`` (CLIPModel), ``sam``
   (SamModel), ``llava`` or an original-LLaVA type, or ``dinov2``; its ``preprocessor_config.json`` gives the
   input contract where it has one;
4. a SAM-family state dict without ``medfoundry.json`` (a file, or a folder holding one weights file): the
   layout is recognised from its key names and shapes — segment_anything (ViT-B/L/H, SAM-Med2D adapters),
   transformers ``SamModel``, LiteMedSAM — and given segment_anything's input contract (LiteMedSAM's for its
   layout).

Anything else raises :class:`~medfoundry.errors.RegistryError` naming these formats. Only file names, JSON and
tensor names/shapes are read (safetensors headers, or ``torch.load(weights_only=True, mmap=True)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medfoundry.errors import RegistryError, WeightsError
from medfoundry.registry.records import ModelRecord

#: What :func:`sniff_record` looks for, for error messages.
FORMATS_LOOKED_FOR = (
    "a medfoundry checkpoint folder (medfoundry.json)",
    "an open_clip folder (open_clip_config.json)",
    "a Hugging Face model folder (config.json with model_type clip, sam, llava or dinov2)",
    "a segment_anything / SAM-family checkpoint (.pth/.pt/.bin/.safetensors with image_encoder.* or "
    "vision_encoder.* and mask_decoder.* tensors)",
)
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_SAM_CONTRACT = {"image_size": 1024, "resize": "longest_pad", "channels": 3, "intensity": "uint8", "scale": 255.0,
                 "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "interpolation": "bilinear"}
#: LiteMedSAM's published contract (the only model published in its layout): per-image min-max, 256 px
_LITEMEDSAM_CONTRACT = {"image_size": 256, "resize": "longest_pad", "channels": 3, "intensity": "minmax", "scale": 1.0,
                        "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "interpolation": "bilinear"}
_VIT_BY_WIDTH = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_UNKNOWN = {"license": "unknown: see where the checkpoint came from", "commercial_use": False,
            "paper": "unknown (sniffed checkpoint)", "training_data": "unknown (sniffed checkpoint)"}


def unrecognised(path: Path, detail: str = "") -> RegistryError:
    """The error for a path in none of the formats: it names every format looked for."""
    return RegistryError(f"{path} is not a checkpoint medfoundry recognises{f' ({detail})' if detail else ''}; "
                         f"looked for: {'; '.join(FORMATS_LOOKED_FOR)}")


def sniff_format(path: str | Path) -> str:
    """The format name of a checkpoint file or folder: ``medfoundry``, ``open_clip``, ``hf-<model_type>``,
    ``segment_anything``, ``hf-transformers-sam``, ``litemedsam``, ``sam-med3d``, or ``state-dict`` (a weights
    file of no layout recognised here, which a registry record may still describe). Raises :func:`unrecognised` for
    anything else."""
    path = Path(path).expanduser()
    if path.is_dir():
        from medfoundry.registry.loading import RECORD_FILE

        if (path / RECORD_FILE).is_file():
            return "medfoundry"
        if (path / "open_clip_config.json").is_file():
            return "open_clip"
        if (path / "config.json").is_file():
            return f"hf-{_read_json(path / 'config.json').get('model_type', '?')}"
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        if len(files) != 1:
            raise unrecognised(path, f"{len(files)} weights files and none of the marker files")
        path = files[0]
    if not path.is_file():
        raise unrecognised(path, "no such file or folder")
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise unrecognised(path, f"{path.suffix or 'no'} extension")
    return _sam_layout(tensor_shapes(path)) or "state-dict"


def sniff_record(path: str | Path) -> ModelRecord:
    """The :class:`ModelRecord` of a checkpoint in one of the recognised formats (see the module docstring);
    its weights source is the folder (``local-dir:``) or the file itself."""
    path = Path(path).expanduser()
    kind = sniff_format(path)
    if kind == "medfoundry":
        from medfoundry.registry.loading import read_checkpoint_record

        return read_checkpoint_record(path)
    if kind == "open_clip":
        return _open_clip_record(path)
    if kind.startswith("hf-"):
        return _hf_record(path, kind.removeprefix("hf-"))
    file = path if path.is_file() else next(p for p in sorted(path.iterdir()) if p.suffix in _WEIGHT_SUFFIXES)
    if kind == "state-dict":
        raise unrecognised(path, f"{file.name} holds tensors of no layout recognised here")
    if kind == "sam-med3d":
        raise unrecognised(path, f"{file.name} is a SAM-Med3D checkpoint: load it with --model sam-med3d-turbo "
                                 "--weights FILE")
    config = _sam_config(kind, tensor_shapes(file), file)
    return ModelRecord.from_dict({
        "name": path.stem if path.is_file() else path.name, "arch": "sam", "arch_config": config,
        "family": "VPM-generalist", "tasks": ["segmentation-2d"], "modalities": ["CT", "MR", "photo"],
        "description": f"{kind} checkpoint recognised from its tensor names; input contract assumed to be "
                       f"{'LiteMedSAM' if kind == 'litemedsam' else 'segment_anything'}'s (for MedSAM's min-max "
                       "contract use --model medsam --weights FILE)",
        "preprocess": _LITEMEDSAM_CONTRACT if kind == "litemedsam" else dict(
            _SAM_CONTRACT, image_size=config.get("image_size", 1024)),
        "weights": [{"uri": str(file), "format": kind}], **_UNKNOWN}, origin=str(file))


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a weights file (safetensors header, or a memory-mapped safe ``torch.load``)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{path} is not a valid safetensors file: {exc}") from exc
    import torch

    from medfoundry.registry.loading import load_state_dict

    state = load_state_dict(path) if path.stat().st_size < (1 << 20) else _mmap_state(path)
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _mmap_state(path: Path) -> dict[str, Any]:
    """A large ``torch.save`` file opened memory-mapped (tensors are not read), unwrapped like load_state_dict."""
    import torch

    from medfoundry.registry.loading import _torch_load, load_state_dict

    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
        data = _torch_load(path)
    return load_state_dict(data) if isinstance(data, dict) else {}


def _sam_layout(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """The SAM-family layout of a state dict from its tensor names (as :mod:`medfoundry.models.sam_formats`
    converts them), or None."""
    if not any(k.startswith("mask_decoder.") for k in shapes):
        return None
    if any(k.startswith("vision_encoder.") for k in shapes):
        return "hf-transformers-sam"
    if any(k.startswith("image_encoder.patch_embed.seq.") and ".c." in k for k in shapes):
        return "litemedsam"
    if len(shapes.get("image_encoder.pos_embed", ())) == 5:  # (1, D, H, W, C): a 3D ViT, SAM-Med3D (medim)
        return "sam-med3d"
    if "image_encoder.pos_embed" in shapes and any(k.startswith("image_encoder.blocks.") for k in shapes):
        return "segment_anything"
    return None


def _sam_config(kind: str, shapes: dict[str, tuple[int, ...]], file: Path) -> dict[str, Any]:
    """``arch_config`` of a SAM-family state dict from its tensor shapes."""
    if kind == "litemedsam":
        return {"encoder": "tinyvit", "image_size": 256}
    prefix = "vision_encoder." if kind == "hf-transformers-sam" else "image_encoder."
    pos = shapes.get(f"{prefix}pos_embed", ())
    width = pos[-1] if pos else 0
    if width not in _VIT_BY_WIDTH:
        raise unrecognised(file, f"a ViT image encoder {width} wide, not SAM's ViT-B/L/H (768/1024/1280)")
    config: dict[str, Any] = {"encoder": _VIT_BY_WIDTH[width]}
    if len(pos) == 4 and pos[1] * 16 != 1024:
        config["image_size"] = pos[1] * 16
    if any(".Adapter." in k for k in shapes):
        config["adapter"] = True
    return config


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{path} does not hold a JSON object")
    return data


def _open_clip_record(folder: Path) -> ModelRecord:
    """open_clip's own description of a folder: ``model_cfg.vision_cfg.image_size`` and ``preprocess_cfg``
    (mean, std, interpolation, resize_mode), defaults as open_clip's."""
    config = _read_json(folder / "open_clip_config.json")
    model_cfg, pre = config.get("model_cfg", {}), config.get("preprocess_cfg", {})
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    size = size[0] if isinstance(size, list) else size
    resize = {"shortest": "shortest_crop", "longest": "longest_pad", "squash": "squash"}.get(
        pre.get("resize_mode", "shortest"), "shortest_crop")
    return ModelRecord.from_dict({
        "name": folder.name, "arch": "open_clip", "family": "TPM-contrastive",
        "tasks": ["zero-shot-classification", "retrieval", "embedding"], "modalities": ["photo"],
        "description": "open_clip folder recognised from open_clip_config.json",
        "preprocess": {"image_size": int(size), "resize": resize, "channels": 3, "intensity": "window",
                       "scale": 1.0, "mean": list(pre.get("mean", _OPENAI_MEAN)),
                       "std": list(pre.get("std", _OPENAI_STD)), "interpolation": pre.get("interpolation", "bicubic")},
        "weights": [{"uri": f"local-dir:{folder}", "format": "open_clip"}], **_UNKNOWN}, origin=str(folder))


#: Hugging Face ``model_type`` → (arch, family, tasks)
_HF_TYPES: dict[str, tuple[str, str, list[str]]] = {
    "clip": ("hf_clip", "TPM-contrastive", ["zero-shot-classification", "retrieval", "embedding"]),
    "sam": ("sam", "VPM-generalist", ["segmentation-2d"]),
    "llava": ("llava", "TPM-conversational", ["vqa", "report-generation"]),
    "llava_mistral": ("llava", "TPM-conversational", ["vqa", "report-generation"]),
    "llava_llama": ("llava", "TPM-conversational", ["vqa", "report-generation"]),
    "dinov2": ("hf_dinov2", "vision-encoder", ["embedding", "linear-probe"]),
}


def _hf_record(folder: Path, model_type: str) -> ModelRecord:
    if model_type not in _HF_TYPES:
        raise unrecognised(folder, f"a Hugging Face folder of model_type {model_type!r}; medfoundry runs "
                                   f"{', '.join(sorted(_HF_TYPES))}")
    arch, family, tasks = _HF_TYPES[model_type]
    config = _read_json(folder / "config.json")
    arch_config: dict[str, Any] = {}
    if arch == "sam":
        width = config.get("vision_config", {}).get("hidden_size", 768)
        if width not in _VIT_BY_WIDTH:
            raise unrecognised(folder, f"a SamModel with a {width}-wide vision encoder")
        arch_config = {"encoder": _VIT_BY_WIDTH[width]}
        pre = dict(_SAM_CONTRACT)
    else:
        pre = _hf_preprocess(folder)
    return ModelRecord.from_dict({
        "name": folder.name, "arch": arch, "arch_config": arch_config, "family": family, "tasks": tasks,
        "modalities": ["photo"], "description": f"Hugging Face {model_type} folder recognised from config.json",
        "preprocess": pre, "weights": [{"uri": f"local-dir:{folder}", "format": f"hf-{model_type}"}], **_UNKNOWN},
        origin=str(folder))


def _hf_preprocess(folder: Path) -> dict[str, Any]:
    """The input contract from ``preprocessor_config.json`` (CLIPImageProcessor's fields), or CLIP's."""
    pre: dict[str, Any] = {"image_size": 224, "resize": "shortest_crop", "channels": 3, "intensity": "uint8",
                           "scale": 1.0, "mean": list(_OPENAI_MEAN), "std": list(_OPENAI_STD),
                           "interpolation": "bicubic"}
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return pre
    proc = _read_json(path)
    crop: Any = proc.get("crop_size", proc.get("size", 224))
    crop = crop.get("height", crop.get("shortest_edge", 224)) if isinstance(crop, dict) else crop
    resample = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(proc.get("resample", 3), "bicubic")
    pre.update(image_size=int(crop), mean=list(proc.get("image_mean", _OPENAI_MEAN)),
               std=list(proc.get("image_std", _OPENAI_STD)), interpolation=resample)
    if not proc.get("do_center_crop", True):
        pre["resize"] = "squash"
    return pre


def sniffed_arch(path: str | Path) -> tuple[str, str | None]:
    """(format, architecture) of a checkpoint given as ``--weights``: the architecture its files say it is,
    or None for a plain state dict (any record of a state-dict architecture may describe it)."""
    kind = sniff_format(path)
    if kind == "medfoundry":
        from medfoundry.registry.loading import read_checkpoint_record

        return kind, read_checkpoint_record(path).arch
    if kind == "open_clip":
        return kind, "open_clip"
    if kind.startswith("hf-"):
        model_type = kind.removeprefix("hf-")
        if model_type not in _HF_TYPES:
            raise unrecognised(Path(path), f"a Hugging Face folder of model_type {model_type!r}; medfoundry runs "
                                           f"{', '.join(sorted(_HF_TYPES))}")
        return kind, _HF_TYPES[model_type][0]
    if kind == "sam-med3d":
        return kind, "sam_med3d"
    return kind, None if kind == "state-dict" else "sam"
