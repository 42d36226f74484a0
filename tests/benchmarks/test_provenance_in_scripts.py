"""Every ``benchmarks/*.py`` script that writes a results file records its provenance (issue 13, item 4).

A static check (AST, nothing is run): the script imports :func:`medfoundry.eval.provenance.collect` and calls it,
and the dict it writes has a ``"provenance"`` key (a dict literal key, or ``result["provenance"] = ...``). A
script that runs the evaluation harness (``run_benchmark``, whose report already carries ``collect``'s output)
may write the report's provenance instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"

# Scripts allowed to write results without provenance: none (every script calls collect()).
KNOWN_EXCEPTIONS: set[str] = set()

WRITERS = {"write_text", "write_bytes", "dump", "savez", "savez_compressed", "to_csv", "to_parquet"}


def writes_results(tree: ast.AST) -> bool:
    """Does the script write a file (``Path.write_text``, ``json.dump``, ``np.savez``, ``open(..., "w")``)?"""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr in WRITERS:
            return True
        if isinstance(node.func, ast.Name) and node.func.id == "open" and any(
                isinstance(a, ast.Constant) and isinstance(a.value, str) and set(a.value) & {"w", "a"}
                for a in [*node.args[1:], *(k.value for k in node.keywords if k.arg == "mode")]):
            return True
    return False


def imports_collect(tree: ast.AST) -> bool:
    return any(isinstance(node, ast.ImportFrom) and node.module == "medfoundry.eval.provenance"
               and any(alias.name == "collect" for alias in node.names) for node in ast.walk(tree))


def calls(tree: ast.AST, name: str) -> bool:
    return any(isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id == name)
        or (isinstance(node.func, ast.Attribute) and node.func.attr == name)) for node in ast.walk(tree))


def has_provenance_key(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "provenance"
                                              for k in node.keys):
            return True
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.slice, ast.Constant) and node.slice.value == "provenance":
            return True
    return False


def problems(source: str) -> list[str]:
    """What is missing for a script's results to carry provenance (empty: nothing, or it writes no file)."""
    tree = ast.parse(source)
    if not writes_results(tree):
        return []
    missing = []
    via_harness = calls(tree, "run_benchmark")
    if not via_harness and not (imports_collect(tree) and calls(tree, "collect")):
        missing.append("does not import and call medfoundry.eval.provenance.collect")
    if not has_provenance_key(tree):
        missing.append('writes no "provenance" key')
    return missing


SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py"))


def test_scripts_found() -> None:
    assert len(SCRIPTS) >= 20 and set(SCRIPTS) >= KNOWN_EXCEPTIONS


@pytest.mark.parametrize("name", [n for n in SCRIPTS if n not in KNOWN_EXCEPTIONS])
def test_script_records_provenance(name: str) -> None:
    assert problems((BENCHMARKS / name).read_text(encoding="utf-8")) == [], name


def test_harness_route_records_collect() -> None:
    """The harness's report (which ``eval_speed.py`` writes) gets its provenance from collect()."""
    tree = ast.parse((ROOT / "src" / "medfoundry" / "eval" / "runner.py").read_text(encoding="utf-8"))
    assert imports_collect(tree) and calls(tree, "collect") and has_provenance_key(tree)


@pytest.mark.parametrize(("source", "expected"), [
    ('import json\nfrom pathlib import Path\nPath("r.json").write_text(json.dumps({"x": 1}))\n',
     ["does not import and call medfoundry.eval.provenance.collect", 'writes no "provenance" key']),
    ('from medfoundry.eval.provenance import collect\nimport json\n'
     'open("r.json", "w").write(json.dumps({"x": 1, "cpu": collect()["machine"]}))\n',
     ['writes no "provenance" key']),
    ('import json\nout = {"provenance": {"cpu": "lscpu"}}\njson.dump(out, open("r.json", "w"))\n',
     ["does not import and call medfoundry.eval.provenance.collect"]),
    ('from medfoundry.eval.provenance import collect\nimport json\nout = {}\nout["provenance"] = collect()\n'
     'json.dump(out, open("r.json", "w"))\n', []),
    ('print("reads only")\n', []),
])
def test_checker_flags_missing_provenance(source: str, expected: list[str]) -> None:
    assert problems(source) == expected
