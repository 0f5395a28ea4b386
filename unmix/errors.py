"""Typed errors a user can meet, each with a one-sentence message and a process exit code.

Exit codes follow BSD sysexits: 2 usage, 65 bad data, 66 missing input, 73 cannot create output,
74 I/O error while writing.
"""
from __future__ import annotations

from os import PathLike


class UnmixError(Exception):
    """Base of every error unmix raises on purpose; ``exit_code`` is what the CLIs exit with."""

    exit_code = 1


class UsageError(UnmixError):
    """A bad argument or option value."""

    exit_code = 2


class InputError(UnmixError, ValueError):
    """An input file exists but its content is not what was expected."""

    exit_code = 65


class MissingInputError(UnmixError, FileNotFoundError):
    """An input file or folder does not exist."""

    exit_code = 66


class OutputError(UnmixError, OSError):
    """An output could not be created or written."""

    exit_code = 73


def _describe(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EnviError(InputError):
    """A malformed ENVI header or data file.

    The message names the file, the header key (or ``data file``) and what was expected, e.g.
    ``scene.hdr: key 'samples': expected a positive integer, got 'abc'``.
    """

    def __init__(self, path: str | PathLike, key: str, expected: str, got: object = None):
        self.path = str(path)
        self.key = key
        self.expected = expected
        self.got = got
        message = f"{self.path}: key {key!r}: expected {expected}"
        if got is not None:
            message += f", got {_describe(got)}"
        super().__init__(message)


class DataNotFoundError(MissingInputError):
    """A benchmark data set or spectral library is not where ``UNMIX_DATA`` points."""


def report_errors(program: str):
    """Decorator for a CLI entry point: an UnmixError becomes one line on stderr and its exit code.

    Unexpected OS errors while writing (full disk, permissions) exit 74 with one line; Ctrl-C exits 130.
    """
    import functools
    import sys

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except UnmixError as exc:
                print(f"{program}: error: {exc}", file=sys.stderr)
                sys.exit(exc.exit_code)
            except KeyboardInterrupt:
                print(f"{program}: interrupted", file=sys.stderr)
                sys.exit(130)
            except OSError as exc:
                print(f"{program}: error: {exc}", file=sys.stderr)
                sys.exit(74)

        return wrapper

    return decorate
