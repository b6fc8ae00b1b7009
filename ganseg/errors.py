"""The one error type users see without a traceback.

`UserError` marks a problem the user can fix: a missing or corrupt file, a bad argument, an output
path that cannot be written. The CLI prints its message on one line (it should name the file and the
fix) and exits 2. Every other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message names the file or argument and what to do."""
