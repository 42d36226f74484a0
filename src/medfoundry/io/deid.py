"""De-identification of DICOM objects: DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile.

The attribute actions come from ``dicom-anonymizer`` (KitwareMedical), whose tables are generated from the
standard's Table E.1-1 (here the 2026c edition, :data:`TABLE_VERSION`): X remove, Z empty, D dummy value,
U new UID, and the combined actions, applied by its element functions. medfoundry adds what a clinical data
path needs on top of the table:

- the actions are applied inside every sequence item too, not only at the top level;
- instance UIDs (the table's U attributes) are remapped by a keyed hash, so the same original UID always gets
  the same new UID under one key: a series stays one series and still references its frame of reference;
- patient names and IDs become one keyed pseudonym per patient (``MF-…``), so studies of one patient stay
  grouped;
- dates follow the profile: ``basic`` replaces them as the table says, ``retain-dates`` keeps them (Retain
  Longitudinal Temporal Information, Full Dates Option), ``shift-dates`` moves every date of one patient back
  by the same number of days (Modified Dates Option);
- private attributes are removed; De-identification Method (Code Sequence), Patient Identity Removed and
  Longitudinal Temporal Information Modified record what was done;
- objects that declare ``BurnedInAnnotation = YES`` are refused, unless pixel cleaning is asked for
  (``clean_pixels``): then the regions that the curated filters of pydicom's ``deid`` package name for the
  object's device are blanked (:mod:`medfoundry.io.deid_pixels`, every image, declared or not), and an image that
  declares burned-in text with no filter for its device is still refused, never passed through.

Pixel data, geometry (position, orientation, spacing) and the modality LUT are not in the table and are kept,
so a de-identified series reads as the same volume.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from medfoundry.errors import DeidentificationError, ImageReadError, InputContractError, OutputExistsError
from medfoundry.io.deid_pixels import BurnedInAnnotationError, CleanedRegions

PROFILES: tuple[str, ...] = ("basic", "retain-dates", "shift-dates")
#: The edition of PS3.15 Table E.1-1 whose actions are applied (a module of dicom-anonymizer).
TABLE_VERSION = "dicomfields_2026c"
#: Shifted dates move back by this many days at least and at most (per patient, from the key).
SHIFT_DAYS = (30, 3650)
_PATIENT_TAGS = ((0x0010, 0x0010), (0x0010, 0x0020))


def _require_library():
    try:
        import dicomanonymizer.simpledicomanonymizer as simple
        from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
    except ImportError as exc:
        raise InputContractError("de-identification needs dicom-anonymizer: pip install 'medfoundry[pacs]'") from exc
    return simple, dicom_anonymization_database_selector


def annex_e_table() -> dict[str, list[tuple[int, ...]]]:
    """PS3.15 Table E.1-1 as shipped by dicom-anonymizer: action code (``"X"``, ``"Z"``, ``"D"``, ``"U"``,
    ``"Z/D"``, ``"X/Z"``, ``"X/D"``, ``"X/Z/D"``, ``"X/Z/U*"``) → list of tags ``(group, element)`` (or
    ``(group, element, group mask, element mask)`` for repeating groups)."""
    _, select = _require_library()
    tables = select(TABLE_VERSION)
    names = {"D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
             "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*"}
    return {code: list(tables[name]) for name, code in names.items()}


@dataclass
class Deidentifier:
    """De-identifies pydicom datasets in place under one key.

    Args:
        profile: ``"basic"``, ``"retain-dates"`` or ``"shift-dates"`` (see the module docstring).
        secret: the key of the UID and pseudonym hashes; the same secret maps the same inputs the same way
            (keep it, with the mapping, in a key file only when asked). A fresh random one by default.
        clean_pixels: blank the burned-in text regions that ``deid``'s filters name for each object's device
            (:func:`medfoundry.io.deid_pixels.clean_burned_in`); without it, burned-in annotation is refused.

    ``cleaned`` maps each source whose pixels were cleaned to the regions and filters applied.
    """

    profile: str = "basic"
    secret: bytes = field(default_factory=lambda: os.urandom(32))
    uids: dict[str, str] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)
    date_shifts: dict[str, int] = field(default_factory=dict)
    clean_pixels: bool = False
    cleaned: dict[str, CleanedRegions] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise InputContractError(f"unknown de-identification profile {self.profile!r}; choose from {PROFILES}")
        simple, _ = _require_library()
        self._simple = simple
        self._rules = simple.initialize_actions(TABLE_VERSION)
        table = annex_e_table()
        for tag in table["U"]:
            self._rules[tag] = self._replace_uid
        for tag in table["X/Z/U*"]:
            self._rules[tag] = self._uid_or_remove
        for tag in _PATIENT_TAGS:
            if tag in self._rules:
                self._rules[tag] = self._pseudonym
        self._date_tags = [t for t in self._rules if len(t) == 2 and _vr(t) in ("DA", "DT", "TM")]
        if self.profile == "retain-dates":
            for tag in self._date_tags:
                self._rules[tag] = simple.keep
        elif self.profile == "shift-dates":
            for tag in self._date_tags:
                self._rules[tag] = self._shift_date
        self._patient = ""
        self._lock = threading.Lock()  # one dataset at a time: a server shares one deidentifier between threads

    # ----- keyed mappings -------------------------------------------------------------------------------------
    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self.secret, f"{kind}:{value}".encode(), hashlib.sha256).digest()

    def new_uid(self, uid: str) -> str:
        """The new UID of ``uid`` under this key (``2.25.`` + a 128-bit keyed hash, as PS3.5 B.2 allows)."""
        uid = str(uid).strip()
        if uid not in self.uids:
            self.uids[uid] = "2.25." + str(int.from_bytes(self._digest("uid", uid)[:16], "big"))
        return self.uids[uid]

    def pseudonym(self, patient: str) -> str:
        """The pseudonym (``MF-`` + 12 hex digits) that replaces a patient's name and ID."""
        if patient not in self.patients:
            self.patients[patient] = "MF-" + self._digest("patient", patient).hex()[:12].upper()
        return self.patients[patient]

    def shift_days(self, patient: str) -> int:
        """How many days this patient's dates move back under ``shift-dates``."""
        pseudo = self.pseudonym(patient)
        if pseudo not in self.date_shifts:
            lo, hi = SHIFT_DAYS
            self.date_shifts[pseudo] = lo + int.from_bytes(self._digest("days", patient)[:4], "big") % (hi - lo)
        return self.date_shifts[pseudo]

    # ----- element actions (dataset, tag) ---------------------------------------------------------------------
    def _replace_uid(self, ds: Any, tag: tuple[int, int]) -> None:
        element = ds.get(tag)
        if element is None or not element.value:
            return
        if element.VR != "UI":
            self._simple.replace(ds, tag)
            return
        values = element.value
        if isinstance(values, str):
            element.value = self.new_uid(values)
        else:
            element.value = [self.new_uid(v) for v in values]

    def _uid_or_remove(self, ds: Any, tag: tuple[int, int]) -> None:
        element = ds.get(tag)
        if element is None:
            return
        if element.VR == "UI":
            self._replace_uid(ds, tag)
        else:
            del ds[tag]

    def _pseudonym(self, ds: Any, tag: tuple[int, int]) -> None:
        element = ds.get(tag)
        if element is None:
            return
        if element.VR in ("PN", "LO", "SH"):
            element.value = self.pseudonym(self._patient) if element.value else element.value
        else:
            self._simple.delete(ds, tag)

    def _shift_date(self, ds: Any, tag: tuple[int, int]) -> None:
        element = ds.get(tag)
        if element is None or not element.value or element.VR == "TM":
            return
        days = self.shift_days(self._patient)

        def shift(text: str) -> str:
            text = str(text).strip()
            try:
                day = date(int(text[:4]), int(text[4:6]), int(text[6:8])) - timedelta(days=days)
            except (ValueError, IndexError):
                return "00010101" + text[8:] if element.VR == "DT" else "00010101"
            return day.strftime("%Y%m%d") + text[8:]

        element.value = shift(element.value) if isinstance(element.value, str) else [shift(v) for v in element.value]

    # ----- datasets -------------------------------------------------------------------------------------------
    def deidentify_dataset(self, ds: Any, source: str | Path = "<dataset>") -> None:
        """De-identify a pydicom dataset in place (its file meta too); with ``clean_pixels``, its burned-in
        text regions first. Raises :class:`~medfoundry.io.deid_pixels.BurnedInAnnotationError` for burned-in
        annotation that is not (or cannot be) cleaned, :class:`DeidentificationError` for a dataset the table's
        actions cannot handle. Error reasons name no attribute values (they may reach a server's log).
        Thread-safe (datasets are de-identified one at a time)."""
        with self._lock:
            self._deidentify_dataset(ds, source)

    def _deidentify_dataset(self, ds: Any, source: str | Path) -> None:
        try:
            regions = self._clean_or_refuse(ds, source)
            self._patient = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
            self._apply(ds)
            meta = getattr(ds, "file_meta", None)
            if meta is not None:
                self._replace_uid(meta, (0x0002, 0x0003))
                if ds.get("SOPInstanceUID"):
                    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        except DeidentificationError:
            raise
        except Exception as exc:  # the table's actions, or pydicom decoding a (truncated, malformed) element late
            # the exception's text can quote a header value: only its type is named
            raise DeidentificationError(source, f"the Table E.1-1 actions failed on its header "
                                                f"({type(exc).__name__})") from exc
        self._record(ds, cleaned=regions is not None)
        if regions is not None:
            self.cleaned[str(source)] = regions

    def _clean_or_refuse(self, ds: Any, source: str | Path) -> Any:
        """Burned-in annotation: refused without ``clean_pixels``; with it, the regions the deid filters name are
        blanked (declared or not). The regions cleaned, or None."""
        declared = str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"
        if self.clean_pixels:
            from medfoundry.io.deid_pixels import clean_burned_in, find_regions

            if declared or ("PixelData" in ds and find_regions(ds, str(source))[1].regions):
                return clean_burned_in(ds, str(source))
        elif declared:
            raise BurnedInAnnotationError(source, "it declares BurnedInAnnotation YES (identifying text in the "
                                                  "pixels); ask for pixel cleaning (--clean-pixels) or leave this "
                                                  "image out")
        return None

    def _apply(self, ds: Any) -> None:
        """Table actions inside every sequence item first, then on this level; private attributes removed."""
        for element in list(ds):
            if element.VR == "SQ" and element.value is not None:
                for item in element.value:
                    self._apply(item)
        self._simple.anonymize_dataset(ds, None, True, lambda: dict(self._rules))
        ds.remove_private_tags()

    def _record(self, ds: Any, cleaned: bool = False) -> None:
        from pydicom.dataset import Dataset
        from pydicom.sr.codedict import codes

        ds.PatientIdentityRemoved = "YES"
        method = {"basic": "PS3.15 Annex E Basic Application Level Confidentiality Profile",
                  "retain-dates": "PS3.15 Annex E Basic Profile, Retain Longitudinal Temporal Information Full Dates",
                  "shift-dates": "PS3.15 Annex E Basic Profile, Retain Longitudinal Temporal Information Modified "
                                 "Dates"}[self.profile]
        methods = [f"medfoundry deid: {method} (Table E.1-1 {TABLE_VERSION[-5:]})"[:64]]
        concepts = [codes.DCM.BasicApplicationConfidentialityProfile]
        if cleaned:
            from medfoundry.io.deid_pixels import deid_version

            methods.append(f"Clean Pixel Data: regions of the deid {deid_version()} filters")
            concepts.append(codes.DCM.CleanPixelDataOption)
        ds.DeidentificationMethod = methods if len(methods) > 1 else methods[0]
        if self.profile == "retain-dates":
            concepts.append(codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption)
        elif self.profile == "shift-dates":
            concepts.append(codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption)
        items = []
        for concept in concepts:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
                concept.value, concept.scheme_designator, concept.meaning)
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        if self.profile != "basic":
            ds.LongitudinalTemporalInformationModified = "MODIFIED" if self.profile == "shift-dates" else "UNMODIFIED"
        else:
            ds.LongitudinalTemporalInformationModified = "REMOVED"

    # ----- key file -------------------------------------------------------------------------------------------
    def key(self) -> dict[str, Any]:
        """The re-identification key: the secret, the profile and every mapping made (original → new)."""
        return {"format": "medfoundry-deid-key/1", "profile": self.profile, "secret": self.secret.hex(),
                "patients": dict(self.patients), "uids": dict(self.uids), "date_shift_days": dict(self.date_shifts)}

    @classmethod
    def from_key(cls, path: str | Path, profile: str | None = None) -> Deidentifier:
        """A deidentifier that continues the mapping of an existing key file (same secret, same pseudonyms)."""
        try:
            data = json.loads(Path(path).read_text())
            secret = bytes.fromhex(data["secret"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputContractError(f"{path} is not a medfoundry de-identification key ({exc})") from exc
        return cls(profile=profile or data.get("profile", "basic"), secret=secret, uids=dict(data.get("uids", {})),
                   patients=dict(data.get("patients", {})), date_shifts=dict(data.get("date_shift_days", {})))

    def save_key(self, path: str | Path) -> Path:
        """Write :meth:`key` to ``path`` atomically, readable by its owner only."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.key(), fh, indent=1)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return path


def _vr(tag: tuple[int, ...]) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(tag[0] << 16 | tag[1]))
    except KeyError:
        return ""


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence pydicom's warnings and log records (they can quote header values) while a file is handled."""
    import logging
    import warnings

    logger = logging.getLogger("pydicom")
    disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def deidentify_bytes(data: bytes | str | Path, deidentifier: Deidentifier, source: str = "<upload>") -> bytes:
    """De-identify one DICOM file, given as its bytes or its path; returns the de-identified file's bytes.

    This is the entry point for a server (``serve --deid``): call it on the received bytes (or the temporary
    file they were written to) before anything is stored, and store only what it returns. ``source`` is the
    name used in errors, so pass a neutral one (not the upload's own file name). Nothing is written anywhere;
    pydicom's warnings and log records are silenced while it runs, and error reasons name no attribute value.

    Raises :class:`DeidentificationError` (or its :class:`~medfoundry.io.deid_pixels.BurnedInAnnotationError`)
    for a non-DICOM or unusable file, burned-in annotation not cleaned, or a result that cannot be encoded.
    """
    import io

    import pydicom

    from medfoundry.io.dicom import read_dataset

    with _quiet():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(data) if isinstance(data, (str, Path)) else Path(tmp) / "in.dcm"
            if not isinstance(data, (str, Path)):
                path.write_bytes(data)
            try:
                ds = read_dataset(path)
            except ImageReadError:
                raise DeidentificationError(source, "not a readable DICOM file") from None
            except OSError as exc:
                raise DeidentificationError(source, f"cannot read it ({type(exc).__name__})") from None
        deidentifier.deidentify_dataset(ds, source)
        buffer = io.BytesIO()
        try:
            pydicom.dcmwrite(buffer, ds)
        except Exception as exc:  # pydicom raises many types for datasets it cannot encode (text may quote values)
            raise DeidentificationError(source, f"cannot write the result ({type(exc).__name__})") from exc
    return buffer.getvalue()


def _dicom_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.upper() == "DICOMDIR" or p.stat().st_size == 0:
            continue
        with open(p, "rb") as fh:
            head = fh.read(132)
        if head[128:132] == b"DICM" or p.suffix.lower() in (".dcm", ".dicom", ".ima"):
            files.append(p)
    return files


def deidentify(src: str | Path, out: str | Path, *, profile: str = "basic", key: str | Path | None = None,
               overwrite: bool = False, clean_pixels: bool = False,
               report: dict[str, CleanedRegions] | None = None) -> list[Path]:
    """De-identify a DICOM file, or every DICOM file under a folder, into ``out``.

    A file becomes the file ``out``; a folder becomes the folder ``out`` holding ``<new SOP Instance
    UID>.dcm`` files (original file names can carry identity). Everything is written into a temporary file or
    folder beside ``out`` and renamed into place only when every object succeeded: a failure leaves no output.
    With ``key``, the mapping is continued from that key file when it exists and written back to it (mode
    0600); without it, the secret lives only in memory and the mapping cannot be reversed.

    Objects that declare burned-in annotation are refused, unless ``clean_pixels`` (see :class:`Deidentifier`);
    every such refusal in a folder is collected and reported in one :class:`BurnedInAnnotationError` naming each
    file, and nothing is written. ``report``, when given, receives the source path → regions cleaned.

    Returns the written file paths. Raises :class:`DeidentificationError` (naming the file) or
    :class:`OutputExistsError`.
    """
    src, out = Path(src), Path(out)
    if not src.exists():
        raise DeidentificationError(src, "no such file or folder")
    if out.exists() and not overwrite:
        raise OutputExistsError(out)
    deid = Deidentifier.from_key(key, profile) if key and Path(key).exists() else Deidentifier(profile=profile)
    deid.clean_pixels = clean_pixels
    files = [src] if src.is_file() else _dicom_files(src)
    if not files:
        raise DeidentificationError(src, "no DICOM files found")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    written: list[tuple[Path, str]] = []
    burned: list[BurnedInAnnotationError] = []
    try:
        for path in files:
            try:
                data = deidentify_bytes(path, deid, str(path))
            except BurnedInAnnotationError as exc:
                burned.append(exc)  # go on: every such image is named at once
                continue
            name = f"{len(written):06d}.dcm"
            (tmp / name).write_bytes(data)
            written.append((tmp / name, _sop_uid(data) or name))
        if burned:
            if len(files) == 1:
                raise burned[0]
            listed = "; ".join(f"{exc.path}: {exc.reason}" for exc in burned)
            raise BurnedInAnnotationError(src, f"{len(burned)} of {len(files)} images were refused for burned-in "
                                               f"annotation, nothing was written: {listed}")
        if src.is_file():
            final = [out]
            if out.is_dir():
                shutil.rmtree(out)
            os.replace(written[0][0], out)
        else:
            final = []
            for path, uid in written:
                target = tmp / f"{uid}.dcm"
                if target.exists() and target != path:
                    raise DeidentificationError(src, f"two files hold the same SOP Instance ({uid})")
                os.replace(path, target)
                final.append(out / target.name)
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    if key:
        deid.save_key(key)
    if report is not None:
        report.update(deid.cleaned)
    return final


def _sop_uid(data: bytes) -> str | None:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    uid = str(ds.get("SOPInstanceUID", "") or "")
    meta = getattr(ds, "file_meta", None)
    uid = uid or (str(meta.get("MediaStorageSOPInstanceUID", "") or "") if meta is not None else "")
    return uid if uid and all(c.isdigit() or c == "." for c in uid) else None
