"""What the ``memcachedlock`` command and its ``bench`` subcommand share: exit codes, errors, argument types.

Its own module so that ``bench`` (run by ``cli``) need not import ``cli``.
"""

from __future__ import annotations

import argparse

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A subcommand failed; ``code`` is the exit code, the message one line."""

    def __init__(self, message: str, code: int = EXIT_NO) -> None:
        super().__init__(message)
        self.code = code


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a whole number" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("%r must be at least 1" % text)
    return value


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text) from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("%r must be a finite number above 0" % text)
    return value
