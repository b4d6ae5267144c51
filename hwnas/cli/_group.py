"""A command with sub-actions (``hwnas latency build``), the shape every command group shares."""

from __future__ import annotations


def command_group(sub, name: str, help: str, description: str):
    """Add command ``name`` to ``sub`` and return the subparsers of its required ACTION."""
    p = sub.add_parser(name, help=help, description=description)
    return p.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)
