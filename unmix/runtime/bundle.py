"""The output bundle of ``unmix-run``: written whole or not at all.

``<out>/<stem>/`` holds

- ``<stem>.abund.hdr/.img`` — ENVI float32 BSQ, one band per endmember (band names = endmember names),
  ``map info`` and ``coordinate system string`` copied verbatim from the input;
- ``<stem>.rmse.hdr/.img`` — per-pixel reconstruction RMSE; ``<stem>.uncertainty.hdr/.img`` when sampled;
- ``<stem>.endmembers.csv`` — header row, then one row per band: ``wavelength_nm`` (empty when unknown)
  and one column per endmember, in the abundance file's band order; ``<stem>.endmembers.sli/.sli.hdr``;
- ``<stem>.quicklook.png`` with the ``plot`` extra (skipped with a note otherwise);
- ``<stem>.run.json`` — versions, model hashes, input shape, scale applied, timings, per-endmember stats.

:func:`read_bundle` reads the abundances, endmembers and names back (``unmix-eval``).

Everything is written into a hidden temporary folder beside the bundle (``.<stem>.tmp-*``), flushed to
disk, and renamed into place; an older bundle of the same stem is moved aside first
(``.<stem>.old-*``) and removed after. So a run killed at any point leaves either the previous complete
bundle or none, never part of one, and a failed write (disk full, file size limit, permissions) leaves
the output folder as it was, with one :class:`~unmix.errors.OutputError` (exit 73) or
:class:`~unmix.errors.WriteError` (exit 74).

Concurrency: writing a bundle holds an exclusive ``fcntl.flock`` on the output folder itself (no lock
file is left behind; the kernel drops the lock when the process ends, even by SIGKILL). Runs that
write into one folder take turns: the lock is held only while a bundle is written, not while
unmixing, so each bundle that appears is whole and, for the same stem, the last writer's
one stays. Holding the lock, a writer first repairs what a killed writer left: a bundle moved aside
but never replaced is put back, stale temporary folders are removed. A writer that cannot get the
lock within ``lock_timeout`` seconds gives up with an OutputError. Where ``fcntl`` does not exist
(Windows) there is no lock.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from unmix.errors import MissingInputError, OutputError, UnmixError, output_error
from unmix.io.envi import CubeWriter, read_cube, write_library
from unmix.io import strict_json
from unmix.io.files import fsync_dir, fsync_tree, publish_modes
from unmix.io.scene import Scene
from unmix.runtime.tiling import row_blocks

RUN_FORMAT = "unmix-run/1"


#: Rows per block when writing maps and summarising them: memory stays flat in the scene's height.
ROW_BLOCK = 256


def _write_map(path: Path, array, scene: Scene, band_names: list[str], description: str) -> None:
    """Write an (H, W) or (H, W, C) map (an array or a DiskArray) a block of rows at a time."""
    shape = tuple(array.shape) + ((1,) if len(array.shape) == 2 else ())
    with CubeWriter(path, shape, band_names=band_names, map_info=scene.map_info,
                    coordinate_system=scene.coordinate_system, description=description) as writer:
        for rows in row_blocks(shape[0], ROW_BLOCK):
            writer.write_tile(rows, slice(0, shape[1]), array[rows].reshape((-1,) + shape[1:]))


def _endmember_csv(path: Path, endmembers: np.ndarray, names: list[str], wavelengths: np.ndarray | None) -> None:
    lines = [",".join(["wavelength_nm", *names])]
    for band in range(endmembers.shape[1]):
        wl = "" if wavelengths is None else f"{wavelengths[band]:.6g}"
        lines.append(",".join([wl, *(f"{value:.8g}" for value in endmembers[:, band])]))
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------- locks and atomicity

#: Seconds a writer waits for another writer of the same output to finish before giving up.
LOCK_TIMEOUT_S = 600.0


@contextlib.contextmanager
def output_lock(folder: str | Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold the exclusive ``fcntl.flock`` lock of the existing folder ``folder`` (on the folder itself).

    Waits up to ``timeout`` seconds for another holder; then raises OutputError. The lock goes with the
    process: a killed holder never leaves a stale lock, and no lock file is created. Yields ``folder``.
    """
    path = Path(folder)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks here
        yield path
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise output_error(path, "open the output folder", exc) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OutputError(f"{path}: another process has been writing in it for over "
                                      f"{timeout:.0f} s (it holds the folder's lock); try again later") from None
                time.sleep(0.05)
        yield path
    finally:
        os.close(fd)  # closing releases the lock


def _leftovers(folder: Path, stem: str, kind: str) -> list[Path]:
    """Hidden ``.<stem>.<kind>-XXXXXXXX`` folders that writers of ``stem`` create (tmp, old)."""
    pattern = re.compile(rf"\.{re.escape(stem)}\.{kind}-[A-Za-z0-9_]+")
    try:
        return sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name))
    except OSError:
        return []


def repair_output(folder: str | Path, stem: str, complete) -> None:
    """Undo what a writer of ``folder/stem`` killed part way left; call it holding :func:`output_lock`.

    If ``folder/stem`` is missing and a moved-aside copy (``.<stem>.old-*``, or its ``checkpoint``
    subfolder) passes ``complete(path)``, it is renamed back; then every ``.<stem>.tmp-*`` and
    ``.<stem>.old-*`` folder is removed (no live writer can own them: it would hold the lock).
    """
    folder = Path(folder)
    final = folder / stem
    if not final.exists() and not final.is_symlink():
        for aside in reversed(_leftovers(folder, stem, "old")):
            for candidate in (aside, aside / "checkpoint"):
                if candidate.is_dir() and complete(candidate):
                    try:
                        os.replace(candidate, final)
                    except OSError:
                        continue
                    break
            if final.exists():
                break
    for leftover in _leftovers(folder, stem, "tmp") + _leftovers(folder, stem, "old"):
        shutil.rmtree(leftover, ignore_errors=True)


def is_bundle(folder: Path) -> bool:
    """True when ``folder`` is a complete unmix-run bundle (its ``*.run.json`` is written last)."""
    return folder.is_dir() and any(folder.glob("*.run.json"))


def endmember_stats(abundances: np.ndarray, names: list[str],
                    hints: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per endmember: mean and max abundance, the fraction of valid pixels where it dominates, and the
    closest library spectrum found in training (``library_hint``, a naming hint) when the model has one."""
    p = len(names)
    total, peak, dominant, count = np.zeros(p), np.full(p, -np.inf), np.zeros(p, dtype=np.int64), 0
    for rows in row_blocks(abundances.shape[0], ROW_BLOCK):
        block = abundances[rows]
        values = block[np.isfinite(block).all(axis=-1)].astype(np.float64)
        if not len(values):
            continue
        count += len(values)
        total += values.sum(axis=0)
        peak = np.maximum(peak, values.max(axis=0))
        dominant += np.bincount(np.argmax(values, axis=-1), minlength=p)
    return [{"name": name,
             "mean_abundance": float(total[k] / count) if count else None,
             "max_abundance": float(peak[k]) if count else None,
             "dominant_fraction": float(dominant[k] / count) if count else None,
             **({"library_hint": hints[k]} if hints else {})}
            for k, name in enumerate(names)]


def hinted_names(names: list[str], hints: list[dict[str, Any]] | None) -> list[str]:
    """Names for the quicklook: ``"endmember_1 (~ grass, 7 deg)"`` when a library hint exists."""
    if not hints:
        return list(names)
    return [f"{name} (~ {hint['name']}, {hint['angle_degrees']:.0f} deg)" for name, hint in zip(names, hints)]


#: The quicklook shows maps at most this many pixels on a side (strided): a few hundred screen
#: pixels per panel, and no full-resolution copies of a large scene inside matplotlib.
QUICKLOOK_MAX_SIDE = 512


def spectrum_with_gaps(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` with a NaN point inside every gap (removed bad or water-vapour bands), so a line breaks there.

    A gap is a step in ``x`` over 3 times the median step.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    steps = np.diff(x)
    if steps.size < 2:
        return x, y
    gaps = np.flatnonzero(steps > 3 * np.median(steps)) + 1
    return np.insert(x, gaps, np.nan), np.insert(y, gaps, np.nan)


def quicklook(path: Path, abundances: np.ndarray, endmembers: np.ndarray, names: list[str],
              wavelengths: np.ndarray | None, rmse: np.ndarray, title: str,
              uncertainty: np.ndarray | None = None) -> str | None:
    """Write a PNG (abundance maps, endmember spectra, RMSE map, uncertainty map when sampled); returns a
    note when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "quicklook skipped: install the 'plot' extra (pip install 'unmix[plot]') for matplotlib"
    p = len(names)
    maps = [("reconstruction RMSE", "RMSE (cube units)", rmse)]
    if uncertainty is not None:
        maps.append(("abundance uncertainty", "std of the abundance", uncertainty))
    columns = p + 1 + len(maps)
    step = max(1, -(-max(rmse.shape) // QUICKLOOK_MAX_SIDE))
    abundances = abundances[::step, ::step]
    figure, axes = plt.subplots(1, columns, figsize=(2.6 * columns, 2.8), constrained_layout=True)
    for k in range(p):
        image = axes[k].imshow(abundances[..., k], vmin=0, vmax=1, cmap="viridis")
        axes[k].set_title(names[k], fontsize=9)
        axes[k].axis("off")
    figure.colorbar(image, ax=axes[p - 1], fraction=0.046).set_label("abundance fraction", fontsize=8)
    x = wavelengths if wavelengths is not None else np.arange(endmembers.shape[1])
    for k in range(p):
        axes[p].plot(*spectrum_with_gaps(x, endmembers[k]), label=names[k], linewidth=1)
    axes[p].set_xlabel("wavelength (nm)" if wavelengths is not None else "band")
    axes[p].set_ylabel("reflectance")
    axes[p].legend(fontsize=6)
    axes[p].set_title("endmembers", fontsize=9)
    for column, (heading, label, values) in enumerate(maps, start=p + 1):
        image = axes[column].imshow(values[::step, ::step], cmap="magma")
        axes[column].set_title(heading, fontsize=9)
        axes[column].axis("off")
        figure.colorbar(image, ax=axes[column], fraction=0.046).set_label(label, fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return None


def write_bundle(out_dir: str | Path, scene: Scene, result: Any, run_info: dict[str, Any],
                 plot: bool = True, lock_timeout: float = LOCK_TIMEOUT_S) -> Path:
    """Write ``out_dir/<scene.name>/`` atomically from an :class:`unmix.runtime.unmixer.Result`; return it.

    Raises OutputError (exit 73) when the folder cannot be created or written, WriteError (exit 74)
    when a write fails part way (disk full, file size limit); the folder is then left as it was.
    """
    out_dir = Path(out_dir)
    stem = scene.name
    if not stem or stem.startswith(".") or any(c in stem for c in "/\\\0"):
        raise OutputError(f"{out_dir}: cannot name a bundle {stem!r}; rename the cube")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(out_dir, "create the output folder", exc) from None
    try:
        with output_lock(out_dir, lock_timeout):
            repair_output(out_dir, stem, is_bundle)
            return _write_locked(out_dir, stem, scene, result, run_info, plot)
    except BaseException:
        if created:  # leave no empty folder behind either
            try:
                out_dir.rmdir()
            except OSError:
                pass
        raise


def _write_locked(out_dir: Path, stem: str, scene: Scene, result: Any, run_info: dict[str, Any],
                  plot: bool) -> Path:
    final = out_dir / stem
    if final.exists() and not is_bundle(final):
        raise OutputError(f"{final}: exists and is not an unmix output bundle; choose another --out")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{stem}.tmp-", dir=out_dir))
    except OSError as exc:
        raise output_error(out_dir, "write in the output folder", exc) from None
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
            note = quicklook(staging / f"{stem}.quicklook.png", result.abundances, result.endmembers,
                             hinted_names(names, result.library_hints),
                             scene.wavelengths, result.rmse, f"{stem}: {len(names)} endmembers",
                             uncertainty=result.uncertainty)
            if note:
                notes.append(note)
        info = {"format": RUN_FORMAT, **run_info, "notes": notes,
                "endmembers": endmember_stats(result.abundances, names, result.library_hints),
                "timings": result.timings, "settings": result.config}
        (staging / f"{stem}.run.json").write_text(strict_json.dumps(info, indent=2) + "\n")
        publish_modes(staging)
        fsync_tree(staging)
        _swap_in(staging, final)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, UnmixError):
            raise output_error(final, "write the output bundle", exc) from None
        raise
    return final


def read_bundle(bundle: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(H, W, p) abundances, (p, B) endmembers and names from an unmix-run bundle folder."""
    runs = sorted(bundle.glob("*.run.json"))
    if not bundle.is_dir() or not runs:
        raise MissingInputError(f"{bundle}: not an unmix-run output bundle (no *.run.json)")
    stem = runs[0].name[: -len(".run.json")]
    abundances = read_cube(bundle / f"{stem}.abund.hdr").read()
    rows = (bundle / f"{stem}.endmembers.csv").read_text().strip().splitlines()
    names = rows[0].split(",")[1:]
    endmembers = np.array([[float(v) for v in row.split(",")[1:]] for row in rows[1:]], dtype=np.float32).T
    return abundances, endmembers, names


def _swap_in(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``; an existing ``final`` is moved aside first and removed after."""
    aside = None
    try:
        if final.exists():
            aside = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, aside)
        os.replace(staging, final)
        fsync_dir(final.parent)
    except OSError as exc:
        if aside is not None and not final.exists():
            os.replace(aside, final)
        raise output_error(final, "write the output bundle", exc) from None
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
