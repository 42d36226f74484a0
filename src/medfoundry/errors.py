"""The typed errors medfoundry raises.

Every failure a user can cause (a bad file, an unknown model, missing weights, an output that already exists)
raises a subclass of :class:`MedfoundryError`. The CLI catches exactly this base class, prints its message on
one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MedfoundryError(Exception):
    """Base class of every error medfoundry raises on purpose."""

    exit_code: int = 2


class ImageReadError(MedfoundryError):
    """An image file or folder could not be read. Carries the offending ``path`` and the ``reason``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path}: {reason}")


class ImageWriteError(MedfoundryError):
    """An image could not be written in the requested format."""


class OutputExistsError(MedfoundryError):
    """The output path exists and overwriting was not allowed."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        super().__init__(f"{self.path} already exists; pass --overwrite (overwrite=True) to replace it")


class UnknownModelError(MedfoundryError):
    """No registry record has this name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        close = [k for k in known if name.lower() in k.lower() or k.lower() in name.lower()][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `medfoundry models list`"
        super().__init__(f"unknown model {name!r}{hint}")


class RegistryError(MedfoundryError):
    """A model record or self-describing checkpoint directory is malformed."""


class ModelUnavailableError(RegistryError):
    """A registered model that medfoundry cannot run on this machine: its record's ``arch_config["unavailable"]``
    says which reference package or weights are missing. Raised before any weights are looked for."""


class WeightsError(MedfoundryError):
    """Weights could not be found, fetched, verified or loaded."""


class WeightsNotFoundError(WeightsError):
    """The weights are not on this machine and cannot be fetched (offline, or no source)."""


class ChecksumMismatchError(WeightsError):
    """A weights file does not have the sha256 its record promises."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint needs arbitrary code to unpickle; medfoundry refuses to run it."""


class InputContractError(MedfoundryError):
    """An input does not satisfy a model's or a function's input contract (shape, channels, range)."""


class DeidentificationError(MedfoundryError):
    """A DICOM object could not be de-identified (or must not be, e.g. burned-in annotation); nothing was written."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot de-identify {self.path}: {reason}")


class PacsError(MedfoundryError):
    """A DICOMweb server could not be reached, refused a request, or answered with something unusable.

    Carries the ``url`` and the ``what`` (the operation that failed: search, retrieve, store)."""

    def __init__(self, url: str, what: str, reason: str) -> None:
        self.url = url
        self.what = what
        self.reason = reason
        super().__init__(f"{what} {url}: {reason}")


class EndpointError(MedfoundryError):
    """A language-model HTTP endpoint could not be reached, timed out or answered with an error."""
