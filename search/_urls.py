"""Storage URLs as messages, reports and ``hwnas status`` show them (no Optuna import: the status
command must stay fast)."""

from __future__ import annotations

import re


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (``postgresql://user:***@host/db``), for
    messages and reports; other storage specs unchanged."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", str(url))
