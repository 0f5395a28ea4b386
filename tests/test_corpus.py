"""The bad-input corpus (tests/corpus, written by tests/corpus/make_corpus.py) against the real readers and CLIs.

Each case gives one clear error with its documented exit code (0 ok, 65 bad data, 66 missing input), or the
documented behaviour; no traceback reaches the user; no output folder holds a partial bundle; nothing is
ever unpickled. ``unmix-run`` and ``unmix-eval`` run as subprocesses on a real exported model (ONNX
Runtime); checkpoints, training states and engine caches through the Python API (plus ``unmix-train``
where it reads them).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.corpus.model import EVAL, RUN, TRAIN, cli_env, tiny_model
from unmix.errors import UnmixError

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus"
INDEX = json.loads((CORPUS / "cases.json").read_text())
MARKER = INDEX["pickle_marker"]
CASES = INDEX["cases"]


def cases(*kinds: str, where=lambda case: True):
    return [pytest.param(case, id=case["name"]) for case in CASES if case["kind"] in kinds and where(case)]


def corpus_path(case) -> Path:
    return CORPUS / case["path"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory)


def assert_clean_failure(stderr: str, program: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if line]
    assert lines and all(line.startswith(f"{program}: ") for line in lines), stderr


def no_leftovers(out: Path, stem: str) -> bool:
    """No bundle and no hidden temporary folder of ``stem`` in ``out``."""
    return not (out / stem).exists() and not list(out.glob(f".{stem}.*"))


# --- the corpus itself -------------------------------------------------------------------------------

def test_corpus_is_what_the_script_writes(tmp_path):
    """make_corpus.py regenerates every committed file byte for byte (and nothing is stale)."""
    copy = tmp_path / "corpus"
    copy.mkdir()
    shutil.copy(CORPUS / "make_corpus.py", copy)
    done = subprocess.run([sys.executable, str(copy / "make_corpus.py")], capture_output=True, text=True,
                          env=cli_env(), timeout=1800)
    assert done.returncode == 0, done.stderr

    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py" and not p.name.startswith(".")}

    assert files(copy) == files(CORPUS)
    assert len(CASES) >= 150
    assert sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file()) < 1_000_000


# --- ENVI through the Python API ---------------------------------------------------------------------

def _byte_order_reference(case) -> np.ndarray:
    sys.path.insert(0, str(CORPUS))
    try:
        import make_corpus
    finally:
        sys.path.remove(str(CORPUS))
    code = int(case["name"][4:6])
    kind, scale = make_corpus.BYTE_ORDER_TYPES[code]
    values = make_corpus._spectra(4, 5, seed=4) * scale
    return (np.round(values) if kind[0] in "iu" else values) / scale


@pytest.mark.parametrize("case", cases("envi", "byteorder", where=lambda c: not c.get("cli_only")))
def test_envi_case_through_the_api(case):
    from unmix.io.envi import read_cube

    if case["exit"] == 0:
        cube = read_cube(corpus_path(case)).read()
        assert cube.dtype == np.float32 and np.isfinite(cube).all()
        if case["kind"] == "byteorder":
            np.testing.assert_allclose(cube, _byte_order_reference(case), rtol=1e-6, atol=1e-6)
        return
    with pytest.raises(UnmixError) as info:
        read_cube(corpus_path(case)).read()
    assert info.value.exit_code == case["exit"]
    assert case["match"] in str(info.value)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("case", cases("fuzz"))
def test_fuzzed_header_is_read_or_refused_cleanly(case):
    from unmix.io.envi import read_cube

    try:
        cube = read_cube(corpus_path(case)).read()
    except UnmixError as exc:
        assert exc.exit_code in (65, 66)
        assert "fuzz_" in str(exc) and len(str(exc).splitlines()) == 1
    else:
        assert cube.ndim == 3 and cube.dtype == np.float32


def test_absurd_sizes_are_refused_even_when_the_file_is_big_enough(tmp_path):
    """A sparse data file as large as the header claims: refused on the size itself, nothing allocated."""
    import tracemalloc

    from unmix.errors import EnviError
    from unmix.io.envi import MAX_DIMENSION, read_cube

    header = (CORPUS / "envi" / "valid.hdr").read_text().replace("samples = 5", f"samples = {MAX_DIMENSION + 1}")
    (tmp_path / "huge.hdr").write_text(header.replace("lines = 4", "lines = 1").replace("bands = 24", "bands = 1")
                                       .split("wavelength units")[0])
    with open(tmp_path / "huge.img", "wb") as handle:
        handle.truncate((MAX_DIMENSION + 1) * 4)  # sparse: no disk used
    tracemalloc.start()
    with pytest.raises(EnviError, match="'samples': expected at most"):
        read_cube(tmp_path / "huge.hdr")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20


# --- ENVI through unmix-run --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_batch(built, tmp_path_factory):
    """One ``unmix-run --json`` over every ENVI corpus cube (the CLI reports each cube on its own)."""
    selected = [c for c in CASES if c["kind"] in ("envi", "byteorder", "fuzz", "pixels")]
    out = tmp_path_factory.mktemp("corpus-run") / "out"
    done = subprocess.run([*RUN, *(str(corpus_path(c)) for c in selected), "--model", str(built / "model"),
                           "--out", str(out), "--json", "--quiet", "--no-quicklook"],
                          capture_output=True, text=True, env=cli_env(), timeout=1800, cwd=out.parent)
    assert "Traceback" not in done.stderr, done.stderr
    reports = json.loads(done.stdout)["runs"]
    assert len(reports) == len(selected)
    return {case["name"]: report for case, report in zip(selected, reports)}, done, out


@pytest.mark.parametrize("case", cases("envi", "byteorder", "fuzz", "pixels"))
def test_unmix_run_on_corpus_cube(run_batch, case):
    reports, done, out = run_batch
    report = reports[case["name"]]
    assert report["cube"] == str(corpus_path(case))
    expected = case["exit"]
    if case["kind"] == "fuzz":
        expected = 0 if report["ok"] else report["exit_code"]
        assert expected in (0, 65, 66)
    if expected == 0:
        assert report["ok"], report
        assert any(case["match"] in note for note in report["notes"]) or not case["match"]
        assert (Path(report["bundle"]) / f"{Path(report['bundle']).name}.run.json").is_file()
    else:
        assert not report["ok"] and report["exit_code"] == expected, report
        assert case["match"] in report["error"] and len(report["error"].splitlines()) == 1
        assert f"unmix-run: error: {report['error']}" in done.stderr.splitlines()
        stem = corpus_path(case).name.split(".")[0]
        assert no_leftovers(out, stem)
    assert_clean_failure(done.stderr, "unmix-run")
    assert done.returncode != 0  # the batch holds failures: it exits with the first one's code


@pytest.mark.parametrize("case", cases("pixels", where=lambda c: c["exit"] == 0))
def test_masked_pixels_are_nan_in_every_output(run_batch, case):
    from unmix.io.envi import read_cube

    reports, _, _ = run_batch
    bundle = Path(reports[case["name"]]["bundle"])
    stem = bundle.name
    abundances = read_cube(bundle / f"{stem}.abund.hdr").read()
    rmse = read_cube(bundle / f"{stem}.rmse.hdr").read()[..., 0]
    masked = np.zeros(abundances.shape[:2], dtype=bool)
    if isinstance(case["masked"], str):
        masked[:32, :32] = True
    else:
        for row, col in case["masked"]:
            masked[row, col] = True
    assert np.isnan(abundances[masked]).all() and np.isnan(rmse[masked]).all()
    assert np.isfinite(abundances[~masked]).all() and np.isfinite(rmse[~masked]).all()
    np.testing.assert_allclose(abundances[~masked].sum(-1), 1.0, atol=1e-5)
    run = json.loads((bundle / f"{stem}.run.json").read_text())
    assert run["input"]["masked_pixels"] == int(masked.sum())


# --- models: manifests and ONNX graphs through unmix-run ---------------------------------------------

def _edit_document(document, edit):
    for dotted in edit.get("delete", []):
        *parents, last = dotted.split(".")
        target = document
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        del target[last]
    for dotted, value in edit.get("set", {}).items():
        *parents, last = dotted.split(".")
        target = document
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return document


def _model_variant(built: Path, folder: Path, case) -> Path:
    """A copy of the test model changed as the case says; returns the model folder."""
    from unmix.runtime.manifest import file_sha256

    model = folder / "model"
    shutil.copytree(built / "model", model)
    manifest_path = model / "manifest.json"
    document = json.loads(manifest_path.read_text())
    graph = model / document["networks"]["hybridstu"]["file"]
    if case["kind"] == "onnx":
        if case.get("derive") == "truncate":
            graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
        else:
            shutil.copy(corpus_path(case), graph)
        document["networks"]["hybridstu"]["sha256"] = file_sha256(graph)  # reach the graph loader itself
        manifest_path.write_text(json.dumps(document))
        return model
    edit = json.loads(corpus_path(case).read_text())
    if edit.get("remove"):
        manifest_path.unlink()
        return model
    if "text" in edit:
        manifest_path.write_text(edit["text"])
        return model
    if "symlink" in edit:
        name, target = edit["symlink"]
        shutil.copy(graph, model / target)
        (model / name).symlink_to(target)
    manifest_path.write_text(json.dumps(_edit_document(document, edit)))
    return model


@pytest.fixture(scope="module")
def model_runs(built, tmp_path_factory):
    """``unmix-run`` on the test cube with every manifest and ONNX variant (run two at a time)."""
    selected = [c for c in CASES if c["kind"] in ("manifest", "onnx")]
    base = tmp_path_factory.mktemp("corpus-models")

    def run(case):
        folder = base / case["name"]
        folder.mkdir()
        model = _model_variant(built, folder, case)
        done = subprocess.run([*RUN, str(built / "scene.hdr"), "--model", str(model), "--out", str(folder / "out"),
                               "--quiet", "--no-quicklook"], capture_output=True, text=True, env=cli_env(),
                              timeout=1800, cwd=folder)
        return case["name"], (done, folder)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, selected))


@pytest.mark.parametrize("case", cases("manifest", "onnx"))
def test_unmix_run_refuses_a_bad_model(model_runs, case):
    done, folder = model_runs[case["name"]]
    assert done.returncode == case["exit"], done.stderr
    assert case["match"] in done.stderr
    assert_clean_failure(done.stderr, "unmix-run")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (folder / "out").exists() or no_leftovers(folder / "out", "scene")


# --- checkpoints, weights and training states (Python API) --------------------------------------------

def _checkpoint_variant(built: Path, folder: Path, case) -> Path:
    from unmix.train.checkpoint import _sha256

    checkpoint = folder / "checkpoint"
    shutil.copytree(built / "checkpoint", checkpoint)
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    if case["kind"] == "weights":
        target = checkpoint / config["networks"]["hybridstu"]["file"]
        shutil.copy(corpus_path(case), target)
        config["networks"]["hybridstu"]["sha256"] = _sha256(target)  # reach the safetensors parser itself
        config_path.write_text(json.dumps(config))
        return checkpoint
    edit = json.loads(corpus_path(case).read_text())
    if "text" in edit:
        config_path.write_text(edit["text"])
        return checkpoint
    if "copy" in edit:
        source, name = edit["copy"]
        shutil.copy(CORPUS / source, checkpoint / name)
        config["networks"]["hybridstu"]["sha256"] = _sha256(checkpoint / name)
    if "symlink" in edit:
        name, target = edit["symlink"]
        shutil.move(checkpoint / name, checkpoint / target)
        (checkpoint / name).symlink_to(target)
    if "delete_file" in edit:
        (checkpoint / edit["delete_file"]).unlink()
    config_path.write_text(json.dumps(_edit_document(config, edit)))
    return checkpoint


@pytest.mark.parametrize("case", cases("weights", "checkpoint", where=lambda c: not c["name"].startswith("state_")))
def test_checkpoint_case_is_refused_and_never_unpickled(built, tmp_path, monkeypatch, case):
    from unmix.train.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    checkpoint = _checkpoint_variant(built, tmp_path, case)
    with pytest.raises(UnmixError) as info:
        load_checkpoint(checkpoint)
    assert info.value.exit_code == case["exit"]
    assert case["match"] in str(info.value) and len(str(info.value).splitlines()) == 1
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("case", cases("checkpoint", where=lambda c: c["name"].startswith("state_")))
def test_training_state_case_is_refused(tmp_path, monkeypatch, case):
    import torch

    from unmix.train.state import TrainState

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    folder = tmp_path / "run" / ".train_state"
    TrainState(folder, resume=False, fingerprint="f").save("cnn", 3, {"net": model}, optimizer, {})
    edit = json.loads(corpus_path(case).read_text())["state"]
    meta = json.loads((folder / "cnn.json").read_text())
    if "copy" in edit:
        shutil.copy(CORPUS / edit["copy"], folder / meta["weights"])
    if "weights" in edit:
        meta["weights"] = edit["weights"]
        (folder / "cnn.json").write_text(json.dumps(meta))
    if "text" in edit:
        (folder / "cnn.json").write_text(edit["text"])
    with pytest.raises(UnmixError) as info:
        TrainState(folder, resume=True, fingerprint="f").restore("cnn", {"net": model}, optimizer, {})
    assert info.value.exit_code == case["exit"] and case["match"] in str(info.value)
    assert not (tmp_path / MARKER).exists()


def test_unmix_train_refuses_a_pickled_checkpoint(built, tmp_path):
    """``unmix-train --stage`` reads the checkpoint in --out: a pickle there is refused, never run."""
    case = next(c for c in CASES if c["name"] == "checkpoint_file_pickle")
    checkpoint = _checkpoint_variant(built, tmp_path, case)
    done = subprocess.run([*TRAIN, str(built / "scene.hdr"), "-p", "3", "--stage", "abundance", "--out",
                           str(checkpoint), "--quiet", "--device", "cpu"], capture_output=True, text=True,
                          env=cli_env(), timeout=1800, cwd=tmp_path)
    assert done.returncode == 65, done.stderr
    assert "not a readable safetensors" in done.stderr
    assert_clean_failure(done.stderr, "unmix-train")
    assert not (tmp_path / MARKER).exists()


# --- engine plans (the TensorRT cache; no TensorRT needed to refuse them) ------------------------------

@pytest.mark.parametrize("case", cases("engine"))
def test_engine_cache_case_is_never_run(case):
    from unmix.runtime.engine_cache import EngineCacheError, EngineIdentity, find_engine, load_or_build

    sys.path.insert(0, str(CORPUS))
    try:
        from make_corpus import ENGINE_IDENTITY
    finally:
        sys.path.remove(str(CORPUS))
    identity = EngineIdentity(**ENGINE_IDENTITY)
    lookup = find_engine(corpus_path(case), identity)
    deserialized = []
    with pytest.raises(EngineCacheError) as info:
        load_or_build(corpus_path(case), identity, deserialize=lambda plan: deserialized.append(plan))
    assert info.value.exit_code == case["exit"] and case["match"] in str(info.value)
    if lookup.hit:  # only a plan whose bytes match its sidecar reaches the deserializer
        assert len(deserialized) == 1 and len(deserialized[0]) == lookup.sidecar.plan_bytes > 0
    else:
        assert deserialized == [] and case["match"] in lookup.reason


# --- known spectra for unmix-train ---------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("known"))
def test_known_spectra_case(case):
    from unmix.train.cli import _read_known

    with pytest.raises(UnmixError) as info:
        _read_known(corpus_path(case))
    assert info.value.exit_code == case["exit"] and case["match"] in str(info.value)


def test_unmix_train_refuses_bad_known_spectra(built, tmp_path):
    done = subprocess.run([*TRAIN, str(built / "scene.hdr"), "-p", "3", "--known", str(CORPUS / "known" / "ragged.csv"),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, env=cli_env(),
                          timeout=1800, cwd=tmp_path)
    assert done.returncode == 65 and "ragged.csv" in done.stderr
    assert_clean_failure(done.stderr, "unmix-train")
    assert not (tmp_path / "run").exists()


# --- truths for unmix-eval -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(built, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus-eval")
    done = subprocess.run([*RUN, str(built / "scene.hdr"), "--model", str(built / "model"), "--out", str(out),
                           "--quiet", "--no-quicklook"], capture_output=True, text=True, env=cli_env(), timeout=1800)
    assert done.returncode == 0, done.stderr
    return out / "scene"


@pytest.mark.parametrize("case", cases("truth"))
def test_unmix_eval_on_corpus_truth(bundle, tmp_path, case):
    target = bundle.parent / case["bundle"] if "bundle" in case else bundle
    truth = corpus_path(case) if case["path"] else CORPUS / "truth" / "wrong_shape.npz"
    done = subprocess.run([*EVAL, str(target), "--truth", str(truth)], capture_output=True, text=True,
                          env=cli_env(), timeout=1800, cwd=tmp_path)
    assert_clean_failure(done.stderr, "unmix-eval")
    assert not (tmp_path / MARKER).exists()
    assert done.returncode == case["exit"], done.stderr
    assert case["match"] in done.stderr


# --- the last line of defence -----------------------------------------------------------------------------

def test_an_unexpected_exception_is_one_line_and_exit_70(capsys, monkeypatch):
    from unmix.errors import report_errors

    @report_errors("unmix-run")
    def broken():
        raise RuntimeError("something unforeseen\nsecond line")

    monkeypatch.delenv("UNMIX_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        broken()
    assert info.value.code == 70
    assert capsys.readouterr().err == ("unmix-run: internal error: RuntimeError: something unforeseen (a bug in "
                                       "unmix: please report it, with UNMIX_DEBUG=1 for the traceback)\n")
    monkeypatch.setenv("UNMIX_DEBUG", "1")
    with pytest.raises(RuntimeError):
        broken()
