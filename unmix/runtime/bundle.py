"""The output bundle of ``unmix-run``: written whole or not at all.

``<out>/<stem>/`` holds

- ``<stem>.abund.hdr/.img`` — ENVI float32 BSQ, one band per endmember (band names = endmember names),
  ``map info`` and ``coordinate system string`` copied verbatim from the input;
- ``<stem>.rmse.hdr/.img`` — per-pixel reconstruction RMSE; ``<stem>.uncertainty.hdr/.img`` when sampled;
- ``<stem>.endmembers.csv`` — header row, then one row per band: ``wavelength_nm`` (empty when unknown)
  and one column per endmember, in the abundance file's band order; ``<stem>.endmembers.sli/.sli.hdr``;
- ``<stem>.quicklook.png`` with the ``plot`` extra (skipped with a note otherwise);
- ``<stem>.run.json`` — versions, model hashes, input shape, scale applied, timings, per-endmember stats.

Everything is written into a hidden temporary folder beside the bundle, which is then renamed into
place (an older bundle of the same stem is moved aside first and removed after), so an interrupted
run leaves either the previous complete bundle or none.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from unmix.errors import OutputError
from unmix.io.envi import CubeWriter, write_library
from unmix.io.scene import Scene

RUN_FORMAT = "unmix-run/1"


def _write_map(path: Path, array: np.ndarray, scene: Scene, band_names: list[str], description: str) -> None:
    if array.ndim == 2:
        array = array[..., None]
    with CubeWriter(path, array.shape, band_names=band_names, map_info=scene.map_info,
                    coordinate_system=scene.coordinate_system, description=description) as writer:
        writer.write_tile(slice(0, array.shape[0]), slice(0, array.shape[1]), array)


def _endmember_csv(path: Path, endmembers: np.ndarray, names: list[str], wavelengths: np.ndarray | None) -> None:
    lines = [",".join(["wavelength_nm", *names])]
    for band in range(endmembers.shape[1]):
        wl = "" if wavelengths is None else f"{wavelengths[band]:.6g}"
        lines.append(",".join([wl, *(f"{value:.8g}" for value in endmembers[:, band])]))
    path.write_text("\n".join(lines) + "\n")


def endmember_stats(abundances: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """Per endmember: mean and max abundance, and the fraction of valid pixels where it dominates."""
    valid = np.isfinite(abundances).all(axis=-1)
    values = abundances[valid]
    dominant = np.argmax(values, axis=-1) if len(values) else np.zeros(0, dtype=int)
    stats = []
    for k, name in enumerate(names):
        column = values[:, k] if len(values) else np.zeros(0)
        stats.append({"name": name,
                      "mean_abundance": float(column.mean()) if len(column) else None,
                      "max_abundance": float(column.max()) if len(column) else None,
                      "dominant_fraction": float(np.mean(dominant == k)) if len(column) else None})
    return stats


def quicklook(path: Path, abundances: np.ndarray, endmembers: np.ndarray, names: list[str],
              wavelengths: np.ndarray | None, rmse: np.ndarray, title: str) -> str | None:
    """Write a PNG (abundance maps, endmember spectra, RMSE map); returns a note when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "quicklook skipped: install the 'plot' extra (pip install 'unmix[plot]') for matplotlib"
    p = len(names)
    columns = p + 2
    figure, axes = plt.subplots(1, columns, figsize=(2.6 * columns, 2.8), constrained_layout=True)
    for k in range(p):
        image = axes[k].imshow(abundances[..., k], vmin=0, vmax=1, cmap="viridis")
        axes[k].set_title(names[k], fontsize=9)
        axes[k].axis("off")
    figure.colorbar(image, ax=axes[p - 1], fraction=0.046)
    x = wavelengths if wavelengths is not None else np.arange(endmembers.shape[1])
    for k in range(p):
        axes[p].plot(x, endmembers[k], label=names[k], linewidth=1)
    axes[p].set_xlabel("wavelength (nm)" if wavelengths is not None else "band")
    axes[p].set_ylabel("reflectance")
    axes[p].legend(fontsize=6)
    axes[p].set_title("endmembers", fontsize=9)
    image = axes[p + 1].imshow(rmse, cmap="magma")
    axes[p + 1].set_title("reconstruction RMSE", fontsize=9)
    axes[p + 1].axis("off")
    figure.colorbar(image, ax=axes[p + 1], fraction=0.046)
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None


def write_bundle(out_dir: str | Path, scene: Scene, result: Any, run_info: dict[str, Any],
                 plot: bool = True) -> Path:
    """Write ``out_dir/<scene.name>/`` atomically from an :class:`unmix.runtime.unmixer.Result`; return it."""
    out_dir = Path(out_dir)
    stem = scene.name
    final = out_dir / stem
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{stem}.tmp-", dir=out_dir))
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create the output folder: {exc.strerror or exc}") from None
    try:
        names = list(result.names)
        _write_map(staging / f"{stem}.abund", result.abundances, scene, names,
                   f"unmix abundances of {stem}")
        _write_map(staging / f"{stem}.rmse", result.rmse, scene, ["rmse"], f"unmix reconstruction RMSE of {stem}")
        if result.uncertainty is not None:
            _write_map(staging / f"{stem}.uncertainty", result.uncertainty, scene, ["uncertainty"],
                       f"unmix abundance uncertainty (std across samples) of {stem}")
        _endmember_csv(staging / f"{stem}.endmembers.csv", result.endmembers, names, scene.wavelengths)
        write_library(staging / f"{stem}.endmembers.sli", result.endmembers, wavelengths=scene.wavelengths,
                      names=names, description=f"unmix endmembers of {stem}")
        notes = list(result.notes)
        if plot:
            note = quicklook(staging / f"{stem}.quicklook.png", result.abundances, result.endmembers, names,
                             scene.wavelengths, result.rmse, f"{stem}: {len(names)} endmembers")
            if note:
                notes.append(note)
        info = {"format": RUN_FORMAT, **run_info, "notes": notes,
                "endmembers": endmember_stats(result.abundances, names),
                "timings": result.timings, "settings": result.config}
        (staging / f"{stem}.run.json").write_text(json.dumps(info, indent=2, default=_plain) + "\n")
        _swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _swap_in(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``; an existing ``final`` is moved aside first and removed after."""
    aside = None
    try:
        if final.exists():
            if not (final.is_dir() and any(final.glob("*.run.json"))):
                raise OutputError(f"{final}: exists and is not an unmix output bundle; choose another --out")
            aside = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, aside)
        os.replace(staging, final)
    except OSError as exc:
        if aside is not None and not final.exists():
            os.replace(aside, final)
        raise OutputError(f"{final}: cannot write the output bundle: {exc.strerror or exc}") from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
