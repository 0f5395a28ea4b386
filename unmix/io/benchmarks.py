"""Public benchmark scenes with ground truth: Samson, Jasper Ridge, MiSiCNet Sim1.

Each loader returns an in-memory :class:`~unmix.io.scene.Scene` with the cube as float32 reflectance
(H, W, B) and the truth: ``endmembers`` (p, B) float64, ``abundances`` (H, W, p) float64 and
``endmember_names``. Files are found under the data folder (``UNMIX_DATA``, see :mod:`unmix.io.data`);
a missing file raises DataNotFoundError naming it. Pixel order, scales and wavelengths follow each
folder's ``SOURCE.md``:

- The ``.mat`` files of Samson and Jasper Ridge store pixels as columns in MATLAB column-major order
  (pixel ``n = row + H * col``): ``X.reshape(B, H, W, order='F').transpose(1, 2, 0)`` gives (H, W, B).
- Neither carries wavelengths; the band centres given here are the datasets' published approximations,
  and each scene says so in ``notes``.

Names for :func:`load_benchmark` are listed in :data:`BENCHMARKS`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from unmix.errors import InputError, UsageError
from unmix.io.data import data_path
from unmix.io.scene import Scene

#: Every name :func:`load_benchmark` accepts (``'jasper'`` is also accepted for ``'jasper_ridge'``).
BENCHMARKS = (
    "samson",
    "samson:misicnet",
    "samson:zhu",
    "jasper_ridge",
    "sim1",
    "sim1:30db",
    "sim1:20db",
    "sim1:10db",
    "samson:20db",
    "samson:10db",
)
_ALIASES = {"jasper": "jasper_ridge", "jasperridge": "jasper_ridge"}

SAMSON_NAMES = ["rock", "tree", "water"]
JASPER_NAMES = ["tree", "water", "dirt", "road"]


def _loadmat(path: Path, *keys: str) -> dict[str, np.ndarray]:
    from scipy.io import loadmat

    try:
        content = loadmat(path)
    except (ValueError, NotImplementedError, OSError) as exc:
        raise InputError(f"{path}: expected a MATLAB v5 .mat file readable by scipy.io.loadmat ({exc})") from None
    for key in keys:
        if key not in content:
            raise InputError(f"{path}: key {key!r}: expected a variable of that name")
    return content


def _expect_shape(path: Path, key: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if array.shape != shape:
        raise InputError(f"{path}: key {key!r}: expected shape {shape}, got {array.shape}")
    return array


def _columns_to_image(columns: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H*W) MATLAB column-major pixel columns -> (H, W, C)."""
    return columns.reshape(columns.shape[0], height, width, order="F").transpose(1, 2, 0)


def _cood_names(content: dict, fallback: list[str]) -> list[str]:
    """'1-tree' style names from a ``cood`` cell array, without the number; the fallback otherwise."""
    try:
        raw = [str(np.asarray(item).ravel()[0]) for item in np.asarray(content["cood"]).ravel()]
    except (KeyError, IndexError, TypeError):
        return list(fallback)
    names = [name.split("-", 1)[-1].strip().lower() for name in raw]
    return names if len(names) == len(fallback) else list(fallback)


def load_samson(truth: str = "misicnet") -> Scene:
    """Samson, 95 x 95 pixels, 156 bands (401-889 nm), 3 endmembers (rock/soil, tree, water).

    Args:
        truth: ``'misicnet'`` (default; E on the cube's scale and A the FCLS solution for it, the
            ground truth of the MiSiCNet/DeepTrans code lineage) or ``'zhu'`` (F. Zhu's end3.mat:
            A sums to one, but each endmember spectrum is max-normalised to ~1, so it is not on the
            cube's scale: use it for SAD, which is scale-invariant, not for reconstruction).
    """
    truth = truth.lower()
    if truth not in ("misicnet", "zhu"):
        raise UsageError(f"unknown Samson ground truth {truth!r}; choose 'misicnet' or 'zhu'")
    height = width = 95
    bands, p = 156, 3
    path = data_path("samson", "samson_1.mat")
    content = _loadmat(path, "V")
    columns = _expect_shape(path, "V", np.asarray(content["V"], dtype=np.float64), (bands, height * width))
    cube = _columns_to_image(columns, height, width)
    notes = [
        "wavelengths approximate: numpy.linspace(401, 889, 156) nm from the dataset's description "
        "(156 channels, 401-889 nm); the exact band centres are not published",
        "cube: samson_1.mat V (already scaled to 0..1 by its distributor)",
    ]
    if truth == "misicnet":
        e_path = data_path("samson", "misicnet_gt", "E.mat")
        a_path = data_path("samson", "misicnet_gt", "A_true.mat")
        endmembers = _expect_shape(e_path, "E", np.asarray(_loadmat(e_path, "E")["E"], np.float64), (bands, p)).T
        abundances = _expect_shape(a_path, "A_true", np.asarray(_loadmat(a_path, "A_true")["A_true"], np.float64),
                                   (height, width, p))
        names = list(SAMSON_NAMES)
        notes.append("ground truth: MiSiCNet's (E on the cube's scale; A = FCLS of the cube with E)")
    else:
        gt_path = data_path("samson", "end3.mat")
        gt = _loadmat(gt_path, "M", "A")
        endmembers = _expect_shape(gt_path, "M", np.asarray(gt["M"], np.float64), (bands, p)).T
        a_columns = _expect_shape(gt_path, "A", np.asarray(gt["A"], np.float64), (p, height * width))
        abundances = _columns_to_image(a_columns, height, width)
        names = _cood_names(gt, SAMSON_NAMES)
        notes.append("ground truth: F. Zhu's end3.mat; its endmembers are max-normalised (each ~1.0 at its peak), "
                     "NOT on the cube's scale: use them for SAD only (reconstruction RMSE against them is ~0.37)")
    return Scene.from_array(
        cube,
        name="samson" if truth == "misicnet" else "samson:zhu",
        wavelengths=np.linspace(401.0, 889.0, bands),
        endmembers=np.ascontiguousarray(endmembers),
        abundances=np.ascontiguousarray(abundances),
        endmember_names=names,
        source=str(path),
        notes=notes,
    )


def load_jasper_ridge() -> Scene:
    """Jasper Ridge, 100 x 100 pixels, 198 bands (AVIRIS, ~409-2452 nm), 4 endmembers (tree, water, dirt, road).

    Reflectance = stored uint16 / 5000 (the file's ``maxValue``, Zhu's convention; values reach 1.087).
    """
    height = width = 100
    bands, p = 198, 4
    path = data_path("jasper_ridge", "JasperRidge2_R198.mat")
    gt_path = data_path("jasper_ridge", "JasperRidge2_end4.mat")
    content = _loadmat(path, "Y", "SlectBands")
    raw = _expect_shape(path, "Y", np.asarray(content["Y"]), (bands, height * width))
    scale = float(np.asarray(content.get("maxValue", 5000.0)).ravel()[0])
    if not scale > 0:
        raise InputError(f"{path}: key 'maxValue': expected a positive scale, got {scale!r}")
    cube = _columns_to_image(raw.astype(np.float64) / scale, height, width)
    selected = np.asarray(content["SlectBands"]).ravel().astype(int)
    if selected.shape != (bands,) or selected.min() < 1 or selected.max() > 224:
        raise InputError(f"{path}: key 'SlectBands': expected {bands} band numbers in 1..224")
    wavelengths = np.linspace(380.0, 2500.0, 224)[selected - 1]
    gt = _loadmat(gt_path, "M", "A")
    endmembers = _expect_shape(gt_path, "M", np.asarray(gt["M"], np.float64), (bands, p)).T
    abundances = _columns_to_image(_expect_shape(gt_path, "A", np.asarray(gt["A"], np.float64),
                                                 (p, height * width)), height, width)
    return Scene.from_array(
        cube,
        name="jasper_ridge",
        wavelengths=wavelengths,
        reflectance_scale=scale,
        endmembers=np.ascontiguousarray(endmembers),
        abundances=np.ascontiguousarray(abundances),
        endmember_names=_cood_names(gt, JASPER_NAMES),
        source=str(path),
        notes=[
            "wavelengths approximate: numpy.linspace(380, 2500, 224)[SlectBands - 1] nm from the dataset's "
            "description (AVIRIS, 224 channels, 380-2500 nm); the exact centres of that flight are not in the files",
            f"cube: Y / {scale:g} (Zhu's convention)",
            "ground truth: F. Zhu's end4.mat (on the cube's scale; reconstruction RMSE 0.055, "
            "and A is not the FCLS solution for M: FCLS with M gives abundance RMSE 0.085)",
        ],
    )


def load_sim1(snr_db: float | None = None) -> Scene:
    """MiSiCNet's simulated Sim1: 105 x 105 pixels, 224 bands, 6 endmembers, no pure pixels (max 0.75).

    The cube is the noise-free ``Y_clean`` (exactly ``abundances @ endmembers``); no wavelengths.
    With ``snr_db``, white Gaussian noise is added by ``unmix.physics.synthetic.add_noise(Y_clean,
    snr_db, seed=0)`` (HySUPP's SNR definition), as ``load_benchmark('sim1:30db')`` does.
    """
    height = width = 105
    bands, p = 224, 6
    folder = ("misicnet_sim", "Sim1")
    y_path = data_path(*folder, "Y_clean.mat")
    a_path = data_path(*folder, "A_true.mat")
    e_path = data_path(*folder, "E.mat")
    cube = _expect_shape(y_path, "Y_clean", np.asarray(_loadmat(y_path, "Y_clean")["Y_clean"], np.float64),
                         (height, width, bands))
    abundances = _expect_shape(a_path, "A_true", np.asarray(_loadmat(a_path, "A_true")["A_true"], np.float64),
                               (height, width, p))
    endmembers = _expect_shape(e_path, "E", np.asarray(_loadmat(e_path, "E")["E"], np.float64), (bands, p)).T
    notes = ["MiSiCNet Sim1 (Rasti et al., IEEE TGRS 2022, doi:10.1109/TGRS.2022.3146904): "
             "no wavelengths given"]
    if snr_db is None:
        notes.append("noise-free (Y_clean)")
    else:
        from unmix.physics.synthetic import add_noise

        cube = add_noise(cube, snr_db, seed=0)
        notes.append(f"white Gaussian noise added at {snr_db:g} dB (HySUPP's definition "
                     "sigma^2 = mean(Y^2)/10^(SNR/10); numpy PCG64 seed 0)")
    return Scene.from_array(
        cube,
        name="sim1" if snr_db is None else f"sim1:{snr_db:g}db",
        wavelengths=None,
        endmembers=np.ascontiguousarray(endmembers),
        abundances=np.ascontiguousarray(abundances),
        endmember_names=[f"endmember_{k + 1}" for k in range(p)],
        source=str(y_path),
        notes=notes,
    )


def _with_noise(scene: Scene, snr_db: float) -> Scene:
    """The scene with white Gaussian noise at ``snr_db`` (HySUPP's definition, seed 0); same truth."""
    from unmix.physics.synthetic import add_noise

    cube = add_noise(scene.read().astype(np.float64), snr_db, seed=0)
    return Scene.from_array(
        cube, name=f"{scene.name}:{snr_db:g}db", wavelengths=scene.wavelengths, endmembers=scene.endmembers,
        abundances=scene.abundances, endmember_names=scene.endmember_names, source=scene.source,
        notes=list(scene.notes) + [f"white Gaussian noise added at {snr_db:g} dB (HySUPP's definition "
                                   "sigma^2 = mean(Y^2)/10^(SNR/10); numpy PCG64 seed 0); truth of the clean cube"])


def load_benchmark(name: str) -> Scene:
    """A benchmark scene by name (one of :data:`BENCHMARKS`; case-insensitive, ``'jasper'`` accepted).

    ``'samson'`` uses the MiSiCNet ground truth (``'samson:zhu'`` for Zhu's). ``'sim1:30db'``,
    ``'sim1:20db'``, ``'sim1:10db'``, ``'samson:20db'`` and ``'samson:10db'`` add white Gaussian noise
    with ``unmix.physics.synthetic.add_noise(cube, snr_db, seed=0)`` (HySUPP's SNR definition), so a
    name gives the same cube everywhere; the noisy Samson keeps the MiSiCNet truth of the clean cube.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in ("samson", "samson:misicnet"):
        return load_samson("misicnet")
    if key == "samson:zhu":
        return load_samson("zhu")
    if key == "jasper_ridge":
        return load_jasper_ridge()
    if key == "sim1":
        return load_sim1()
    if key in ("sim1:30db", "sim1:20db", "sim1:10db"):
        return load_sim1(snr_db=float(key.split(":")[1][:-2]))
    if key in ("samson:20db", "samson:10db"):
        return _with_noise(load_samson("misicnet"), float(key.split(":")[1][:-2]))
    raise UsageError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)} (or 'jasper')")


__all__ = ["BENCHMARKS", "load_benchmark", "load_samson", "load_jasper_ridge", "load_sim1"]
