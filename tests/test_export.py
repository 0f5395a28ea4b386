"""unmix.export: ONNX graphs of a tiny checkpoint, checked for real on ONNX Runtime and OpenVINO.

One export (module-scoped) is shared by the tests; the cache and fp16 tests work on copies of it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from unmix.diffusion.schedule import Schedule  # noqa: E402
from unmix.errors import OutputError  # noqa: E402
from unmix.export import (FP16_TOLERANCE, FP32_TOLERANCE, ExportCheckError, export, export_contracts,  # noqa: E402
                          precision_report)
from unmix.export.contracts import SampleSource, network_contracts  # noqa: E402
from unmix.runtime.backends import load_networks  # noqa: E402
from unmix.runtime.manifest import load_manifest  # noqa: E402
from unmix.runtime.network import check_feeds, check_network, pipeline_specs  # noqa: E402
from unmix.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from unmix.train.models import HybridSTU, ResUNet  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BANDS, P, TILE = 20, 3, 16
NETWORKS = ("hybridstu", "abundance_step", "spectra_step")
BACKENDS = ("onnxruntime", "openvino")


def _models(seed: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    models = {
        "hybridstu": HybridSTU(bands=BANDS, endmembers=P, reduced_bands=8, width=4),
        "spectra": ResUNet(dims=1, in_channels=1, base_channels=8),
        "abundance": ResUNet(dims=2, in_channels=P, base_channels=8),
    }
    with torch.no_grad():   # no zero-initialised layer: every path of every graph carries signal
        for model in models.values():
            for parameter in model.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    return models


def _config() -> dict:
    """The keys unmix.train.fit writes that export reads."""
    rng = np.random.default_rng(0)
    return {
        "schedule": Schedule(kind="cosine", T=1000).to_config(),
        "sensor": {"bands": BANDS, "wavelengths": np.linspace(400.0, 1000.0, BANDS).tolist()},
        "endmembers": {"count": P, "names": ["soil", "vegetation", "water"],
                       "initial": (0.1 + 0.8 * rng.random((P, BANDS))).tolist(),
                       "estimated": (0.1 + 0.8 * rng.random((P, BANDS))).tolist()},
        "train": {"inference": {"steps": 10, "t0": 300, "eta": 0.0, "samples": 1, "rounds": 1, "tile": 64}},
        "versions": {"unmix": "0.1.0", "torch": torch.__version__},
    }


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("export") / "checkpoint", _models(0), _config())


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    messages: list[str] = []
    document = export(checkpoint, out, tile=TILE, progress=messages.append)
    return out, document, messages


def _stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.onnx")}


def _copy(exported, tmp_path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(exported[0], target)
    return target


def test_each_network_contract_owns_its_sample_inputs(checkpoint):
    """export_contracts pairs each module with its contract; the sample inputs are the contract's own."""
    models, config = load_checkpoint(checkpoint)
    contracts = export_contracts(models, config, tile=TILE, seed=3)
    networks = network_contracts(BANDS, P, TILE)
    source = SampleSource.from_config(config, BANDS, P, seed=3)
    specs = pipeline_specs(BANDS, P, TILE)
    assert list(contracts) == list(networks) == list(NETWORKS)
    for name in NETWORKS:
        contract = contracts[name]
        assert contract.network == networks[name] and contract.spec == specs[name]
        assert networks[name].input_shapes() == {k: list(v.shape) for k, v in specs[name].inputs.items()}
        check_feeds(name, specs[name].inputs, contract.sample_inputs, "input")
        want = networks[name].sample_inputs(source, seed=3)
        assert list(contract.sample_inputs) == list(want)
        for key, value in want.items():
            np.testing.assert_array_equal(contract.sample_inputs[key], value)
    np.testing.assert_allclose(source.endmembers, np.float64(config["endmembers"]["estimated"]))


def test_manifest_describes_the_export(exported, checkpoint):
    out, document, messages = exported
    manifest = load_manifest(out, verify=True)
    assert json.loads((out / "manifest.json").read_text()) == document
    assert sorted(p.name for p in out.iterdir()) == ["abundance_step.onnx", "hybridstu.onnx", "manifest.json",
                                                     "spectra_step.onnx"]
    specs = pipeline_specs(BANDS, P, TILE)
    for name in NETWORKS:
        entry = manifest.network(name)
        assert entry.file == f"{name}.onnx" and entry.opset == 20 and entry.precision == "fp32"
        assert entry.spec == specs[name]
        assert list(entry.inputs) == list(specs[name].inputs)               # call order kept
        assert len(entry.extra["cache_key"]) == 64
        checks = entry.extra["checks"]
        for backend in BACKENDS:
            assert 0 <= checks[backend]["max_abs"] <= FP32_TOLERANCE, (name, backend, checks)
    assert manifest.bands == BANDS and manifest.wavelengths[0] == 400.0
    config = _config()
    np.testing.assert_allclose(manifest.endmembers, np.float32(config["endmembers"]["estimated"]))
    assert manifest.endmember_names == ["soil", "vegetation", "water"]
    assert manifest.schedule == Schedule().to_config()
    np.testing.assert_array_equal(manifest.betas, Schedule().betas)
    assert manifest.inference == {"steps": 10, "t0": 300, "eta": 0.0, "samples": 1, "rounds": 1, "tile": TILE}
    assert manifest.versions["torch"] == torch.__version__ and manifest.versions["onnx"] == onnx.__version__
    assert document["export"]["tile"] == TILE and document["export"]["precision"] == "fp32"
    assert any(m.startswith("hybridstu (fp32): exported in") for m in messages)


def test_graphs_are_single_file_opset_20_with_instance_norm(exported):
    out = exported[0]
    for name in NETWORKS:
        model = onnx.load(str(out / f"{name}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert {o.domain: o.version for o in model.opset_import}[""] == 20
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        ops = {node.op_type for node in model.graph.node}
        if name != "hybridstu":   # GroupNorm at opset 20: InstanceNormalization, not GroupNormalization
            assert "InstanceNormalization" in ops and "GroupNormalization" not in ops
        assert [i.name for i in model.graph.input] == list(pipeline_specs(BANDS, P, TILE)[name].inputs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_with_torch_on_fresh_inputs(exported, checkpoint, backend):
    """Inputs the export never saw (another seed); every network within 1e-4 of eager torch."""
    models, config = load_checkpoint(checkpoint)
    contracts = export_contracts(models, config, tile=TILE, seed=11)
    networks = load_networks(exported[0], backend)
    specs = pipeline_specs(BANDS, P, TILE)
    for name in NETWORKS:
        check_network(name, networks[name], specs[name])
        got = networks[name](contracts[name].sample_inputs)
        check_feeds(name, networks[name].outputs, got, "output")
        want = contracts[name].reference()
        for key in want:
            difference = np.abs(got[key] - want[key]).max()
            assert difference <= FP32_TOLERANCE, (name, backend, difference)
            assert np.abs(want[key]).max() > 0.1          # a real signal, not zeros against zeros
    steps = networks["abundance_step"](contracts["abundance_step"].sample_inputs)["x_prev"]
    assert steps.shape == (1, P, TILE, TILE)


def test_cache_skips_unchanged_and_reexports_changed_weights(exported, checkpoint, tmp_path):
    out = _copy(exported, tmp_path)
    before = _stats(out)
    messages: list[str] = []
    document = export(checkpoint, out, tile=TILE, progress=messages.append)
    assert _stats(out) == before                                  # no file rewritten
    assert sum("unchanged, reusing" in m for m in messages) == 3
    assert document["networks"] == exported[1]["networks"]

    models = _models(0)                                           # new HybridSTU weights only
    with torch.no_grad():
        models["hybridstu"].head.bias.add_(0.5)
    changed = save_checkpoint(tmp_path / "changed", models, _config())
    messages.clear()
    document = export(changed, out, tile=TILE, progress=messages.append)
    after = _stats(out)
    assert after["hybridstu.onnx"] != before["hybridstu.onnx"]
    assert {k: after[k] for k in ("abundance_step.onnx", "spectra_step.onnx")} == {
        k: before[k] for k in ("abundance_step.onnx", "spectra_step.onnx")}
    old, new = exported[1]["networks"], document["networks"]
    assert new["hybridstu"]["cache_key"] != old["hybridstu"]["cache_key"]
    assert new["hybridstu"]["sha256"] != old["hybridstu"]["sha256"]
    assert new["spectra_step"]["cache_key"] == old["spectra_step"]["cache_key"]
    assert any(m.startswith("hybridstu (fp32): exported") for m in messages)
    load_manifest(out, verify=True)

    (out / "spectra_step.onnx").write_bytes(b"tampered")            # a damaged file is not reused
    messages.clear()
    export(changed, out, tile=TILE, check=False, progress=messages.append)
    assert any(m.startswith("spectra_step (fp32): exported") for m in messages)
    load_manifest(out, verify=True)


def test_fp16_export_keeps_the_sensitive_parts_in_float32(exported, checkpoint, tmp_path):
    """``unmix-export --fp16 --check``: fp16 graphs checked against fp32 with numpy and polygraphy, for real."""
    out = _copy(exported, tmp_path)
    done = subprocess.run([sys.executable, "-m", "unmix.export.cli", str(checkpoint), "--out", str(out),
                           "--tile", str(TILE), "--fp16", "--check", "--json"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    messages = done.stderr.splitlines()
    assert sum("(fp32): unchanged" in m for m in messages) == 3      # the fp32 stage came from the cache
    document = json.loads(done.stdout)
    assert json.loads((out / "manifest.json").read_text()) == document
    manifest = load_manifest(out, verify=True)
    models, config = load_checkpoint(checkpoint)
    contracts = export_contracts(models, config, tile=TILE, seed=5)
    for name in NETWORKS:
        entry = manifest.network(name)
        assert entry.precision == "fp16" and entry.file == f"{name}.fp16.onnx"
        assert entry.reference.file == f"{name}.onnx" and entry.reference.precision == "fp32"
        assert entry.spec == pipeline_specs(BANDS, P, TILE)[name]      # float32 I/O
        checks = entry.extra["checks"]
        assert checks["tolerance"] == FP16_TOLERANCE and "casting to float32" in checks["note"]
        for backend in BACKENDS:
            assert checks[backend]["max_abs"] <= FP16_TOLERANCE
        polygraphy = checks["polygraphy"]          # polygraphy's Comparator, fp32 then fp16 on ONNX Runtime CPU
        assert polygraphy["compared_with"] == "polygraphy Comparator" and polygraphy["polygraphy_passed"] is True
        assert polygraphy["runners"] == ["fp32-onnxruntime-cpu", "fp16-onnxruntime-cpu"]
        assert polygraphy["tolerance"] == FP16_TOLERANCE and polygraphy["rtol"] == 0.0
        assert 0 < polygraphy["max_abs"] <= FP16_TOLERANCE          # fp16 weights do change the result, a little
        assert polygraphy["mean_abs"] <= polygraphy["max_abs"] and "casting to float32" in polygraphy["note"]
        assert set(polygraphy["outputs"]) == set(entry.outputs)
        line = next(m for m in messages if m.startswith(f"unmix-export: {name} (fp16): max abs difference"))
        assert f"polygraphy (onnxruntime) {polygraphy['max_abs']:.2g}" in line
        report = precision_report(entry.path)
        assert report == checks["precision"]
        assert report["Conv"] == {"float16": report["Conv"].get("float16", 0)} and report["Conv"]["float16"] > 0
        pinned = ("Softmax",) if name == "hybridstu" else ("InstanceNormalization", "Sin", "Cos", "Gemm")
        for op in pinned:
            assert set(report[op]) == {"float32"}, (name, op, report)
        if name == "abundance_step":
            assert set(report["TopK"]) == {"float32"} and set(report["CumSum"]) == {"float32"}
    # fresh inputs: fp16 graphs on both backends against eager fp32 torch
    for backend in BACKENDS:
        networks = load_networks(manifest, backend)
        reference = load_networks(manifest, backend, names=["hybridstu"], precision="fp32")["hybridstu"]
        assert reference.inputs == networks["hybridstu"].inputs
        for name in NETWORKS:
            got = networks[name](contracts[name].sample_inputs)
            want = contracts[name].reference()
            for key in want:
                assert np.abs(got[key] - want[key]).max() <= FP16_TOLERANCE, (name, backend)
    assert document["export"]["precision"] == "fp16"

    export(checkpoint, out, tile=TILE)                       # back to fp32: the fp16 files go away
    assert sorted(p.name for p in out.glob("*.onnx")) == ["abundance_step.onnx", "hybridstu.onnx",
                                                         "spectra_step.onnx"]


def test_a_failed_check_leaves_the_previous_model_as_it_was(exported, tmp_path):
    out = _copy(exported, tmp_path)
    models = _models(0)
    with torch.no_grad():
        models["hybridstu"].head.bias.add_(0.25)
    changed = save_checkpoint(tmp_path / "changed", models, _config())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportCheckError, match=rf"^{out / 'hybridstu.onnx'}: onnxruntime output differs from torch by .* "
                                               r"more than the tolerance 1e-12"):
        export(changed, out, tile=TILE, fp32_tolerance=1e-12)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before          # nothing new, nothing left over
    load_manifest(out, verify=True)


def test_export_refuses_a_foreign_folder(checkpoint, tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(OutputError, match="is not an exported unmix model"):
        export(checkpoint, foreign, tile=TILE)
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_pipeline_matches_eager_torch(exported, checkpoint, backend):
    """The two-pass pipeline (HybridSTU, 1D and 2D DDIM loops, overlapping tiles, stochastic samples) on the
    exported graphs against the same pipeline on the eager torch modules: within 1e-4 everywhere."""
    from unmix.io.scene import Scene
    from unmix.runtime.pipeline import PipelineConfig, run_pipeline
    from unmix.train.fused import load_torch_networks

    manifest = load_manifest(exported[0])
    rng = np.random.default_rng(3)
    abundances = rng.dirichlet(np.ones(P) * 0.5, size=(23, 29))
    cube = abundances @ manifest.endmembers + rng.normal(0, 0.003, (23, 29, BANDS))
    scene = Scene.from_array(cube.astype(np.float32), wavelengths=manifest.wavelengths)
    settings = PipelineConfig(steps=4, t0=200, eta=0.5, samples=2, tile=TILE, overlap=4, refine_spectra=True,
                              spectra_steps=3, spectra_t0=100, seed=9)
    schedule = Schedule.from_config(manifest.schedule)
    torch_networks, _ = load_torch_networks(checkpoint, tile=TILE)
    want = run_pipeline(scene, torch_networks, schedule, settings, endmembers=manifest.endmembers)
    got = run_pipeline(scene, load_networks(manifest, backend), schedule, settings, endmembers=manifest.endmembers)
    for key in ("abundances", "endmembers", "rmse", "uncertainty"):
        a, b = getattr(got, key), getattr(want, key)
        assert a.shape == b.shape and np.isfinite(b).all(), key
        assert np.abs(a - b).max() <= FP32_TOLERANCE, (key, backend, float(np.abs(a - b).max()))
    assert want.uncertainty.max() > 0 and np.abs(want.endmembers - manifest.endmembers).max() > 1e-3
