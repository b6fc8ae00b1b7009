"""The error types users see without a traceback.

`UserError` marks a problem the user can fix: a missing or corrupt file, a bad argument, an output
path that cannot be written. The CLI prints its message on one line (it should name the file and the
fix) and exits 2. Every other exception is a bug and keeps its traceback.

Why subclasses: older code and callers catch `ValueError` / `FileNotFoundError`. The library's
user-facing errors derive from `UserError` *and* from the built-in type they used to be, so both
`except UserError` (the CLI) and `except ValueError` (existing callers and tests) keep working,
while an ordinary `ValueError` raised by torch or numpy (a real bug) is no longer mistaken for a
user mistake.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message names the file or argument and what to do."""


class BadInput(UserError, ValueError):
    """A bad argument value or file content (also a `ValueError`, for existing callers)."""


class MissingFile(UserError, FileNotFoundError):
    """A required input file or folder does not exist (also a `FileNotFoundError`)."""

    def __str__(self) -> str:  # OSError's str() would prepend an errno when given two arguments
        return str(self.args[0]) if self.args else ""


def one_line(message: str) -> str:
    """Collapse whitespace/newlines so a message stays one line (library errors quote file names)."""
    return " ".join(str(message).split())
