"""``unmix-train``: fit unmix's networks to one scene (see ``unmix-train --help``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from unmix import __version__
from unmix.errors import InputError, MissingInputError, UsageError, report_errors


def _read_known(path: Path) -> tuple[np.ndarray, list[str]]:
    """Known spectra from an ENVI spectral library (.sli) or a CSV (one column per spectrum, header row)."""
    if not path.is_file():
        raise MissingInputError(f"{path}: known-spectra file not found")
    if path.suffix.lower() == ".csv":
        try:
            rows = path.read_text(encoding="utf-8").strip().splitlines()
        except UnicodeDecodeError:
            raise InputError(f"{path}: not a text CSV file") from None
        if len(rows) < 2:
            raise InputError(f"{path}: expected a header row and one row of numbers per band, got {len(rows)} rows")
        header = [h.strip() for h in rows[0].split(",")]
        try:
            values = np.array([[float(v) for v in row.split(",")] for row in rows[1:]], dtype=np.float32)
        except ValueError:
            raise InputError(f"{path}: expected numbers below the header row, {len(header)} per row") from None
        if values.ndim != 2 or values.shape[1] != len(header):
            raise InputError(f"{path}: expected {len(header)} numbers per row (one per header column)")
        if not np.isfinite(values).all():
            raise InputError(f"{path}: expected finite numbers (found NaN or Inf)")
        if header and header[0].lower().startswith("wavelength"):
            header, values = header[1:], values[:, 1:]
        if not header:
            raise InputError(f"{path}: expected at least one spectrum column")
        return values.T.copy(), header
    from unmix.io.envi import read_library

    library = read_library(path)
    return library.spectra, library.names


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="unmix-train", message="%(prog)s %(version)s")
@click.argument("cube")
@click.option("--endmembers", "-p", type=click.IntRange(min=2), required=True,
              help="Number of endmembers (materials) to find.")
@click.option("--preset", type=click.Choice(["tiny", "default", "full"]), default=None,
              help="Training budget: tiny (<= 2 min, demos and CI), default (<= 3 min per scene on 2 cores), "
                   "full (best accuracy). [default: default]")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="TOML file overriding any hyper-parameter of the preset.")
@click.option("--library", default=None,
              help="Spectra for the 1D prior: 'earthlib' (default), 'none', or an ENVI .sli file.")
@click.option("--known", "known_path", type=click.Path(path_type=Path), default=None,
              help="Spectra of materials known to be present (.sli, or .csv with one column per spectrum); "
                   "kept as the first endmembers.")
@click.option("--wavelengths", type=click.Path(path_type=Path), default=None,
              help="Band centres in nm (text file) for cubes whose header has none.")
@click.option("--stage", type=click.Choice(["all", "cnn", "spectra", "abundance"]), default="all", show_default=True,
              help="Train one network only, reusing the others from the checkpoint in --out.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Checkpoint folder. [default: runs/<cube name>]")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last saved step (the progress "
              "is saved in OUT/.train_state while training).")
@click.option("--restart", is_flag=True, help="Discard an interrupted run's saved progress and start over (without "
              "--resume or --restart, saved progress is kept and the run refused).")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Random seed. [default: the config's, 0 in every preset]")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Where to train. [default: cuda when available]")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or log lines.")
@report_errors("unmix-train", extra="train")
def main(cube, endmembers, preset, config_path, library, known_path, wavelengths, stage, out, resume, restart,
         seed, device, as_json, quiet):
    """Train HybridSTU and the two diffusion priors on CUBE and write a checkpoint.

    CUBE is an ENVI header (.hdr) or data file, or a benchmark name: samson, samson:zhu, jasper_ridge,
    sim1, sim1:30db, sim1:20db (read from UNMIX_DATA).

    The checkpoint folder holds one .safetensors file per network and config.json (every resolved
    hyper-parameter, the diffusion schedule, the sensor's wavelengths, the endmember names and spectra,
    versions and a hash of the data). Export it with unmix-export.
    """
    from unmix.train.config import resolve_config
    from unmix.train.trainer import fit

    overrides = {"seed": seed} if seed is not None else None
    config = resolve_config(preset, config_path, overrides)
    known, names = _read_known(known_path) if known_path else (None, None)
    log = (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    if resume and restart:
        raise UsageError("--resume and --restart exclude each other: continue the saved run, or start over")
    try:
        result = fit(cube, endmembers, config=config, library=library, known=known, known_names=names,
                     wavelengths=wavelengths, stage=stage, out=out, resume=resume, restart=restart, device=device,
                     progress=not quiet, log=log)
    except KeyboardInterrupt:
        print("unmix-train: interrupted; run the same command with --resume to continue from the last saved step",
              file=sys.stderr)
        sys.exit(130)
    if as_json:
        summary = {k: v for k, v in result.summary.items() if k != "endmembers"}
        summary["checkpoint"] = str(result.out_dir)
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    if result.summary.get("world_size", 1) > 1:
        from unmix.train.trainer import end_process

        end_process(0)


if __name__ == "__main__":
    main()
