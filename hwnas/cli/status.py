"""``hwnas status``: where a run folder stands (stages, progress, Ray cluster)."""

from __future__ import annotations

import sys

from hwnas.cli._group import add_command


def register(sub) -> None:
    """Add ``hwnas status``."""
    p = add_command(
        sub, "status",
        description="Show each stage of an hwnas run folder (done, running, interrupted, pending) with its "
        "time and outputs, the progress of a running stage (training epoch, accuracy subnets measured, "
        "latency blocks, search trials from the study storage), and the Ray cluster of a run that "
        "recorded one (dashboard link, nodes and the tasks running on each). Safe while the run works.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of hwnas run")
    p.set_defaults(func=_status)


def _status(args) -> int:
    from hwnas.run_status import status

    lines, error = status(args.run_dir)
    print("\n".join(lines))
    if error:  # the rest of the status is still worth showing; the missing part is named in one line
        print(f"hwnas: error: {error}", file=sys.stderr)
        return 2
    return 0
