"""unmix.runtime.settings: the one definition of the inference settings, and the C++ table written from it."""
from __future__ import annotations

from pathlib import Path

import pytest

from unmix.errors import UsageError
from unmix.runtime.settings import SETTINGS, PipelineConfig, c_abi_settings, check_setting, cpp_table

ROOT = Path(__file__).resolve().parents[1]


def test_the_cpp_settings_table_is_written_from_the_python_settings():
    """cpp_bindings/core/settings.inc (the C++ PipelineConfig, its validate() and the C ABI's options) is
    the text cpp_table() writes; regenerate with ``python -m unmix.runtime.settings``."""
    assert (ROOT / "cpp_bindings" / "core" / "settings.inc").read_text() == cpp_table()


def test_every_field_is_a_setting_and_round_trips():
    names = [s.name for s in SETTINGS]
    assert names == list(PipelineConfig().to_dict())
    config = PipelineConfig(steps=3, eta=0.5, refine_spectra=True, initial_endmembers="statistics", seed=2**53)
    assert PipelineConfig.from_dict(config.to_dict()) == config
    assert "tile" not in c_abi_settings() and "initial_endmembers" not in c_abi_settings()
    assert set(c_abi_settings()) | {"tile", "initial_endmembers"} == set(names)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_each_setting_refuses_what_its_kind_and_range_refuse(setting):
    bad = {"int": (setting.minimum or 0) - 1, "seed": -1, "float": float("nan"), "bool": 1, "choice": "other"}
    with pytest.raises(UsageError, match=f"^{setting.name} must be"):
        check_setting(setting.name, bad[setting.kind])
    with pytest.raises(UsageError, match=f"^{setting.name} must be"):
        PipelineConfig(**{setting.name: bad[setting.kind]})
    assert check_setting(setting.name, getattr(PipelineConfig(), setting.name)) == getattr(PipelineConfig(), setting.name)
    with pytest.raises(UsageError, match="unknown inference setting 'stepz'"):
        check_setting("stepz", 1)
