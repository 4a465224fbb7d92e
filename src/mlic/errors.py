"""The one base class of every mistake a user can fix: a bad flag, value, file, line or checkpoint.

The CLI prints such an error as one line, ``mlic <command>: error: ...``, and exits with 2; anything else
that escapes is a bug in mlic and keeps its traceback. Each layer derives its own error from this class
(``ConfigError``, ``DataError``, ``CheckpointError``...), so callers can catch either.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user asked for or gave cannot work; the message names the flag, key, file or line."""


class MissingExtraError(UserError, ImportError):
    """An optional part of mlic is used whose packages are not installed; the message names the extra."""
