"""What every command shares: its one-line help, listed here so that ``hwnas --help`` needs no
command module (their imports cost seconds: torch, scikit-learn, Optuna), and the shape of a
command with sub-actions (``hwnas latency build``)."""

from __future__ import annotations

# Each command lives in hwnas.cli.<name>, whose ``register(subparsers)`` adds its arguments.
COMMANDS = {
    "space": "inspect a search space",
    "supernet": "train a supernet, evaluate its subnets",
    "predictor": "accuracy datasets and accuracy predictors",
    "latency": "latency lookup tables: build, query, validate",
    "search": "search Pareto-optimal architectures per device",
    "final": "train chosen models and baselines alone, measure them side by side",
    "export": "export architectures to ONNX",
    "run": "train, measure, search and export in one go",
    "status": "show the stages and progress of a run folder",
}


def add_command(sub, name: str, description: str):
    """Add command ``name`` (one of :data:`COMMANDS`, whose help it shows) to ``sub``."""
    return sub.add_parser(name, help=COMMANDS[name], description=description)


def command_group(sub, name: str, description: str):
    """Add command ``name`` to ``sub`` and return the subparsers of its required ACTION."""
    p = add_command(sub, name, description)
    return p.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)
