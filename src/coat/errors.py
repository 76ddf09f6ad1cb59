"""The errors ``coat`` raises for bad input: every one is a ``CoatError``.

Each message is one sentence that names the problem and the fix. The ``coat`` command prints a
``CoatError`` as one line and exits with status 2; any other exception is a bug and shows its
traceback. Each class also derives from the built-in exception that fits it, so
``except ValueError`` (or ``FileExistsError``, ...) keeps catching what it caught before.
"""

from __future__ import annotations


class CoatError(Exception):
    """Base of every error caused by the caller's input, files or environment (not by a bug)."""


class UsageError(CoatError, ValueError):
    """An argument, option or configuration value that cannot be used."""


class OutputExistsError(CoatError, FileExistsError):
    """A file or folder would be overwritten; the message names ``--overwrite`` or another output."""


class InputNotFoundError(CoatError, FileNotFoundError):
    """A file or folder the caller named does not exist."""
