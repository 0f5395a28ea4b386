"""Shared test fixtures.

Tests that need the public benchmark data use the ``data_dir`` fixture (or ``need_data``): they skip,
with the reason, where the folder is absent, and fail where ``CI=true`` so a wrong path never hides
behind a skip.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from unmix.io.data import data_dir as _data_dir


def need_data(*parts: str) -> Path:
    """Path under the data folder; skips the test if absent (fails instead when CI=true)."""
    path = _data_dir().joinpath(*parts)
    if not path.exists():
        reason = f"benchmark data not found at {path} (set UNMIX_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; CI must have it")
        pytest.skip(reason)
    return path


@pytest.fixture
def data_dir() -> Path:
    return need_data()
