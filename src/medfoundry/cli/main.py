"""The ``medfoundry`` command: thin subcommands over the library, one module each.

Every subcommand turns its flags into one library call. A :class:`MedfoundryError` becomes one line on
stderr and exit status 2; no traceback is shown for user errors. Unless ``OMP_NUM_THREADS`` or
``MEDFOUNDRY_THREADS`` says otherwise, torch computes on the cores other jobs leave free
(:mod:`medfoundry.predict.threads`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medfoundry import __version__
from medfoundry.errors import MedfoundryError

# each module defines add_parser(subparsers) and registers its handler with set_defaults(func=...)
_COMMAND_MODULES = ("info", "convert", "models", "contrastive", "slide", "index", "segment", "train", "evaluate",
                    "report", "findings", "ask", "demo", "serve", "deid", "pacs", "batch")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the docs and the tests)."""
    import importlib

    parser = argparse.ArgumentParser(
        prog="medfoundry",
        description="Use, adapt and evaluate foundation models for medical images.",
    )
    parser.add_argument("--version", action="version", version=f"medfoundry {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        importlib.import_module(f"medfoundry.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medfoundry`` console script. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from medfoundry.predict.threads import fit_threads_to_load

    fit_threads_to_load()  # only the cores other jobs leave free (before torch starts its pool)
    try:
        return int(args.func(args) or 0)
    except MedfoundryError as exc:
        print(f"medfoundry: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medfoundry: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
