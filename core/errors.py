"""The one user-error type of `launch`: a mistake the user can fix, reported as one line.

`launch` prints a UserError as `launch: error: <message>` on stderr and exits with EXIT_CODE (2),
whatever the subclass; nothing is submitted or half-written when one is raised. Any other
exception is a bug or an environment failure and keeps its traceback.
"""
from __future__ import annotations

import difflib
import re

EXIT_CODE = 2  # every user error, as argparse uses for bad usage


class UserError(Exception):
    """A problem the user can fix; the message is one line: what, where, what to do."""


class UsageError(UserError):
    """A command line argparse or a subcommand could not accept."""


class ConfigError(UserError, ValueError):
    """A user-facing configuration problem; its message is one line: what, where, what to do."""


class RunDirError(UserError, ValueError):
    """A folder given as a run is not one, or lacks the file a command needs."""


def one_line(message: str) -> str:
    """`message` with control characters spelled out, so a typed newline cannot split the line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], message)


def closest(word: str, choices) -> str | None:
    """The choice closest to `word` by difflib's measure, or None when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices) -> str:
    """The hint "; did you mean 'x'?" for the choice closest to `word`, or "" when none is
    close, to end a message with."""
    return f"; did you mean '{found}'?" if (found := closest(word, choices)) else ""
