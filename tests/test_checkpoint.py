"""unmix.train.checkpoint: round trip, corrupt and missing files, atomic replacement."""
from __future__ import annotations

import json
import os

import pytest
import torch

from unmix.errors import InputError, MissingInputError, OutputError, UsageError
from unmix.train import checkpoint
from unmix.train.checkpoint import load_checkpoint, save_checkpoint
from unmix.train.ddpm import EMA
from unmix.train.models import HybridSTU, ResUNet


def _networks(seed: int = 0) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    nets = {
        "hybridstu": HybridSTU(bands=14, endmembers=3, reduced_bands=8, width=4),
        "spectra": ResUNet(dims=1, in_channels=1, base_channels=8, channel_mult=(1, 2, 2)),
        "abundance": ResUNet(dims=2, in_channels=3, base_channels=8),
    }
    with torch.no_grad():  # non-zero weights everywhere, so a wrong load cannot pass by accident
        for net in nets.values():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return nets


def _outputs(nets: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    t = torch.tensor([3.0, 800.0])
    with torch.no_grad():
        return {
            "hybridstu": nets["hybridstu"].eval()(torch.rand(2, 14, 9, 7, generator=gen)),
            "spectra": nets["spectra"].eval()(torch.randn(2, 1, 31, generator=gen), t),
            "abundance": nets["abundance"].eval()(torch.randn(2, 3, 9, 7, generator=gen), t),
        }


def _leftovers(parent) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_round_trip_rebuilds_networks_with_bitwise_identical_outputs(tmp_path):
    nets = _networks()
    config = {"sensor": {"bands": 14}, "note": "round trip"}
    out = save_checkpoint(tmp_path / "ckpt", nets, config)
    assert sorted(p.name for p in out.iterdir()) == [
        "abundance.safetensors", "config.json", "hybridstu.safetensors", "spectra.safetensors"]
    models, loaded = load_checkpoint(out)
    assert loaded["sensor"] == {"bands": 14} and loaded["format"] == checkpoint.CHECKPOINT_FORMAT
    assert loaded["networks"]["spectra"]["args"]["channel_mult"] == [1, 2, 2]
    assert {name: type(m) for name, m in models.items()} == {name: type(m) for name, m in nets.items()}
    assert not any(m.training for m in models.values())
    expected, got = _outputs(nets), _outputs(models)
    for name in nets:
        assert torch.equal(expected[name], got[name]), name


def test_ema_weights_are_saved_beside_and_loaded_on_request(tmp_path):
    nets = _networks()
    ema = EMA(nets["abundance"], decay=0.5)
    with torch.no_grad():
        for p in nets["abundance"].parameters():
            p.add_(1.0)
    ema.update(nets["abundance"])
    save_checkpoint(tmp_path / "ckpt", nets, {}, ema={"abundance": ema})
    assert (tmp_path / "ckpt" / "abundance.ema.safetensors").is_file()
    plain, _ = load_checkpoint(tmp_path / "ckpt")
    averaged, _ = load_checkpoint(tmp_path / "ckpt", ema=True)
    key = "out.2.weight"
    assert torch.equal(plain["abundance"].state_dict()[key], nets["abundance"].state_dict()[key])
    assert torch.equal(averaged["abundance"].state_dict()[key], ema.shadow[key])
    assert torch.equal(averaged["hybridstu"].state_dict()["head.weight"], nets["hybridstu"].head.weight)


def test_corrupt_weights_are_one_clear_input_error(tmp_path):
    out = save_checkpoint(tmp_path / "ckpt", _networks(), {})
    weights = out / "spectra.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"spectra\.safetensors: checksum does not match") as info:
        load_checkpoint(out)
    assert "\n" not in str(info.value)

    # A file that is not safetensors at all, recorded with its own checksum: the parser's error.
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    config = json.loads((out / "config.json").read_text())
    config["networks"]["spectra"]["sha256"] = checkpoint._sha256(weights)
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"spectra\.safetensors: not a readable safetensors file") as info:
        load_checkpoint(out)
    assert "\n" not in str(info.value)


def test_missing_and_mismatched_files(tmp_path):
    with pytest.raises(MissingInputError, match="checkpoint folder not found"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match=r"config\.json: not found"):
        load_checkpoint(tmp_path / "empty")

    out = save_checkpoint(tmp_path / "ckpt", _networks(), {})
    (out / "hybridstu.safetensors").unlink()
    with pytest.raises(MissingInputError, match=r"hybridstu\.safetensors: weights file not found"):
        load_checkpoint(out)

    out = save_checkpoint(tmp_path / "ckpt2", _networks(), {})
    config = json.loads((out / "config.json").read_text())
    config["networks"]["abundance"]["args"]["base_channels"] = 16
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"abundance\.safetensors: weights do not fit the ResUNet"):
        load_checkpoint(out)
    config["networks"]["abundance"]["class"] = "os.system"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="unknown class 'os.system'"):
        load_checkpoint(out)
    config["networks"]["abundance"].update({"class": "ResUNet", "file": "../elsewhere.safetensors"})
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="must be a file name in the folder"):
        load_checkpoint(out)
    (out / "config.json").write_text("{truncated")
    with pytest.raises(InputError, match=r"config\.json: not valid JSON"):
        load_checkpoint(out)


def test_save_refuses_bad_requests(tmp_path):
    nets = _networks()
    with pytest.raises(UsageError, match="reserved"):
        save_checkpoint(tmp_path / "a", nets, {"networks": 1})
    with pytest.raises(UsageError, match="JSON"):
        save_checkpoint(tmp_path / "a", nets, {"bad": object()})
    with pytest.raises(UsageError, match="only HybridSTU, ResUNet"):
        save_checkpoint(tmp_path / "a", {"linear": torch.nn.Linear(2, 2)}, {})
    with pytest.raises(UsageError, match="network name"):
        save_checkpoint(tmp_path / "a", {"../x": nets["spectra"]}, {})
    user_folder = tmp_path / "documents"
    user_folder.mkdir()
    (user_folder / "thesis.tex").write_text("precious")
    with pytest.raises(OutputError, match="not an unmix checkpoint"):
        save_checkpoint(user_folder, nets, {})
    assert (user_folder / "thesis.tex").read_text() == "precious"
    assert not (tmp_path / "a").exists() and _leftovers(tmp_path) == []


def test_a_failed_save_leaves_the_old_checkpoint_intact_and_no_temp_files(tmp_path, monkeypatch):
    old_nets = _networks(seed=0)
    out = save_checkpoint(tmp_path / "ckpt", old_nets, {"version": "old"})
    (out / ".train_state").mkdir()
    (out / ".train_state" / "cnn.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    real_write = checkpoint._write_weights
    calls = []

    def fail_on_second(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_write(tensors, path)

    monkeypatch.setattr(checkpoint, "_write_weights", fail_on_second)
    with pytest.raises(OutputError, match="No space left on device"):
        save_checkpoint(out, _networks(seed=1), {"version": "new"})
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert (out / ".train_state" / "cnn.json").is_file()
    assert _leftovers(tmp_path) == []
    models, config = load_checkpoint(out)
    assert config["version"] == "old"
    assert all(torch.equal(a, b) for a, b in zip(_outputs(old_nets).values(), _outputs(models).values()))

    # A failure at the swap itself (renaming the new folder in) also rolls back.
    monkeypatch.setattr(checkpoint, "_write_weights", real_write)
    real_rename = os.rename

    def fail_swap(src, dst):
        if str(dst) == str(out) and ".tmp-" in str(src):
            raise OSError(5, "Input/output error")
        real_rename(src, dst)

    monkeypatch.setattr(checkpoint.os, "rename", fail_swap)
    with pytest.raises(OutputError, match="Input/output error"):
        save_checkpoint(out, _networks(seed=1), {"version": "new"})
    monkeypatch.setattr(checkpoint.os, "rename", real_rename)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert (out / ".train_state" / "cnn.json").is_file()
    assert _leftovers(tmp_path) == []

    # Interrupted (KeyboardInterrupt) mid-save: same guarantee, and the interrupt propagates.
    def interrupt(tensors, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_write_weights", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(out, _networks(seed=1), {"version": "new"})
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert _leftovers(tmp_path) == []


def test_replacing_a_checkpoint_swaps_it_whole_and_keeps_hidden_entries(tmp_path):
    out = save_checkpoint(tmp_path / "ckpt", _networks(seed=0), {"version": "old"})
    (out / ".train_state").mkdir()
    (out / ".train_state" / "spectra.json").write_text("{}")
    (out / "stale.safetensors").write_bytes(b"left from an older layout")
    new_nets = {"hybridstu": _networks(seed=1)["hybridstu"]}
    save_checkpoint(out, new_nets, {"version": "new"})
    assert sorted(p.name for p in out.iterdir()) == [".train_state", "config.json", "hybridstu.safetensors"]
    assert (out / ".train_state" / "spectra.json").read_text() == "{}"
    models, config = load_checkpoint(out)
    assert config["version"] == "new" and set(models) == {"hybridstu"}
    assert torch.equal(models["hybridstu"].head.weight, new_nets["hybridstu"].head.weight)
    assert _leftovers(tmp_path) == []
    # A folder holding only hidden entries (a trainer's state before its first checkpoint) is fine too.
    fresh = tmp_path / "fresh"
    (fresh / ".train_state").mkdir(parents=True)
    save_checkpoint(fresh, new_nets, {})
    assert (fresh / ".train_state").is_dir() and (fresh / "config.json").is_file()


def test_config_values_are_stored_as_strict_json(tmp_path):
    import numpy as np

    config = {"losses": {"cnn": float("nan"), "spectra": 0.5}, "spectrum": np.arange(3, dtype=np.float32),
              "count": np.int64(4), "inf": [float("inf")]}
    save_checkpoint(tmp_path / "ckpt", {"hybridstu": _networks()["hybridstu"]}, config)
    text = (tmp_path / "ckpt" / "config.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    _, loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded["losses"] == {"cnn": None, "spectra": 0.5}
    assert loaded["spectrum"] == [0.0, 1.0, 2.0] and loaded["count"] == 4 and loaded["inf"] == [None]
