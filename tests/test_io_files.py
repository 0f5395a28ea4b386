"""Files replaced whole or not at all, and the strict-JSON conversion every JSON document goes through."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from unmix.errors import UsageError, require_int
from unmix.io.files import replacing, write_atomic
from unmix.io.strict_json import dumps, to_plain


def test_write_atomic_replaces_the_file_with_the_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "doc.json"
    assert write_atomic(target, "old") == target
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert sorted(p.name for p in target.parent.iterdir()) == ["doc.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "doc.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with replacing(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


def test_strict_json_writes_non_finite_numbers_as_null():
    document = {"nan": float("nan"), "inf": [np.float32(np.inf), -np.inf], "array": np.arange(3, dtype=np.int64),
                "scalar": np.float32(0.5), "flag": np.bool_(True), "path": Path("a/b"), "tuple": (1, 2), 3: "key"}
    plain = to_plain(document)
    assert plain == {"nan": None, "inf": [None, None], "array": [0, 1, 2], "scalar": 0.5, "flag": True,
                     "path": "a/b", "tuple": [1, 2], "3": "key"}
    assert json.loads(dumps(document)) == plain
    with pytest.raises(TypeError):
        dumps({"object": object()})


@pytest.mark.parametrize("value, message", [(0, "tile must be an integer >= 1, got 0"),
                                            (True, "tile must be an integer >= 1, got True"),
                                            (2.0, "tile must be an integer >= 1, got 2.0")])
def test_require_int_names_the_range(value, message):
    with pytest.raises(UsageError, match=message):
        require_int(value, "tile", 1)
    assert require_int(np.int64(7), "tile", 1) == 7 and type(require_int(np.int64(7), "tile", 1)) is int
