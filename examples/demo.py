"""The demo scene of the main job (``make demo``) and its baseline metrics.

    python examples/demo.py scene --out out/demo        # out/demo/scene.hdr (+ .img) and truth.npz
    python examples/demo.py baselines --out out/demo    # VCA+FCLS and FCLS with the true endmembers

The scene is synthesised from the earthlib spectral library with exact truth (30 dB, smooth
abundances) and written as an ENVI cube with values stored x10000 and a ``reflectance scale factor``,
as sensors deliver them. ``make demo`` then trains, exports, runs and scores unmix on it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import unmix
from unmix.io.envi import write_cube
from unmix.io.libraries import load_earthlib
from unmix.io.synthetic import synthetic_scene
from unmix.physics.fcls import fcls
from unmix.physics.vca import vca


def make_scene(out: Path, size: int, endmembers: int, snr_db: float, seed: int) -> Path:
    """Write ``out/scene.hdr`` (+ ``.img``) and ``out/truth.npz``; return the header path."""
    library = load_earthlib("optimized")
    scene = synthetic_scene(library, endmembers, size=(size, size), kind="smooth", snr_db=snr_db, seed=seed)
    cube = scene.read()
    scale = 10000.0
    stored = np.round(cube * scale)
    header = out / "scene.hdr"
    write_cube(
        header,
        stored,
        wavelengths=scene.wavelengths,
        band_names=[f"{w:.0f} nm" for w in scene.wavelengths],
        description=f"unmix demo scene: {endmembers} earthlib endmembers, {snr_db:g} dB",
        extra={"reflectance scale factor": f"{scale:g}"},
    )
    np.savez(out / "truth.npz", A=scene.abundances, E=scene.endmembers, names=np.array(scene.endmember_names))
    return header


def baselines(out: Path, endmembers: int, seed: int) -> None:
    """Print VCA+FCLS and FCLS-with-the-true-endmembers metrics on the scene in ``out``."""
    scene = unmix.read_cube(out / "scene.hdr")
    truth = np.load(out / "truth.npz")
    cube = scene.read()
    rows = {}
    start = time.perf_counter()
    estimated, _ = vca(cube.reshape(-1, cube.shape[-1]), endmembers, seed=seed)
    rows["VCA+FCLS"] = (unmix.evaluate(fcls(cube, estimated), estimated, truth["A"], truth["E"], cube=cube),
                        time.perf_counter() - start)
    start = time.perf_counter()
    rows["FCLS, true endmembers"] = (unmix.evaluate(fcls(cube, truth["E"]), truth["E"], truth["A"], truth["E"],
                                                    cube=cube), time.perf_counter() - start)
    print(f"{'baseline':<24} {'SAD (deg)':>9} {'aRMSE':>7} {'recon RMSE':>10} {'PSNR dB':>8} {'time s':>7}")
    for name, (m, seconds) in rows.items():
        print(f"{name:<24} {m['sad_degrees_mean']:9.3f} {m['abundance_rmse']:7.4f} "
              f"{m['reconstruction_rmse']:10.5f} {m['psnr_db']:8.2f} {seconds:7.2f}")
    (out / "baselines.json").write_text(json.dumps({k: v[0] for k, v in rows.items()}, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["scene", "baselines"],
                        help="scene: write the demo cube and its truth; baselines: print baseline metrics")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="demo folder")
    parser.add_argument("--size", type=int, default=64, help="scene height and width in pixels")
    parser.add_argument("--endmembers", type=int, default=4)
    parser.add_argument("--snr", type=float, default=30.0, help="noise level in dB (HySUPP's definition)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "scene":
        header = make_scene(args.out, args.size, args.endmembers, args.snr, args.seed)
        print(f"wrote {header} and {args.out / 'truth.npz'}", file=sys.stderr)
    else:
        baselines(args.out, args.endmembers, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
