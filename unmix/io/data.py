"""Where public benchmark data and spectral libraries are found: the ``UNMIX_DATA`` setting."""
from __future__ import annotations

import os
from pathlib import Path

from unmix.errors import DataNotFoundError

#: The repository root when unmix runs from a checkout (editable install).
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The data folder: ``$UNMIX_DATA`` if set; else, from a checkout, ``../shared/data`` beside the
    repository root; else (an installed package) ``$XDG_DATA_HOME/unmix/data`` (``~/.local/share/unmix/data``).
    """
    configured = os.environ.get("UNMIX_DATA")
    if configured:
        return Path(configured).expanduser()
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT.parent / "shared" / "data"
    user_data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(user_data).expanduser() / "unmix" / "data"


def data_path(*parts: str) -> Path:
    """Path of a file under the data folder; raises DataNotFoundError naming it if it is absent."""
    path = data_dir().joinpath(*parts)
    if not path.exists():
        raise DataNotFoundError(
            f"{path}: not found; set UNMIX_DATA to the folder that holds the benchmark data "
            f"(currently {data_dir()})"
        )
    return path
