"""What every part of the speed benchmark shares: where things live, the timed model's shape, the networks.

The timed model unmixes a ``BANDS``-band cube into ``ENDMEMBERS`` abundance maps with ``TILE x TILE``
tiles; the cube-size series uses ``SERIES_BANDS`` bands.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The command line: its ``--worker`` mode runs each timed measurement in a fresh process.
SCRIPT = ROOT / "benchmarks" / "speed.py"
RESULTS = ROOT / "benchmarks" / "results"
CACHE = Path(tempfile.gettempdir()) / "unmix-speed-cache"
BANDS, ENDMEMBERS, TILE = 156, 4, 64
SERIES_BANDS = 200
GIB = 1024 ** 3
NETWORKS = ("hybridstu", "abundance_step", "spectra_step")
REFINEMENT = ("abundance_step", "spectra_step")


def log(message: str) -> None:
    print(f"speed.py: {message}", file=sys.stderr, flush=True)
