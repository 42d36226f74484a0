"""Hostile files: every reader raises medfoundry's typed errors or succeeds, within a time bound and the
configured memory limits. Hypothesis drives the mutations (derandomised, bounded budget); the long run is
``tools/fuzz_readers.py``."""

from __future__ import annotations

import gzip
import io
import random
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medfoundry.errors import ImageReadError, MedfoundryError
from medfoundry.io import fuzz, read_image

pytestmark = pytest.mark.filterwarnings("ignore")
CORPUS = fuzz.package_corpus()
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=250,
                suppress_health_check=list(HealthCheck))


def _ct_small() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def _patched(data: bytes, marker: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with the first ``old`` after ``marker`` (a DICOM tag) replaced by ``new`` of the same length."""
    at = data.index(marker)
    value = data.index(old, at)
    assert len(old) == len(new) and value - at < 16
    return data[:value] + new + data[value + len(old) :]


def _assert_typed(path: Path, timeout_s: float = 10.0) -> str:
    outcome, detail = fuzz.probe(path, timeout_s)
    assert outcome == "success" or outcome.startswith("typed:"), f"{path.name}: {outcome} {detail}"
    return outcome


# -- the crashes of the issue, one regression test each ------------------------------------------------------
def test_unknown_value_representation_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "unknown_vr.dcm"  # SOP Class UID with the VR 'UH', which DICOM does not define
    path.write_bytes(_patched(_ct_small(), b"\x08\x00\x16\x00", b"UI", b"UH"))
    with pytest.raises(ImageReadError, match=r"unknown_vr\.dcm.*Unknown Value Representation 'UH'"):
        read_image(path)


def test_unparsable_pixel_spacing_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "bad_spacing.dcm"  # PixelSpacing (DS) "0.661$68": not a decimal string
    path.write_bytes(_patched(_ct_small(), b"\x28\x00\x30\x00", b"0.661468", b"0.661$68"))
    with pytest.raises(ImageReadError, match=r"bad_spacing\.dcm.*0\.661\$68"):
        read_image(path)


def test_unparsable_rescale_intercept_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "bad_intercept.dcm"  # RescaleIntercept (DS) "-10*4"
    path.write_bytes(_patched(_ct_small(), b"\x28\x00\x52\x10", b"-1024", b"-10*4"))
    with pytest.raises(ImageReadError, match=r"bad_intercept\.dcm"):
        read_image(path)


def test_codec_panic_is_a_typed_error(tmp_path: Path) -> None:
    """pylibjpeg-rle panics (a pyo3 PanicException, not an Exception) on an RLE segment one byte short."""
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("MR_small_RLE.dcm")).read_bytes()
    path = tmp_path / "rle.dcm"
    path.write_bytes(data[:6580] + data[6581:])
    with pytest.raises(ImageReadError, match=r"rle\.dcm"):
        read_image(path)


def test_multiplicity_mismatch_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "vm.dcm"  # ImageOrientationPatient's tag on PixelSpacing's two values
    data = _ct_small()
    iop, spacing = data.index(b"\x20\x00\x37\x00"), data.index(b"\x28\x00\x30\x00")
    swapped = bytearray(data)
    swapped[iop : iop + 4], swapped[spacing : spacing + 4] = data[spacing : spacing + 4], data[iop : iop + 4]
    path.write_bytes(bytes(swapped))
    _assert_typed(path)


def test_unchanged_files_still_read() -> None:
    from pydicom.data import get_testdata_file

    image = read_image(get_testdata_file("CT_small.dcm"))
    assert image.array.shape == (128, 128) and image.units == "HU" and image.spacing == (0.661468, 0.661468)


# -- the property: any mutation of any corpus file ---------------------------------------------------------
@FUZZ
@given(source=st.sampled_from(CORPUS), mutation=st.sampled_from(sorted(fuzz.MUTATIONS)),
       seed=st.integers(0, 2**32 - 1))
def test_mutated_files_raise_only_typed_errors(tmp_path_factory, source: Path, mutation: str, seed: int) -> None:
    rng = random.Random(seed)
    data = fuzz.MUTATIONS[mutation](source.read_bytes(), rng)
    path = tmp_path_factory.mktemp("case") / fuzz.mutated_name(source, rng)
    path.write_bytes(data)
    _assert_typed(path)


@settings(FUZZ, max_examples=60)
@given(data=st.binary(max_size=600), suffix=st.sampled_from(fuzz.SUFFIXES))
def test_arbitrary_bytes_raise_only_typed_errors(tmp_path_factory, data: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("raw") / f"case{suffix}"
    path.write_bytes(data)
    _assert_typed(path)


def test_zero_and_one_byte_files(tmp_path: Path) -> None:
    for suffix in fuzz.SUFFIXES:
        for data in (b"", b"\x00"):
            path = tmp_path / f"f{len(data)}{suffix}"
            path.write_bytes(data)
            assert _assert_typed(path) == "typed:ImageReadError"


def _series(tmp_path: Path) -> Path:
    import shutil

    import pydicom.data

    folder = tmp_path / "series"
    shutil.copytree(Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N", folder)
    return folder


@settings(FUZZ, max_examples=40)
@given(mutation=st.sampled_from(sorted(fuzz.MUTATIONS)), seed=st.integers(0, 2**32 - 1), zipped=st.booleans())
def test_mutated_series_folders_and_zips(tmp_path_factory, mutation: str, seed: int, zipped: bool) -> None:
    rng = random.Random(seed)
    folder = _series(tmp_path_factory.mktemp("s"))
    victim = rng.choice(sorted(folder.iterdir()))
    victim.write_bytes(fuzz.MUTATIONS[mutation](victim.read_bytes(), rng))
    if zipped:
        target = folder.with_suffix(".zip")
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.iterdir()):
                z.write(f, f"CT5N/{f.name}")
        folder = target
    _assert_typed(folder, timeout_s=20)


def test_series_zip_reads_like_its_folder(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    target = tmp_path / "series.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"a/b/{f.name}")
    a, b = read_image(folder), read_image(target)
    assert np.array_equal(a.array, b.array) and a.spacing == b.spacing and b.source == str(target)


# -- archives and bombs: refused from declared sizes, before expansion ---------------------------------------
def test_zip_member_names_never_become_paths(tmp_path: Path) -> None:
    target = tmp_path / "evil.zip"
    with zipfile.ZipFile(target, "w") as z:
        z.writestr("../../escaped.dcm", _ct_small())
        z.writestr("/abs/escaped2.dcm", b"junk")
    assert read_image(target).array.shape == (128, 128)  # the junk member is no DICOM image: skipped
    assert not (tmp_path.parent / "escaped.dcm").exists() and not Path("/abs/escaped2.dcm").exists()


def test_zip_bomb_is_refused_before_expansion(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDFOUNDRY_MAX_EXPANDED_BYTES", str(8 << 20))
    target = tmp_path / "bomb.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for k in range(4):
            z.writestr(f"{k}.dcm", bytes(4 << 20))
    assert target.stat().st_size < 100_000
    with pytest.raises(ImageReadError, match=r"expands to 16\.0 MiB, over the 8\.0 MiB limit"):
        read_image(target)


def test_nested_and_linked_zip_members_are_refused(tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("a.dcm", _ct_small())
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as z:
        z.writestr("inner.zip", inner.getvalue())
    with pytest.raises(ImageReadError, match="nested archives are refused"):
        read_image(nested)
    linked = tmp_path / "linked.zip"
    with zipfile.ZipFile(linked, "w") as z:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    with pytest.raises(ImageReadError, match="symbolic link"):
        read_image(linked)


def test_npz_bomb_and_huge_npy_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDFOUNDRY_MAX_IMAGE_BYTES", str(4 << 20))
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, imgs=np.zeros((80, 256, 256), np.uint8))  # 5 MiB of zeros in a few kB
    with pytest.raises(ImageReadError, match=r"over the 4\.0 MiB limit"):
        read_image(bomb)
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000), }"
    header += b" " * (63 - len(header) % 64) + b"\n"
    huge = tmp_path / "huge.npy"
    huge.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(64))
    with pytest.raises(ImageReadError, match="declares \\(100000, 100000\\)"):
        read_image(huge)


def test_nifti_gz_declaring_a_huge_volume_is_refused_before_expansion(tmp_path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    raw = bytearray(img.to_bytes())
    struct.pack_into("<hhhh", raw, 40, 3, 32767, 32767, 32767)
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ImageReadError, match="volume declares \\(32767, 32767, 32767\\)"):
        read_image(path)


def test_png_and_dicom_declaring_huge_sizes_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDFOUNDRY_MAX_IMAGE_BYTES", str(64 << 20))
    png = tmp_path / "huge.png"
    out = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(out, format="PNG")
    raw = bytearray(out.getvalue())
    struct.pack_into(">II", raw, 16, 9000, 9000)
    struct.pack_into(">I", raw, 29, zlib.crc32(bytes(raw[12:29])))
    png.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError, match="image declares \\(9000, 9000"):
        read_image(png)
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("MR_small_RLE.dcm")).read_bytes()
    rows = data.index(b"\x28\x00\x10\x00")
    dcm = tmp_path / "huge.dcm"
    dcm.write_bytes(data[: rows + 8] + struct.pack("<H", 65535) + data[rows + 10 :].replace(
        b"\x28\x00\x11\x00US\x02\x00\x40\x00", b"\x28\x00\x11\x00US\x02\x00\xff\xff", 1))
    with pytest.raises(ImageReadError, match="DICOM pixel data declares"):
        read_image(dcm)


def test_deflated_dicom_bomb_is_refused(tmp_path: Path, monkeypatch) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00091010, "OB", bytes(12 << 20))  # a private element of zeros: compresses ~1000:1
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < 1 << 20
    assert read_image(path).array.shape == (128, 128)  # under the default limit it reads
    monkeypatch.setenv("MEDFOUNDRY_MAX_EXPANDED_BYTES", str(4 << 20))
    with pytest.raises(ImageReadError, match="deflated DICOM data set expands to"):
        read_image(path)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> bytes:
    from pydicom.data import get_testdata_file

    from medfoundry.io.slide import write_pyramid

    rgb = read_image(get_testdata_file("SC_rgb_dcmtk_+eb+cr.dcm")).to_display()
    path = write_pyramid(tmp_path_factory.mktemp("slide") / "slide.tif", np.ascontiguousarray(rgb[:96, :96]),
                         levels=2, tile=32, mpp=0.5)
    return path.read_bytes()


@settings(FUZZ, max_examples=30)
@given(mutation=st.sampled_from(sorted(fuzz.MUTATIONS)), seed=st.integers(0, 2**32 - 1),
       suffix=st.sampled_from([".tif", ".svs", ".ndpi", ".png"]))
def test_mutated_slides_raise_only_typed_errors(tmp_path_factory, pyramid: bytes, mutation: str, seed: int,
                                                suffix: str) -> None:
    from medfoundry.io.slide import open_slide

    path = tmp_path_factory.mktemp("s") / f"case{suffix}"
    path.write_bytes(fuzz.MUTATIONS[mutation](pyramid, random.Random(seed)))
    try:
        with open_slide(path) as slide:
            assert slide.thumbnail(48).ndim == 3
            assert slide.read_region((0, 0), slide.level_count - 1, (16, 16)).shape == (16, 16, 3)
    except MedfoundryError:
        pass


# -- other entry points --------------------------------------------------------------------------------------
@settings(FUZZ, max_examples=80)
@given(lines=st.lists(st.one_of(st.text(max_size=80), st.from_regex(r'\{"image": ?"[a-z.]{1,8}".{0,40}\}'),
                                st.just('{"image": "a.png", "boxes": [[1, 2, "x", 4]]}'),
                                st.just('{"image": "a.png", "points": [[1e999, 2]]}'),
                                st.just("[" * 5000), st.just('{"image": 3}')), max_size=4))
def test_prompts_file_parser_raises_only_typed_errors(tmp_path_factory, lines: list[str]) -> None:
    from medfoundry.cli.segment import read_prompts
    from medfoundry.errors import InputContractError

    path = tmp_path_factory.mktemp("p") / "prompts.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    try:
        jobs = read_prompts(path)
    except InputContractError as exc:
        assert "prompts.jsonl" in str(exc)
    else:
        assert all(isinstance(j["image"], str) and isinstance(j["boxes"], list) for j in jobs)


def test_prompts_file_of_binary_junk(tmp_path: Path) -> None:
    from medfoundry.cli.main import main

    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["segment", "--prompts", str(path), "--out-dir", str(tmp_path)]) == 2


def test_dicom_seg_writer_on_mutated_series_leaves_no_partial_output(tmp_path: Path) -> None:
    pytest.importorskip("highdicom")
    from medfoundry.io.dicom_seg import write_dicom_seg

    rng = random.Random(7)
    for k in range(12):
        folder = _series(tmp_path / f"s{k}")
        victim = rng.choice(sorted(folder.iterdir()))
        mutation = rng.choice(sorted(fuzz.MUTATIONS))
        victim.write_bytes(fuzz.MUTATIONS[mutation](victim.read_bytes(), rng))
        out = tmp_path / f"seg{k}.dcm"
        try:
            write_dicom_seg(np.ones((5, 16, 16), bool), folder, out)
        except MedfoundryError:
            assert not out.exists() and not list(tmp_path.glob(f"*seg{k}*"))
        else:  # a written SEG reads back as a multi-frame image, and its mutations stay typed
            assert read_image(out).array.shape[-2:] == (16, 16)
            data = out.read_bytes()
            for j in range(20):
                case = tmp_path / f"seg{k}_{j}.dcm"
                case.write_bytes(fuzz.MUTATIONS[rng.choice(sorted(fuzz.MUTATIONS))](data, rng))
                _assert_typed(case)
