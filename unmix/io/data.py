"""Where public benchmark data and spectral libraries are found: the ``UNMIX_DATA`` setting."""
from __future__ import annotations

import os
from pathlib import Path

from unmix.errors import DataNotFoundError

#: The repository root when unmix runs from a checkout (editable install).
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The data folder: ``$UNMIX_DATA`` if set, else ``../shared/data`` beside the repository root."""
    configured = os.environ.get("UNMIX_DATA")
    return Path(configured).expanduser() if configured else (REPO_ROOT.parent / "shared" / "data")


def data_path(*parts: str) -> Path:
    """Path of a file under the data folder; raises DataNotFoundError naming it if it is absent."""
    path = data_dir().joinpath(*parts)
    if not path.exists():
        raise DataNotFoundError(
            f"{path}: not found; set UNMIX_DATA to the folder that holds the benchmark data "
            f"(currently {data_dir()})"
        )
    return path
