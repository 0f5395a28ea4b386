"""Where ``unmix-run`` keeps a scene's maps: in memory when they are small, in a scratch folder when large.

The scene-sized maps of an H x W scene unmixed into p endmembers are float32: the abundances and the
per-endmember uncertainty (p values a pixel each), the uncertainty and the RMSE (one each), so
``4 H W (2p + 2)`` bytes together (:func:`maps_bytes`). Above :data:`MAPS_IN_MEMORY_MB` MiB they live as
:class:`unmix.io.diskarray.DiskArray` files in a temporary folder that is removed once the bundle is
written, so a large scene needs no more memory than a small one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import ContextManager

from unmix.errors import UsageError

__all__ = ["MAPS_IN_MEMORY_MB", "map_workspace", "maps_bytes", "maps_in_memory_bytes"]

#: Above this size in MiB (the maps together, :func:`maps_bytes`), the maps are kept on disk rather than
#: in memory; the environment variable ``UNMIX_MAPS_IN_MEMORY_MB`` overrides it (0: always on disk).
MAPS_IN_MEMORY_MB = 64


def maps_bytes(height: int, width: int, endmembers: int) -> int:
    """Bytes of the float32 maps of a ``height`` x ``width`` scene with ``endmembers`` endmembers."""
    return height * width * 4 * (2 * endmembers + 2)


def maps_in_memory_bytes() -> float:
    """The largest maps kept in memory, in bytes: ``UNMIX_MAPS_IN_MEMORY_MB`` or :data:`MAPS_IN_MEMORY_MB`."""
    value = os.environ.get("UNMIX_MAPS_IN_MEMORY_MB")
    if value is None:
        return MAPS_IN_MEMORY_MB * 2**20
    try:
        limit = float(value)
    except ValueError:
        limit = -1.0
    if not limit >= 0:
        raise UsageError(f"UNMIX_MAPS_IN_MEMORY_MB must be a number of MiB >= 0, got {value!r}")
    return limit * 2**20


def map_workspace(height: int, width: int, endmembers: int) -> ContextManager[str | None]:
    """A context giving the folder to keep the maps in (a scratch folder removed on exit), or None for memory."""
    if maps_bytes(height, width, endmembers) > maps_in_memory_bytes():
        return tempfile.TemporaryDirectory(prefix="unmix-run-")
    return contextlib.nullcontext(None)
