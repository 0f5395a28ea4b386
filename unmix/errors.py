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


def require_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (bools refused), within ``minimum..maximum``; else a UsageError naming ``name``."""
    import operator

    try:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise UsageError(f"{name} must be an integer, got {value!r}") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        low = "" if minimum is None else f">= {minimum}"
        high = "" if maximum is None else f"<= {maximum}"
        raise UsageError(f"{name} must be {' and '.join(p for p in (low, high) if p)}, got {number}")
    return number


def require_float(value: object, name: str, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as a finite float (bools refused), within ``minimum..maximum``; else a UsageError."""
    import math
    import numbers

    if isinstance(value, bool) or type(value).__name__ == "bool_" or not isinstance(value, numbers.Real):
        raise UsageError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or (minimum is not None and number < minimum) or (
            maximum is not None and number > maximum):
        low = "" if minimum is None else f">= {minimum}"
        high = "" if maximum is None else f"<= {maximum}"
        bounds = " and ".join(p for p in (low, high) if p) or "finite"
        raise UsageError(f"{name} must be {bounds}, got {value!r}")
    return number
