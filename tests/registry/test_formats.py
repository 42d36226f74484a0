"""Published checkpoint formats recognised by sniffing (issue 13 item 8): ``--model local-dir:PATH`` and
``--weights PATH`` accept an open_clip folder, a Hugging Face folder and a SAM-family checkpoint without
``medfoundry.json``; anything else gets an error naming the formats looked for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundry.errors import RegistryError
from medfoundry.registry.formats import FORMATS_LOOKED_FOR, sniff_format, sniff_record
from medfoundry.registry.loading import resolve_model

open_clip = pytest.importorskip("open_clip")
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    "quick_gelu": True,
}


def test_open_clip_folder_loads_as_open_clip_names_it(tmp_path: Path) -> None:
    from medfoundry.io import MedImage
    from medfoundry.predict.contrastive import open_contrastive, save_open_clip_folder

    torch.manual_seed(0)
    model = open_clip.model.CLIP(**TINY_CLIP).eval()
    pre = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear", "resize_mode": "squash"}
    folder = save_open_clip_folder(model, {"model_cfg": TINY_CLIP, "preprocess_cfg": pre}, tmp_path / "oc")
    assert sniff_format(folder) == "open_clip"
    record = sniff_record(folder)
    assert (record.arch, record.preprocess.image_size, record.preprocess.resize) == ("open_clip", 64, "squash")
    assert record.preprocess.mean == (0.5, 0.5, 0.5) and record.preprocess.interpolation == "bilinear"
    predictor = open_contrastive(f"local-dir:{folder}")
    rgb = np.random.default_rng(0).integers(0, 256, (80, 90, 3), dtype=np.uint8)
    ours = predictor.embed_images([MedImage(array=rgb, spacing=(1.0, 1.0), photometric="RGB")])
    ref_model, _, ref_pre = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    from PIL import Image

    with torch.no_grad():
        ref = ref_model.eval().encode_image(ref_pre(Image.fromarray(rgb))[None])
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    assert float((ours * ref).sum()) > 0.9999  # the same input contract as open_clip's own transform


def test_hugging_face_folders_by_model_type(tmp_path: Path) -> None:
    clip = tmp_path / "hf_clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
    (clip / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 336, "width": 336}, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6],
        "resample": 3, "do_center_crop": True}))
    record = sniff_record(clip)
    assert (record.arch, record.family, record.preprocess.image_size) == ("hf_clip", "TPM-contrastive", 336)
    assert record.preprocess.mean == (0.1, 0.2, 0.3) and record.weights[0].uri == f"local-dir:{clip}"
    sam = tmp_path / "hf_sam"
    sam.mkdir()
    (sam / "config.json").write_text(json.dumps({"model_type": "sam", "vision_config": {"hidden_size": 1024}}))
    record = sniff_record(sam)
    assert (record.arch, record.arch_config, record.preprocess.resize) == ("sam", {"encoder": "vit_l"}, "longest_pad")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(RegistryError, match="model_type 'bert'"):
        resolve_model(f"local-dir:{other}")


def test_hf_clip_folder_end_to_end(tmp_path: Path) -> None:
    import shutil

    from transformers import CLIPConfig, CLIPModel

    from medfoundry.models.text import minilm_dir
    from medfoundry.predict.contrastive import open_contrastive

    config = CLIPConfig(text_config={"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64,
                                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 64},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
                        projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path / "hf"
    CLIPModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, folder / name)
    predictor = open_contrastive(f"local-dir:{folder}")
    assert predictor.record.arch == "hf_clip" and predictor.embed_texts(["a polyp"]).shape == (1, 16)


def _litemedsam_state() -> dict[str, torch.Tensor]:
    from medfoundry.models.sam import build_sam

    torch.manual_seed(0)
    state = build_sam({"encoder": "tinyvit", "image_size": 256}).state_dict()
    return {k.replace(".conv.", ".c.") if k.startswith("image_encoder.") else k: v for k, v in state.items()}


def test_sam_family_checkpoint_without_medfoundry_json(tmp_path: Path) -> None:
    """A LiteMedSAM checkpoint (its published layout) as a file and in a folder, no record: sniffed, loaded and
    given LiteMedSAM's contract; the same masks as the registered record with --weights."""
    from medfoundry.io import MedImage
    from medfoundry.predict.segment import open_segmenter

    folder = tmp_path / "lite"
    folder.mkdir()
    torch.save(_litemedsam_state(), folder / "lite_medsam.pth")
    assert sniff_format(folder) == sniff_format(folder / "lite_medsam.pth") == "litemedsam"
    record = sniff_record(folder)
    assert record.arch_config == {"encoder": "tinyvit", "image_size": 256}
    assert record.preprocess.intensity == "minmax"
    image = MedImage(array=np.random.default_rng(0).normal(0, 100, (120, 140)).astype(np.int16), spacing=(1.0, 1.0),
                     modality="CT", units="HU")
    masks = []
    for seg in (open_segmenter(f"local-dir:{folder}"), open_segmenter("litemedsam", str(folder / "lite_medsam.pth"))):
        seg.set_image(image)
        masks.append(seg.predict(boxes=np.array([[20.0, 30.0, 90.0, 100.0]])).masks)
    assert np.array_equal(masks[0], masks[1])


def test_segment_anything_vit_recognised_from_shapes(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    shapes = {"image_encoder.pos_embed": (1, 16, 16, 768), "image_encoder.blocks.0.norm1.weight": (768,),
              "image_encoder.blocks.0.Adapter.norm.weight": (768,), "mask_decoder.iou_token.weight": (1, 256)}
    save_file({k: torch.zeros(v) for k, v in shapes.items()}, str(tmp_path / "sam_med2d.safetensors"))
    record = sniff_record(tmp_path / "sam_med2d.safetensors")
    assert record.arch_config == {"encoder": "vit_b", "image_size": 256, "adapter": True}
    assert record.weights[0].uri == str(tmp_path / "sam_med2d.safetensors")


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "lite"
    folder.mkdir()
    torch.save(_litemedsam_state(), folder / "lite_medsam.pth")
    with pytest.raises(RegistryError, match=r"is a litemedsam checkpoint.*medfoundry-clip-tiny is a medfoundry_clip"):
        resolve_model("medfoundry-clip-tiny", str(folder / "lite_medsam.pth"))
    record, weights = resolve_model("litemedsam", f"local-dir:{folder}")
    assert record.name == "litemedsam" and weights == f"local-dir:{folder}"


@pytest.mark.parametrize("kind", ["empty folder", "two files", "text file", "unknown tensors"])
def test_anything_else_names_the_formats_looked_for(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "thing"
    if kind == "text file":
        target = tmp_path / "notes.txt"
        target.write_text("hello")
    elif kind == "unknown tensors":
        target = tmp_path / "w.pt"
        torch.save({"linear.weight": torch.zeros(2, 2)}, target)
    else:
        target.mkdir()
        for i in range(2 if kind == "two files" else 0):
            torch.save({"w": torch.zeros(1)}, target / f"part{i}.pt")
    with pytest.raises(RegistryError) as err:
        resolve_model(f"local-dir:{target}")
    for name in ("medfoundry.json", "open_clip_config.json", "config.json", "segment_anything"):
        assert name in str(err.value)
    assert len(FORMATS_LOOKED_FOR) == 4
