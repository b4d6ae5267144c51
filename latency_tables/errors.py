"""Errors and warnings of latency tables (user errors print as one line in the CLI)."""

from search_space.errors import UserError


class TableError(UserError):
    """A latency table that is missing, corrupt, foreign (another space or schema) or incomplete."""


class BackendError(UserError):
    """A measurement backend that cannot be made: unknown spec, provider, dtype or device."""


class FingerprintWarning(UserWarning):
    """A table is used on a machine that differs from the one it was measured on."""
