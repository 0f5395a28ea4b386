"""numpy values as strict JSON (RFC 8259): the one conversion for the JSON documents unmix writes.

:func:`to_plain` makes a copy that :func:`json.dumps` accepts with ``allow_nan=False``:

- numpy scalars -> Python numbers and bools (``np.float32(0.5)`` -> ``0.5``), arrays -> nested lists,
  tuples -> lists, mapping keys -> strings, ``Path`` -> its text;
- NaN, +inf and -inf -> ``null``: strict JSON has neither NaN nor Infinity, and the documents are read by
  other programs than Python (the C++ runtime reads ``manifest.json``; ``config.json`` and ``run.json``
  are read by any JSON tool). A value that may be missing or non-finite is read back as ``None``.

Anything else (an object JSON cannot hold) is left for :func:`json.dumps` to refuse with TypeError.
"""
from __future__ import annotations

import json
import math
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = ["dumps", "to_plain"]


def to_plain(value: Any) -> Any:
    """A JSON-ready copy of ``value`` under the module's rules (non-finite floats -> None)."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return to_plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, PurePath):
        return str(value)
    return value


def dumps(value: Any, indent: int | None = None) -> str:
    """``json.dumps(to_plain(value), indent=indent, allow_nan=False)``; TypeError for what JSON cannot hold."""
    return json.dumps(to_plain(value), indent=indent, allow_nan=False)
