"""The errors topkattn raises for its users' mistakes.

Every error meant for a user (a bad value, a missing file, an unsupported model) derives from
`TopkattnError`; the command line prints those as one line and exits with code 2, and lets
anything else (a bug) keep its traceback. `InputError` is also a ValueError and `MissingFileError`
a FileNotFoundError, so code that catches the built-in types keeps working.
"""

from __future__ import annotations


class TopkattnError(Exception):
    """Base of the errors that describe a user's mistake (message: the bad value and what is
    allowed)."""


class InputError(TopkattnError, ValueError):
    """A value outside what is allowed."""


class MissingFileError(TopkattnError, FileNotFoundError):
    """A file or folder named by the user does not exist."""


#: the messages `warn_once` and `note_once` have given in this process
_SAID: set[str] = set()


def warn_once(msg: str, stacklevel: int = 2) -> None:
    """``warnings.warn(msg)`` the first time this process sees ``msg``."""
    if msg not in _SAID:
        import warnings

        _SAID.add(msg)
        warnings.warn(msg, stacklevel=stacklevel + 1)


def note_once(text: str) -> None:
    """Print ``note: <text>`` on stderr the first time this process sees ``text``."""
    if text not in _SAID:
        import sys

        _SAID.add(text)
        print(f"note: {text}", file=sys.stderr)


__all__ = ["InputError", "MissingFileError", "TopkattnError", "note_once", "warn_once"]
