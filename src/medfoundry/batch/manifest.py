"""Batch manifests: one row per item (CSV or Parquet), checked before any work starts.

Columns (names are case-sensitive):

- ``path`` (or ``image``): an image file, a DICOM series folder, or a ``dicomweb+http(s)://…/series/<UID>``
  address. Relative paths are taken from the manifest's folder. Required.
- ``id``: the item's identifier in the outputs (optional; default: the path, with ``|slice=K`` and, for
  segmentation, ``|boxes=…|points=…`` appended when those columns are filled). Rows with the same id are
  duplicates: the first is processed, the others go to the errors table.
- ``slice``: which slice of a volume (optional; default the middle slice).
- ``labels`` (classify): comma-separated candidate labels of this row (optional; default the job's labels).
- ``boxes`` / ``points`` (segment, at least one of the two columns): boxes ``x0,y0,x1,y1`` (XYXY, image pixels)
  and points ``x,y[,label]`` (label 1 inside, 0 outside), several separated by ``;``, or as a JSON list of lists.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfoundry.errors import InputContractError

TASKS = ("embed", "classify", "segment")
PATH_COLUMNS = ("path", "image")


@dataclass
class Manifest:
    """The rows to process (each a dict with ``row``, ``id``, ``source`` and the task's fields, as strings or
    None) and the duplicate rows (with the row number of the one kept)."""

    rows: list[dict[str, Any]]
    duplicates: list[dict[str, Any]] = field(default_factory=list)


def _cell(value: Any) -> str | None:
    """A manifest cell as a stripped string, or None when empty/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    text = str(value).strip()
    return text or None


def _read_table(path: Path) -> list[dict[str, Any]]:
    if path.suffix.lower() == ".parquet" or path.is_dir():
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            from medfoundry.errors import MedfoundryError

            raise MedfoundryError("Parquet manifests need pyarrow: pip install 'medfoundry[batch]'") from exc
        try:
            return pq.read_table(path).to_pylist()
        except (OSError, ValueError) as exc:
            raise InputContractError(f"cannot read the Parquet manifest {path}: {exc}") from exc
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputContractError(f"cannot read the CSV manifest {path}: {type(exc).__name__}: {exc}") from exc


def read_manifest(path: str | Path, task: str) -> Manifest:
    """Read and check the manifest at ``path`` for ``task`` (embed, classify, segment).

    Raises InputContractError for a missing or unreadable file, no rows, no ``path``/``image`` column, or (segment)
    neither a ``boxes`` nor a ``points`` column. Problems of single rows (an empty path, a bad box, an unreadable
    image) do not stop the job: they are reported in the errors table.
    """
    if task not in TASKS:
        raise InputContractError(f"unknown batch task {task!r}: use one of {', '.join(TASKS)}")
    path = Path(path)
    if not path.exists():
        raise InputContractError(f"no manifest at {path}")
    table = _read_table(path)
    if not table:
        raise InputContractError(f"{path}: the manifest has no rows")
    columns = set(table[0])
    column = next((c for c in PATH_COLUMNS if c in columns), None)
    if column is None:
        raise InputContractError(f"{path}: the manifest needs a 'path' (or 'image') column; it has "
                                 f"{', '.join(sorted(columns)) or 'none'}")
    if task == "segment" and not {"boxes", "points"} & columns:
        raise InputContractError(f"{path}: a segment manifest needs a 'boxes' or a 'points' column (prompts in image "
                                 "pixels: x0,y0,x1,y1 and x,y[,label], several separated by ';')")
    base = path.parent if path.is_file() else path
    rows, seen, duplicates = [], {}, []
    for number, raw in enumerate(table):
        source = _cell(raw.get(column))
        if source is not None and not source.startswith(("dicomweb+http://", "dicomweb+https://")) \
                and not Path(source).is_absolute():
            source = str(base / source)
        row: dict[str, Any] = {"row": number, "source": source or "", "slice": _cell(raw.get("slice"))}
        if task == "classify":
            row["labels"] = _cell(raw.get("labels"))
        if task == "segment":
            row["boxes"], row["points"] = _cell(raw.get("boxes")), _cell(raw.get("points"))
        row["id"] = _cell(raw.get("id")) or default_id(row, task)
        if row["id"] in seen:
            duplicates.append({**row, "duplicate_of": seen[row["id"]]})
            continue
        seen[row["id"]] = number
        rows.append(row)
    return Manifest(rows, duplicates)


def default_id(row: dict[str, Any], task: str) -> str:
    """The id of a row without an ``id`` cell: its source, with the slice and prompts that make it another item."""
    parts = [row["source"] or f"row {row['row']}"]
    if row.get("slice") is not None:
        parts.append(f"slice={row['slice']}")
    if task == "segment":
        parts += [f"{k}={row[k]}" for k in ("boxes", "points") if row.get(k)]
    return "|".join(parts)


def parse_numbers(text: str | None, sizes: tuple[int, ...], what: str) -> list[list[float]]:
    """``"1,2,3,4; 5,6,7,8"`` or ``"[[1,2,3,4],[5,6,7,8]]"`` → lists of floats of one of ``sizes`` each (empty
    for None); InputContractError naming ``what`` otherwise."""
    if not text:
        return []
    try:
        if text.lstrip().startswith("["):
            values = json.loads(text)
            if values and not isinstance(values[0], list):
                values = [values]
        else:
            values = [[float(v) for v in part.split(",")] for part in text.split(";") if part.strip()]
        out = [[float(v) for v in item] for item in values]
    except (ValueError, TypeError) as exc:
        raise InputContractError(f"{what} {text!r} must be numbers ({exc})") from None
    for item in out:
        if len(item) not in sizes or not all(math.isfinite(v) for v in item):
            raise InputContractError(f"{what} {item} needs {' or '.join(map(str, sizes))} finite numbers")
    return out
