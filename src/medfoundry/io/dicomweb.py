"""DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store) through ``dicomweb-client``.

A series on a server is addressed as ``dicomweb+http://host:port/dicom-web/studies/<Study UID>/series/<Series
UID>`` (or ``dicomweb+https://``): the DICOMweb base URL of the server, then the study and the series. Reading
one lists the series' instances (QIDO-RS), retrieves the ones not yet cached (WADO-RS, transfer syntax as stored),
keeps each as ``<SOP Instance UID>.dcm`` in a local cache (``MEDFOUNDRY_DICOMWEB_CACHE`` or
``~/.cache/medfoundry/dicomweb``), and reads the cached folder with the same series reader as a local folder,
so the volume has the same array and geometry as the files on disk. Every failure raises :class:`PacsError`
naming the server, the operation and the reason, or :class:`ImageReadError` for a series that arrived incomplete.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medfoundry.errors import ImageReadError, InputContractError, PacsError
from medfoundry.io.image import MedImage

SCHEMES = ("dicomweb+http://", "dicomweb+https://")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_ADDRESS = re.compile(r"^(?P<base>https?://.+?)/studies/(?P<study>[^/]+)(?:/series/(?P<series>[^/]+))?/?$")
#: QIDO-RS attributes shown by :func:`search`.
SEARCH_FIELDS = ("PatientID", "StudyDate", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
                 "SeriesDescription", "NumberOfSeriesRelatedInstances")


def is_dicomweb(address: Any) -> bool:
    """Whether ``address`` is a ``dicomweb+http(s)://`` address (a string; paths never are)."""
    return isinstance(address, str) and address.startswith(SCHEMES)


@dataclass(frozen=True)
class SeriesAddress:
    """A parsed DICOMweb address: ``base`` (the server's DICOMweb root URL), ``study`` and ``series`` UIDs."""

    base: str
    study: str
    series: str | None = None

    def __str__(self) -> str:
        tail = f"/series/{self.series}" if self.series else ""
        return f"dicomweb+{self.base}/studies/{self.study}{tail}"


def parse_address(address: str) -> SeriesAddress:
    """Split a ``dicomweb+http(s)://…/studies/<UID>[/series/<UID>]`` address; raises InputContractError."""
    if not is_dicomweb(address):
        raise InputContractError(f"{address!r} is not a DICOMweb address (dicomweb+http://HOST/ROOT/studies/UID/"
                                 "series/UID)")
    match = _ADDRESS.match(address[len("dicomweb+"):])
    if not match:
        raise InputContractError(f"{address}: expected dicomweb+http://HOST/ROOT/studies/<Study UID>/series/<Series "
                                 "UID>")
    study, series = match["study"], match["series"]
    for uid in (study, series):
        if uid is not None and (not _UID.match(uid) or len(uid) > 64):
            raise InputContractError(f"{address}: {uid!r} is not a DICOM UID (digits and dots, at most 64)")
    return SeriesAddress(match["base"].rstrip("/"), study, series)


def _client(base: str) -> Any:
    try:
        from dicomweb_client.api import DICOMwebClient
    except ImportError as exc:
        raise InputContractError("DICOMweb needs dicomweb-client: pip install 'medfoundry[pacs]'") from exc
    client = DICOMwebClient(url=base, timeout=float(os.environ.get("MEDFOUNDRY_DICOMWEB_TIMEOUT", "120")))
    client.set_http_retry_params(retry=False)  # its retries also cover refused connections (minutes of back-off)
    return client


def _call(base: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one dicomweb-client request, turning transport and HTTP failures into PacsError."""
    import requests

    try:
        return fn(*args, **kwargs)
    except requests.exceptions.ConnectionError as exc:
        raise PacsError(base, what, f"server unreachable ({type(exc).__name__})") from exc
    except requests.exceptions.Timeout as exc:
        raise PacsError(base, what, "server did not answer in time") from exc
    except requests.exceptions.HTTPError as exc:
        status = getattr(exc.response, "status_code", "?")
        reason = getattr(exc.response, "reason", "") or str(exc)
        raise PacsError(base, what, f"server answered HTTP {status} {reason}".strip()) from exc
    except (ValueError, KeyError, TypeError) as exc:  # malformed answers (JSON, multipart, DICOM)
        raise PacsError(base, what, f"unusable answer ({type(exc).__name__}: {exc})") from exc


def _value(item: dict, keyword: str) -> Any:
    from pydicom.datadict import tag_for_keyword

    element = item.get(f"{tag_for_keyword(keyword):08X}", {})
    values = element.get("Value") or [None]
    value = values[0]
    if isinstance(value, dict):  # person names
        value = value.get("Alphabetic")
    return value


def search(url: str, *, patient: str | None = None, modality: str | None = None, study_date: str | None = None,
           study: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """QIDO-RS search for series on the server at ``url`` (its DICOMweb root, ``dicomweb+`` optional).

    Args:
        patient: Patient ID; modality: e.g. ``CT``; study_date: ``YYYYMMDD`` or a range ``YYYYMMDD-YYYYMMDD``;
        study: restrict to one Study Instance UID.

    Returns one dict per series with the keys of :data:`SEARCH_FIELDS` plus ``address`` (its dicomweb+ address).
    """
    base = url[len("dicomweb+"):] if is_dicomweb(url) else url
    base = base.rstrip("/")
    filters = {k: v for k, v in (("PatientID", patient), ("Modality", modality), ("StudyDate", study_date))
               if v}
    client = _client(base)
    rows = _call(base, "search", client.search_for_series, study_instance_uid=study, search_filters=filters,
                 fields=list(SEARCH_FIELDS), limit=limit)
    out = []
    for item in rows:
        row = {k: _value(item, k) for k in SEARCH_FIELDS}
        row["address"] = f"dicomweb+{base}/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}"
        out.append(row)
    return out


def cache_root() -> Path:
    """The DICOMweb instance cache: ``MEDFOUNDRY_DICOMWEB_CACHE`` or ``~/.cache/medfoundry/dicomweb``."""
    env = os.environ.get("MEDFOUNDRY_DICOMWEB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "medfoundry" / "dicomweb"


def _resolve_series(address: SeriesAddress, client: Any) -> str:
    """The series UID of ``address``; a study address must hold exactly one image series."""
    if address.series:
        return address.series
    rows = _call(address.base, "search", client.search_for_series, study_instance_uid=address.study,
                 fields=["SeriesInstanceUID", "Modality"])
    if not rows:
        raise PacsError(address.base, "search", f"no study {address.study} on the server")
    series = [(_value(r, "SeriesInstanceUID"), _value(r, "Modality")) for r in rows]
    if len(series) > 1:
        listing = "; ".join(f"{uid} ({mod})" for uid, mod in series)
        raise PacsError(address.base, "read", f"study {address.study} holds {len(series)} series (mixed); name one "
                                              f"with /series/<UID>: {listing}")
    return str(series[0][0])


def fetch_series(address: str | SeriesAddress, cache: str | Path | None = None) -> Path:
    """Make the series at ``address`` present in the local cache and return its folder.

    The folder holds exactly the series' instances as ``<SOP Instance UID>.dcm``: instances already cached are
    not retrieved again, instances the server no longer lists are removed. Raises :class:`PacsError` (server
    unreachable, unknown study or series, an instance that did not arrive).
    """
    addr = parse_address(address) if isinstance(address, str) else address
    client = _client(addr.base)
    series = _resolve_series(addr, client)
    listed = _call(addr.base, "search", client.search_for_instances, study_instance_uid=addr.study,
                   series_instance_uid=series, fields=["SOPInstanceUID"])
    sops = [str(_value(r, "SOPInstanceUID")) for r in listed]
    if not sops:
        raise PacsError(addr.base, "search", f"no series {series} in study {addr.study} on the server")
    bad = [s for s in sops if not _UID.match(s)]
    if bad:
        raise PacsError(addr.base, "search", f"the server listed malformed SOP Instance UIDs: {bad[:3]}")
    server = hashlib.sha256(addr.base.encode()).hexdigest()[:16]
    folder = Path(cache or cache_root()) / server / addr.study / series
    folder.mkdir(parents=True, exist_ok=True)
    wanted = set(sops)
    for stale in folder.glob("*.dcm"):
        if stale.stem not in wanted:
            stale.unlink()
    missing = [s for s in sops if not (folder / f"{s}.dcm").exists()]
    if missing:
        media = (("application/dicom", "*"),)
        if len(missing) == len(sops):
            datasets = _call(addr.base, "retrieve", client.retrieve_series, study_instance_uid=addr.study,
                             series_instance_uid=series, media_types=media)
        else:
            datasets = [_call(addr.base, "retrieve", client.retrieve_instance, study_instance_uid=addr.study,
                              series_instance_uid=series, sop_instance_uid=s, media_types=media) for s in missing]
        for ds in datasets:
            _save(ds, folder, wanted, addr.base)
        still = [s for s in sops if not (folder / f"{s}.dcm").exists()]
        if still:
            raise PacsError(addr.base, "retrieve", f"{len(still)} of {len(sops)} instances of series {series} did "
                                                   f"not arrive (first: {still[0]})")
    return folder


def _save(ds: Any, folder: Path, wanted: set[str], base: str) -> None:
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPInstanceUID", "") or (meta.get("MediaStorageSOPInstanceUID", "") if meta else ""))
    if sop not in wanted:
        raise PacsError(base, "retrieve", f"the server sent an instance that was not listed ({sop or 'no UID'})")
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    os.close(fd)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, folder / f"{sop}.dcm")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_dicomweb(address: str, cache: str | Path | None = None) -> MedImage:
    """Read the series at a ``dicomweb+`` address as a ``(Z, Y, X)`` volume (or a 2D image for one instance).

    The image is read by :func:`medfoundry.io.dicom.read_dicom_series` from the cache folder, so arrays and
    geometry equal a read of the same files on disk. ``source`` is the address. A series whose slice positions
    leave a gap of about two steps or more is refused (a slice is missing).
    """
    from dataclasses import replace

    from medfoundry.io.dicom import read_dicom_series

    addr = parse_address(address)
    folder = fetch_series(addr, cache)
    try:
        image = read_dicom_series(folder)
    except ImageReadError as exc:
        raise ImageReadError(str(addr), exc.reason) from None
    if image.is_volume and "slices" in image.meta:
        _check_complete(folder, str(addr))
    meta = {**image.meta, "series_folder": str(folder)}
    return replace(image, source=str(addr), meta=meta)


def _check_complete(folder: Path, where: str) -> None:
    """Refuse a series with a missing slice: a gap between neighbouring positions of 1.5 median steps or more."""
    from medfoundry.io.dicom import read_dataset

    headers = [read_dataset(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    try:
        iop = [float(x) for x in headers[0].ImageOrientationPatient]
        normal = np.cross(iop[:3], iop[3:])
        along = np.sort([float(np.dot([float(x) for x in h.ImagePositionPatient], normal)) for h in headers])
    except (AttributeError, ValueError, TypeError):
        return  # the series reader has already judged the geometry
    gaps = np.diff(along)
    if len(gaps) < 2:
        return
    step = float(np.median(gaps))
    holes = np.nonzero(gaps > 1.5 * step)[0]
    if len(holes):
        i = int(holes[0])
        raise ImageReadError(where, f"{len(holes)} gap(s) in the slice positions: {gaps[i]:.2f} mm between slices "
                                    f"{i} and {i + 1} at {along[i]:.2f} and {along[i + 1]:.2f} mm where the series "
                                    f"steps {step:.2f} mm (a slice is missing)")


def series_datasets(folder: str | Path) -> list[Any]:
    """The datasets of a cached series folder (pixel data included), in file-name order."""
    from medfoundry.io.dicom import read_dataset

    return [read_dataset(p) for p in sorted(Path(folder).glob("*.dcm"))]


def store(url: str, datasets: list[Any]) -> list[str]:
    """STOW-RS each dataset to the server at ``url`` (a DICOMweb root or any dicomweb+ address on it), one request
    per dataset, so a refusal names exactly what was and was not stored. Returns the stored SOP Instance UIDs.

    Each instance is looked up again (QIDO-RS) after its STOW answer, since some servers acknowledge instances
    that a server rule then discards. Raises :class:`PacsError` on the first refusal, naming the instances already
    stored before it.
    """
    base = parse_address(url).base if is_dicomweb(url) and "/studies/" in url else url.removeprefix("dicomweb+")
    client = _client(base)
    stored: list[str] = []
    for ds in datasets:
        sop = str(ds.SOPInstanceUID)
        kind = getattr(getattr(ds, "SOPClassUID", None), "name", "instance")
        done = f"; already stored: {', '.join(stored)}" if stored else "; nothing was stored"
        try:
            answer = _call(base, "store", client.store_instances, [ds])
        except PacsError as exc:
            raise PacsError(base, "store", f"{kind} {sop} refused ({exc.reason}){done}") from exc
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reason = failed[0].get("FailureReason", "?")
            raise PacsError(base, "store", f"{kind} {sop} refused (failure reason {reason}){done}")
        held = _call(base, "store", client.search_for_instances, study_instance_uid=str(ds.StudyInstanceUID),
                     series_instance_uid=str(ds.SeriesInstanceUID), search_filters={"SOPInstanceUID": sop},
                     fields=["SOPInstanceUID"])
        if not held:  # some servers acknowledge instances that a filter then discards
            raise PacsError(base, "store", f"{kind} {sop} was acknowledged but the server does not hold it "
                                           f"(discarded by a server rule){done}")
        stored.append(sop)
    return stored
