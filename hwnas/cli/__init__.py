"""The ``hwnas`` command line: one module per command group, each with ``register(subparsers)``.

Only the module of the command being run is imported (``hwnas latency query`` needs no torch);
the others appear in ``hwnas --help`` by their one-line help (:data:`hwnas.cli._group.COMMANDS`).
User errors (:class:`search_space.UserError`) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Iterable

from hwnas.cli._group import COMMANDS
from search_space.errors import UserError


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with ``commands`` (default: all) in full; the other commands are
    listed by name and help only, without importing their modules."""
    parser = argparse.ArgumentParser(
        prog="hwnas",
        description="Hardware-aware neural architecture search: find the most accurate network "
        "that meets a latency budget measured on your device.",
    )
    full = set(COMMANDS if commands is None else commands)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help in COMMANDS.items():
        if name in full:
            importlib.import_module(f"hwnas.cli.{name}").register(sub)
        else:
            sub.add_parser(name, help=help)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hwnas`` console script."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    # The top-level parser takes no option besides --help, so the command is the first word.
    parser = build_parser([a for a in argv[:1] if a in COMMANDS])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"hwnas: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`hwnas latency list | head`): exit quietly. Python flushes stdout
        # at exit, so point it at devnull first, as the signal module's documentation advises.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:
        if not _caused_by_interrupt(e):
            raise
        return _interrupted()


def _interrupted() -> int:
    print("hwnas: interrupted; finished work is saved, re-run the same command to resume", file=sys.stderr)
    return 130


def _caused_by_interrupt(e: BaseException) -> bool:
    """Whether Ctrl-C is behind ``e``: a C extension interrupted while it loads raises ImportError
    ("initialization failed") from the KeyboardInterrupt (seen with onnxruntime)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
