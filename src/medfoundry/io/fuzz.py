"""Hostile-input testing: a corpus of real files, mutations of them, and one call that classifies what a reader
does with a file. Used by ``tests/io/test_fuzz.py`` (Hypothesis, bounded) and ``tools/fuzz_readers.py`` (the
long run); nothing here runs at import.

Outcome classes of :func:`probe`: ``"success"``, ``"typed:<ErrorName>"`` (a :class:`MedfoundryError`),
``"untyped:<ExceptionName>"`` (a bug) and ``"hang"`` (over the time bound).
"""

from __future__ import annotations

import random
import signal
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from medfoundry.errors import MedfoundryError

#: Suffixes a mutated copy may be given (the "lying extension" mutation picks one of these).
SUFFIXES = (".dcm", "", ".nii", ".nii.gz", ".png", ".jpg", ".tif", ".npy", ".npz", ".mgz", ".mnc", ".hdr", ".zip")
_EXPLICIT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD",
                 b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
                 b"UL", b"UN", b"UR", b"US", b"UT", b"UV"}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}


def package_corpus() -> list[Path]:
    """Every test file pydicom and nibabel ship (DICOM, NIfTI, Analyze, MINC, MGH, PAR/REC, ...), sorted."""
    import nibabel
    import pydicom.data

    roots = [Path(pydicom.data.__file__).parent / "test_files"]
    roots += sorted(p for p in Path(nibabel.__file__).parent.rglob("data") if p.is_dir() and "tests" in p.parts)
    files = {p for root in roots for p in root.rglob("*") if p.is_file() and not p.name.endswith((".py", ".pyc"))}
    return sorted(f for f in files if f.stat().st_size <= 8 << 20)


def shared_corpus(shared: Path | None, per_folder: int = 3) -> list[Path]:
    """A few image files of each folder of ``../shared/data`` (none when absent): DICOM, NIfTI, JPEG, PNG, npz."""
    if shared is None or not Path(shared).is_dir():
        return []
    out: list[Path] = []
    for folder in sorted(p for p in Path(shared).iterdir() if p.is_dir()):
        picked = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.stat().st_size <= 8 << 20
                  and p.name.lower().endswith((".dcm", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg", ".npz"))]
        out += picked[:per_folder]
    return out


# -- mutations -----------------------------------------------------------------------------------------------
def _elements(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, header length, value length) of things that look like explicit-VR little-endian DICOM elements."""
    found = []
    for i in range(0, len(data) - 8, 2):
        vr = data[i + 4 : i + 6]
        if vr not in _EXPLICIT_VRS or data[i + 1] > 0x7F:
            continue
        if vr in _LONG_VRS:
            if data[i + 6 : i + 8] != b"\x00\x00" or i + 12 > len(data):
                continue
            header, length = 12, struct.unpack_from("<I", data, i + 8)[0]
        else:
            header, length = 8, struct.unpack_from("<H", data, i + 6)[0]
        found.append((i, header, length))
    return found


def truncate(data: bytes, rng: random.Random) -> bytes:
    """Cut the file at a random point (sometimes to 0 or 1 byte)."""
    r = rng.random()
    return data[:0] if r < 0.03 else data[:1] if r < 0.06 else data[: rng.randrange(0, max(len(data), 1))]


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    """Flip 1–8 random bits."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    """Insert 1–16 random bytes at a random offset."""
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]


def delete_bytes(data: bytes, rng: random.Random) -> bytes:
    """Delete 1–16 bytes at a random offset."""
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[at + rng.randint(1, 16) :]


def swap_tags(data: bytes, rng: random.Random) -> bytes:
    """Swap the tags of two DICOM elements (falls back to swapping two 4-byte words)."""
    found = _elements(data)
    out = bytearray(data)
    if len(found) >= 2:
        (a, _, _), (b, _, _) = rng.sample(found, 2)
    elif len(out) >= 8:
        a, b = rng.randrange(len(out) - 4), rng.randrange(len(out) - 4)
    else:
        return data
    out[a : a + 4], out[b : b + 4] = data[b : b + 4], data[a : a + 4]
    return bytes(out)


def duplicate_element(data: bytes, rng: random.Random) -> bytes:
    """Repeat one DICOM element (header and value) right after itself (falls back to a repeated block)."""
    found = [e for e in _elements(data) if e[2] < 1 << 16]
    if found:
        at, header, length = rng.choice(found)
        block = data[at : at + header + length]
    else:
        at = rng.randrange(len(data) + 1)
        block = data[at : at + rng.randint(1, 64)]
    return data[: at + len(block)] + block + data[at + len(block) :]


def wrong_length(data: bytes, rng: random.Random) -> bytes:
    """Give one DICOM element a wrong value length (small, huge or undefined)."""
    found = _elements(data)
    if not found:
        return bit_flips(data, rng)
    at, header, length = rng.choice(found)
    out = bytearray(data)
    if header == 12:
        new = rng.choice([0, 1, length + 1, length * 2 + 3, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)])
        struct.pack_into("<I", out, at + 8, new & 0xFFFFFFFF)
    else:
        struct.pack_into("<H", out, at + 6, rng.choice([0, 1, length + 1, 0xFFFF, rng.randrange(1 << 16)]))
    return bytes(out)


def huge_dimensions(data: bytes, rng: random.Random) -> bytes:
    """Declare huge pixel dimensions the way each format stores them: DICOM Rows/Columns/NumberOfFrames, NIfTI
    ``dim``, PNG IHDR (CRC fixed), TIFF ImageWidth/ImageLength, NumPy ``shape``."""
    out = bytearray(data)
    big = rng.choice([0xFFFF, 0x7FFF, 40000, 1 << 20, 0x7FFFFFFF])
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 33:
        struct.pack_into(">II", out, 16, big, rng.choice([big, 1, 64]))
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
        return bytes(out)
    if len(data) >= 348 and (data[344:347] in (b"n+1", b"ni1") or struct.unpack_from("<i", data, 0)[0] == 348):
        ndim = max(1, min(7, struct.unpack_from("<h", data, 40)[0]))
        for k in rng.sample(range(1, ndim + 1), rng.randint(1, ndim)):
            struct.pack_into("<h", out, 40 + 2 * k, min(big, 0x7FFF))
        return bytes(out)
    if data[:6] == b"\x93NUMPY":
        header = data[10 : 10 + struct.unpack_from("<H", data, 8)[0]]
        new = header.replace(b"'shape': (", f"'shape': ({big}, {big}, ".encode(), 1)
        return data[:8] + struct.pack("<H", len(new)) + new + data[10 + len(header) :]
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        end = "<" if data[:2] == b"II" else ">"
        for tag in (256, 257):
            at = data.find(struct.pack(end + "HH", tag, 3)) if rng.random() < 0.5 else data.find(
                struct.pack(end + "HH", tag, 4))
            if at >= 0:
                struct.pack_into(end + ("H" if data[at + 2 : at + 4] in (b"\x03\x00", b"\x00\x03") else "I"),
                                 out, at + 8, min(big, 0xFFFF))
        return bytes(out)
    targets = {b"\x28\x00\x10\x00": "US", b"\x28\x00\x11\x00": "US", b"\x28\x00\x08\x00": "IS"}
    hit = False
    for tag, kind in targets.items():
        at = data.find(tag)
        while at >= 0 and at % 2:
            at = data.find(tag, at + 1)
        if at < 0 or rng.random() < 0.3:
            continue
        explicit = data[at + 4 : at + 6] in _EXPLICIT_VRS
        value_at = at + 8  # explicit VR: tag, VR, 2-byte length; implicit: tag, 4-byte length
        length = struct.unpack_from("<H" if explicit else "<I", data, at + 6 if explicit else at + 4)[0]
        if kind == "US" and length == 2 and value_at + 2 <= len(out):
            struct.pack_into("<H", out, value_at, min(big, 0xFFFF))
            hit = True
        elif kind == "IS" and 0 < length <= 12 and value_at + length <= len(out):
            out[value_at : value_at + length] = str(min(big, 10 ** length - 1)).rjust(length).encode()[:length]
            hit = True
    return bytes(out) if hit else bit_flips(data, rng)


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "truncate": truncate, "bit_flips": bit_flips, "insert_bytes": insert_bytes, "delete_bytes": delete_bytes,
    "swap_tags": swap_tags, "duplicate_element": duplicate_element, "wrong_length": wrong_length,
    "huge_dimensions": huge_dimensions,
}


def mutated_name(source: Path, rng: random.Random, lie: float = 0.15) -> str:
    """The name a mutated copy gets: the source's own suffix, or (with probability ``lie``) another one."""
    name = source.name.lower()
    own = ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix
    return "case" + (rng.choice(SUFFIXES) if rng.random() < lie else own)


# -- running one case ----------------------------------------------------------------------------------------
class CaseTimeout(BaseException):
    """Raised inside :func:`probe` when a case runs past its time bound (a BaseException, so no reader's
    ``except Exception`` swallows it)."""


def _alarm(_signum, _frame) -> None:
    raise CaseTimeout


def probe(path: Path, timeout_s: float = 10.0, display: bool = True) -> tuple[str, str]:
    """Read ``path`` with :func:`medfoundry.io.read_image` (and, when it succeeds, ``to_display`` and
    ``summary``) under a ``timeout_s`` time bound (SIGALRM; main thread only). Returns (outcome class, detail)."""
    from medfoundry.io import read_image

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        image = read_image(path)
        if display:
            plane = image.slice(image.array.shape[0] // 2) if image.is_volume else image
            plane.to_display()
            image.summary()
        return "success", ""
    except CaseTimeout:
        return "hang", f"over {timeout_s} s"
    except MedfoundryError as exc:
        return f"typed:{type(exc).__name__}", str(exc)[:300]
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # classifying every escape (pyo3 panics included) is the point
        return f"untyped:{type(exc).__name__}", f"{exc}"[:300]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
