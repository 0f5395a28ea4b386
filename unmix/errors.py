"""Typed errors a user can meet, each with a one-sentence message and a process exit code.

Exit codes follow BSD sysexits: 2 usage, 65 bad data, 66 missing input, 70 internal error (a bug:
please report it), 73 cannot create output, 74 I/O error while writing (disk full, file too large).
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
    """An output could not be created (a missing or unwritable folder, a file where a folder should be)."""

    exit_code = 73


class WriteError(OutputError):
    """Writing an output failed part way (disk full, file size limit, I/O error); nothing is left half-written."""

    exit_code = 74


#: errno values that mean "the write itself failed" (exit 74) rather than "the output cannot be created".
_WRITE_ERRNOS = {"ENOSPC", "EFBIG", "EIO", "EDQUOT"}


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name: for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def output_error(path: str | PathLike, action: str, exc: OSError) -> OutputError:
    """The typed error for an OSError met while writing ``path``: ``<path>: cannot <action> (<reason>)``.

    Disk full, file too large, quota and I/O errors give :class:`WriteError` (exit 74); anything else
    (permissions, a file where a folder should be) :class:`OutputError` (exit 73). An UnmixError is
    returned unchanged.
    """
    import errno as _errno

    if isinstance(exc, UnmixError):
        return exc  # type: ignore[return-value]
    names = {getattr(_errno, name, None) for name in _WRITE_ERRNOS} - {None}
    kind = WriteError if exc.errno in names else OutputError
    return kind(f"{path}: cannot {action} ({exc.strerror or exc})")


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


class MissingEnviFileError(EnviError, MissingInputError):
    """An ENVI header or data file that is not there (exit 66), named like :class:`EnviError`."""

    exit_code = 66


class DataNotFoundError(MissingInputError):
    """A benchmark data set or spectral library is not where ``UNMIX_DATA`` points."""


# Optional packages -> the pip extra that installs them (pyproject.toml); torch belongs to the program's own
# extra (``train`` for unmix-train, ``export`` for unmix-export).
OPTIONAL_PACKAGES = {
    "safetensors": "train", "earthlib": "train", "onnx": "export", "onnxscript": "export",
    "polygraphy": "export", "onnxslim": "export", "onnxruntime": "cpu", "openvino": "openvino",
    "matplotlib": "plot", "ray": "ray",
}


def missing_package_message(program: str, exc: ModuleNotFoundError, extra: str | None) -> str | None:
    """``"<program> needs <package>, which is not installed: pip install 'unmix[<extra>]'"``, or None.

    None when the missing module is not one of unmix's optional packages (then it is a real bug).
    """
    package = (exc.name or "").split(".")[0]
    wanted = extra if package == "torch" else OPTIONAL_PACKAGES.get(package)
    if not wanted:
        return None
    return f"{program} needs {package}, which is not installed: pip install 'unmix[{wanted}]'"


def report_errors(program: str, extra: str | None = None):
    """Decorator for a CLI entry point: an UnmixError becomes one line on stderr and its exit code.

    A missing optional package (torch, onnx, ...) is a usage error (exit 2) naming the extra that
    installs it (``extra``: the program's own, for torch).

    Unexpected OS errors (full disk, permissions) exit 74 with one line; Ctrl-C exits 130. Any other
    exception is a bug: one line naming it, exit 70, and the traceback only when ``UNMIX_DEBUG`` is set
    (no traceback ever reaches a user otherwise). ``SIGXFSZ`` (a file size limit) is ignored so that
    exceeding the limit is an ``EFBIG`` write error, handled like a full disk, not a core dump.
    """
    import functools
    import os
    import signal
    import sys

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            if hasattr(signal, "SIGXFSZ"):
                try:
                    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                except (ValueError, OSError):  # not the main thread
                    pass
            try:
                return func(*args, **kwargs)
            except UnmixError as exc:
                print(f"{program}: error: {exc}", file=sys.stderr)
                sys.exit(exc.exit_code)
            except KeyboardInterrupt:
                print(f"{program}: interrupted", file=sys.stderr)
                sys.exit(130)
            except ModuleNotFoundError as exc:
                message = missing_package_message(program, exc, extra)
                if message is None or os.environ.get("UNMIX_DEBUG"):
                    raise
                print(f"{program}: error: {message}", file=sys.stderr)
                sys.exit(UsageError.exit_code)
            except OSError as exc:
                print(f"{program}: error: {exc}", file=sys.stderr)
                sys.exit(74)
            except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
                if os.environ.get("UNMIX_DEBUG") or type(exc).__module__.split(".")[0] == "click":
                    raise  # click's own exceptions (usage errors, exit) are click's to report
                reason = str(exc).splitlines()[0] if str(exc) else ""
                print(f"{program}: internal error: {type(exc).__name__}: {reason[:300]} (a bug in unmix: "
                      "please report it, with UNMIX_DEBUG=1 for the traceback)", file=sys.stderr)
                sys.exit(70)

        return wrapper

    return decorate


def require_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int (bools refused; numpy integers accepted), within ``minimum..maximum``.

    Else a UsageError naming ``name`` and the range, e.g. ``tile must be an integer >= 1, got 0``.
    """
    import operator

    try:
        if isinstance(value, bool) or type(value).__name__ == "bool_":
            raise TypeError
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        low = "" if minimum is None else f" >= {minimum}"
        high = "" if maximum is None else f" <= {maximum}"
        got = repr(value) if number is None else number
        raise UsageError(f"{name} must be an integer{low}{' and' if low and high else ''}{high}, got {got}")
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
