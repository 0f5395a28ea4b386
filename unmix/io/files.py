"""Files, numpy only: positioned reads and writes, and files replaced whole or not at all.

- :func:`read_into` / :func:`write_at`: ``pread``/``pwrite`` loops at a byte offset (seek + read/write
  where the platform has no positioned calls); no file position is shared, nothing is memory-mapped.
- :func:`replacing` / :func:`write_atomic`: a file is written under a temporary name in its own folder
  (``.<name>.*.tmp``), flushed to disk, given the permissions a plain ``open`` would (the umask's) and
  renamed over the target (``os.replace``). A reader sees the old file or the new one, never part of one;
  a failed or killed write leaves the old file as it was (and at most a hidden ``.tmp`` file).
- :func:`fsync_file`, :func:`fsync_dir`, :func:`fsync_tree`, :func:`publish_modes`: the same steps for a
  folder written whole and then renamed into place (``unmix-run`` bundles, checkpoints).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from unmix.errors import output_error

__all__ = ["fsync_dir", "fsync_file", "fsync_tree", "publish_modes", "read_into", "replacing", "write_at",
           "write_atomic"]


def read_into(handle, buffer: np.ndarray, offset: int) -> int:
    """Fill the uint8 ``buffer`` from ``offset``; returns the bytes read (fewer only at end of file)."""
    view = memoryview(buffer)
    total = 0
    while total < len(view):
        if hasattr(os, "preadv"):
            count = os.preadv(handle.fileno(), [view[total:]], offset + total)
        else:
            handle.seek(offset + total)
            count = handle.readinto(view[total:])
        if not count:
            break
        total += count
    return total


def write_at(handle, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at byte ``offset`` of the open file ``handle``."""
    written = 0
    while written < len(data):
        if hasattr(os, "pwrite"):
            count = os.pwrite(handle.fileno(), data[written:], offset + written)
        else:
            handle.seek(offset + written)
            count = handle.write(data[written:])
        written += count


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write; it replaces ``path`` on a clean exit.

    On leaving the block without an error the temporary file is flushed to disk, given the umask's
    permissions and renamed over ``path``; on an error (or KeyboardInterrupt) it is removed and the error
    goes on unchanged (OSError included: callers name what failed).
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        fsync_file(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | str, action: str = "write") -> Path:
    """Replace ``path`` with ``data`` (str as UTF-8) whole or not at all (:func:`replacing`); returns it.

    Missing parent folders are created. An OSError becomes :func:`unmix.errors.output_error`
    (``<path>: cannot <action> (...)``: WriteError for a full disk, OutputError otherwise).
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with replacing(target) as temporary:
            temporary.write_bytes(payload)
    except OSError as exc:
        raise output_error(target, action, exc) from None
    return target


def publish_modes(folder: Path) -> None:
    """Give ``folder`` and its files the permissions a plain ``mkdir``/``open`` would (the umask's).

    ``tempfile.mkdtemp`` makes private (0700) folders and some writers private (0600) files; once renamed
    into place they must look like any other output.
    """
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink():
            os.chmod(entry, 0o666 & ~mask)


def fsync_file(path: Path) -> None:
    """Flush one file's data to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folder itself to disk (before it is renamed into place)."""
    for entry in folder.iterdir():
        if entry.is_file():
            fsync_file(entry)
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (renames) to disk, where the platform allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
