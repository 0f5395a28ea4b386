#!/usr/bin/env bash
# One command for a GPU machine: what runs on CUDA, and how fast. No network access needed.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#   UNMIX_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   # the same sections on CPU (a dry run)
#
# Sections (each prints PASS, SKIP (reason) or FAIL, then a summary; exit 1 when any failed):
#   nvidia-smi   the GPU and driver
#   train        unmix-train --device cuda on a 48x48 synthetic cube with a micro TOML config
#   pipeline     the eager torch pipeline (load_torch_networks + run_pipeline) on cuda: px/s
#   export       unmix-export of the micro checkpoint (ONNX, CPU)
#   ort-cuda     ONNX Runtime CUDA vs CPU on the exported graphs (needs onnxruntime-gpu)
#   cuda-python  buffers, stream, copies there and back (unmix.runtime.backends.cuda_runtime.self_test)
#   tensorrt     engines built, checked against ONNX Runtime and timed (needs tensorrt + cuda-python)
set -u
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then :; elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
DEVICE="${UNMIX_CHECK_DEVICE:-cuda}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/unmix-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export UNMIX_CHECK_WORK="$WORK" UNMIX_CHECK_DEVICE="$DEVICE" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
declare -a NAMES=() RESULTS=()

record() {  # name, status line
    NAMES+=("$1"); RESULTS+=("$2"); printf '== %-12s %s\n' "$1" "$2"
}

section() {  # name: runs "check.py name"; rc 0 PASS, 3 SKIP (last line = reason), else FAIL
    local name="$1" out rc
    echo "-- $name"
    out="$("$PYTHON" "$WORK/check.py" "$name" 2>&1)"; rc=$?
    printf '%s\n' "$out" | sed 's/^/   /'
    case $rc in
        0) record "$name" "PASS" ;;
        3) record "$name" "SKIP ($(printf '%s\n' "$out" | tail -n 1))" ;;
        *) record "$name" "FAIL (exit $rc)" ;;
    esac
}

echo "-- nvidia-smi"
if command -v nvidia-smi >/dev/null 2>&1; then
    if nvidia-smi; then record nvidia-smi PASS; else record nvidia-smi "FAIL (nvidia-smi exited $?)"; fi
else
    record nvidia-smi "SKIP (nvidia-smi not found)"
fi

cat >"$WORK/micro.toml" <<'TOML'
seed = 0
[cnn]
steps = 30
vca_seeds = 2
[spectra]
steps = 30
base_channels = 8
[abundance]
steps = 30
batch = 4
base_channels = 8
TOML

cat >"$WORK/check.py" <<'PY'
"""The sections of gpu_check.sh (exit 0 pass, 3 skip with the reason on the last line, else fail)."""
import json, os, subprocess, sys, time
from pathlib import Path
import numpy as np

WORK = Path(os.environ["UNMIX_CHECK_WORK"]); DEVICE = os.environ["UNMIX_CHECK_DEVICE"]
RUN, MODEL, CUBE, TILE = WORK / "run", WORK / "model", WORK / "cube.hdr", 16


def skip(reason):
    print(reason); sys.exit(3)


def torch_device():
    import torch
    if DEVICE == "cuda" and not torch.cuda.is_available():
        skip(f"torch {torch.__version__} sees no CUDA device")
    if DEVICE == "cuda":
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    return DEVICE


def train():
    from unmix.io.envi import write_cube
    from unmix.io.synthetic import synthetic_scene
    device = torch_device()
    x = np.linspace(0, 1, 40)
    spectra = np.stack([0.2 + 0.6 * x, 0.8 - 0.5 * x, 0.4 + 0.3 * np.sin(6 * x)])
    scene = synthetic_scene(spectra, size=(48, 48), snr_db=40, seed=0, wavelengths=np.linspace(400, 1000, 40))
    write_cube(CUBE, scene.read(), wavelengths=scene.wavelengths)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "unmix.train.cli", str(CUBE), "-p", "3", "--preset", "tiny",
                    "--config", str(WORK / "micro.toml"), "--library", "none", "--device", device,
                    "--out", str(RUN), "--quiet"], check=True)
    print(f"trained on {device} in {time.perf_counter() - started:.1f} s -> {RUN}")


def need_checkpoint():
    if not RUN.is_dir():
        skip("no checkpoint (the train section did not pass)")


def pipeline():
    need_checkpoint()
    device = torch_device()
    import torch
    from unmix.diffusion.schedule import Schedule
    from unmix.runtime.pipeline import PipelineConfig, run_pipeline
    from unmix.train.fused import load_torch_networks
    from unmix.io.envi import read_cube
    scene = read_cube(CUBE)
    networks, config = load_torch_networks(RUN, tile=TILE, device=device)
    schedule = Schedule.from_config(config["schedule"])
    settings = PipelineConfig(tile=TILE, overlap=4, steps=5, t0=20, spectra_steps=5, spectra_t0=20)
    with torch.inference_mode():
        run_pipeline(scene, networks, schedule, settings)               # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = run_pipeline(scene, networks, schedule, settings)
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    H, W, _ = scene.shape
    print(f"eager pipeline on {device}: {H * W / seconds:,.0f} px/s ({H}x{W} px in {seconds:.3f} s, "
          f"tile {TILE}, 5 + 5 DDIM steps)")
    assert np.isfinite(np.asarray(result.abundances)).all()


def export():
    need_checkpoint()
    subprocess.run([sys.executable, "-m", "unmix.export.cli", str(RUN), "--out", str(MODEL), "--tile", str(TILE)],
                   check=True)
    print(f"exported -> {MODEL}")


def need_model():
    if not (MODEL / "manifest.json").is_file():
        skip("no exported model (the export section did not pass)")


def ort_cuda():
    need_model()
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)")
    from unmix.export.tensorrt_build import compare_outputs, sample_feeds
    from unmix.runtime.backends import load_networks
    from unmix.runtime.manifest import load_manifest
    manifest = load_manifest(MODEL)
    cpu, gpu = load_networks(manifest), load_networks(manifest, device="cuda")
    worst = 0.0
    for name in manifest.networks:
        feeds = sample_feeds(manifest, name)
        figures = compare_outputs(cpu[name](feeds), gpu[name](feeds), atol=1e-3)
        started = time.perf_counter()
        for _ in range(20):
            gpu[name](feeds)
        print(f"{name}: CUDA vs CPU max abs {figures['max_abs']:.2e}, "
              f"{(time.perf_counter() - started) / 20 * 1e3:.2f} ms/call on CUDA")
        worst = max(worst, figures["max_abs"])
    assert worst <= 1e-3, f"ONNX Runtime CUDA differs from CPU by {worst:.3g}"


def cuda_python():
    from unmix.errors import UsageError
    from unmix.runtime.backends import cuda_runtime
    try:
        cuda_runtime.import_cudart()
    except UsageError as exc:
        skip(str(exc))
    print(json.dumps(cuda_runtime.self_test()))


def tensorrt():
    need_model()
    from unmix.runtime.backends import tensorrt_backend
    ok, reason = tensorrt_backend.availability()
    if not ok:
        skip(reason)
    from unmix.export.tensorrt_build import build_engines, check_engines, sample_feeds
    from unmix.runtime.manifest import load_manifest
    started = time.perf_counter()
    built = build_engines(MODEL, progress=print)
    print(f"engines ready in {time.perf_counter() - started:.1f} s")
    again = build_engines(MODEL)
    assert all(item["status"] == "cached" for item in again.values()), "a second build did not reuse the cache"
    print(json.dumps(check_engines(MODEL, progress=print), indent=1, default=str))
    manifest = load_manifest(MODEL)
    entry = manifest.network("abundance_step")
    path = manifest.network_file("abundance_step")
    network = tensorrt_backend.open_network(path, entry.inputs, entry.outputs, name="abundance_step")
    feeds = sample_feeds(manifest, "abundance_step")
    started = time.perf_counter()
    for _ in range(50):
        network(feeds)
    print(f"abundance_step: {(time.perf_counter() - started) / 50 * 1e3:.3f} ms/call")


SECTIONS = {"train": train, "pipeline": pipeline, "export": export, "ort-cuda": ort_cuda,
            "cuda-python": cuda_python, "tensorrt": tensorrt}

if __name__ == "__main__":
    SECTIONS[sys.argv[1]]()
PY

for name in train pipeline export ort-cuda cuda-python tensorrt; do
    section "$name"
done

echo
echo "== summary ($DEVICE)"
failed=0
for i in "${!NAMES[@]}"; do
    printf '   %-12s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"
    case "${RESULTS[$i]}" in FAIL*) failed=1 ;; esac
done
exit $failed
