"""The base of every error caused by user input (the CLI turns these into exit code 2)."""


class UserError(ValueError):
    """Bad input from a user: a one-line message naming the bad value and what was expected."""
