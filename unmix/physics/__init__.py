"""The linear mixing model and its classic tools (numpy + scipy): Y ≈ A·E.

Endmembers E have shape (p, B), one spectrum per row; abundances A (..., p), e.g. (H, W, p) or (N, p);
spectra Y (..., B), e.g. an (H, W, B) cube or (N, B) pixels.
"""
from unmix.physics.fcls import fcls
from unmix.physics.metrics import (
    abundance_rmse,
    align,
    endmember_rmse,
    evaluate,
    psnr,
    reconstruction_rmse,
    sad,
    sad_degrees,
    sre_db,
)
from unmix.physics.mixing import endmembers_from_abundances, mix, residual_rmse
from unmix.physics.simplex import project_simplex
from unmix.physics.vca import vca

__all__ = [
    "abundance_rmse",
    "align",
    "endmember_rmse",
    "endmembers_from_abundances",
    "evaluate",
    "fcls",
    "mix",
    "project_simplex",
    "psnr",
    "reconstruction_rmse",
    "residual_rmse",
    "sad",
    "sad_degrees",
    "sre_db",
    "vca",
]
