"""Lazy package attributes: names resolved on first use, so importing a package stays cheap."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_getattr(package: str, names: Mapping[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` that imports ``names[name] = (module, attribute)`` on first use."""

    def __getattr__(name: str) -> Any:
        if name in names:
            module, attribute = names[name]
            return getattr(importlib.import_module(module), attribute)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
