"""``unmix-export``: trace a checkpoint's networks to ONNX (see ``unmix-export --help``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from unmix import __version__
from unmix.errors import UsageError, report_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="unmix-export", message="%(prog)s %(version)s")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Model folder to write. [default: CHECKPOINT/model]")
@click.option("--fp16", is_flag=True, help="Mixed precision: fp16 weights and activations; timestep embedding, "
                                          "norm statistics, softmax and the DDIM update stay float32.")
@click.option("--int8", is_flag=True,
              help="Also write int8 graphs (post-training static quantisation of the convolutions with ONNX "
                   "Runtime's quantiser, calibrated on the fp32 pipeline's inputs over the training scene); "
                   "run them with unmix-run --precision int8.")
@click.option("--calibration", default=None, metavar="CUBE",
              help="The cube --int8 calibrates on: an ENVI file or a benchmark name. [default: the training scene]")
@click.option("--tile", type=click.IntRange(min=8), default=64, show_default=True,
              help="Static tile size (pixels) of the exported networks.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Check that each exported graph computes what the trained network computes: run both on sample "
                   "inputs and compare (fp32 graphs against PyTorch on ONNX Runtime and OpenVINO, to 1e-4; fp16 "
                   "graphs against the fp32 ones, to 2e-2; TensorRT engines against ONNX Runtime). A failed check "
                   "stops the export. --no-check skips it.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
@click.option("--engines", is_flag=True, help="Build TensorRT engines too (needs TensorRT and an NVIDIA GPU); "
                                             "with --fp16 they are built whenever TensorRT is present.")
@click.option("--workspace-mb", type=click.IntRange(min=64), default=1024, show_default=True,
              help="TensorRT builder workspace.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest on stdout.")
@report_errors("unmix-export", extra="export")
def main(checkpoint, out, fp16, int8, calibration, tile, check, quiet, engines, workspace_mb, as_json):
    """Export the networks of CHECKPOINT (written by unmix-train) to ONNX with a manifest.

    HybridSTU is exported as is; each diffusion network is exported as one fused DDIM step (network,
    update, data consistency and constraints in one graph), so every backend and the C++ runtime run
    identical math. Unchanged exports are skipped (cached by content hash).
    """
    from unmix.export import engines_step, export

    out = out if out is not None else checkpoint / "model"

    def say(message: str) -> None:
        if not quiet:
            print(f"unmix-export: {message}", file=sys.stderr)

    if calibration is not None and not int8:
        raise UsageError("--calibration is for --int8: add --int8, or leave --calibration out")
    manifest = export(checkpoint, out, fp16=fp16, tile=tile, check=check, progress=say, int8=int8,
                      calibration=calibration)
    if engines or fp16:
        engines_step(out, required=engines, check=check, workspace_mb=workspace_mb, progress=say)
    print(f"unmix-export: {checkpoint} -> {out}", file=sys.stderr)
    if as_json:
        json.dump(manifest, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
