"""The ``hwnas`` command line: one module per command group, each with ``register(subparsers)``.

User errors (:class:`search_space.UserError`) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from search_space.errors import UserError

# Each module registers its sub-commands and sets ``func`` on the parsed arguments.
COMMAND_MODULES = ["space", "supernet", "predictor", "latency", "search", "final", "export", "run"]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (all command groups)."""
    parser = argparse.ArgumentParser(
        prog="hwnas",
        description="Hardware-aware neural architecture search: find the most accurate network "
        "that meets a latency budget measured on your device.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"hwnas.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hwnas`` console script."""
    parser = build_parser()
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
        print("hwnas: interrupted; finished work is saved, re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
