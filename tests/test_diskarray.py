"""DiskArray: windows read and written through a raw file equal the same operations on numpy."""
from __future__ import annotations

import numpy as np
import pytest

from unmix.errors import UsageError
from unmix.io.diskarray import DiskArray


@pytest.mark.parametrize("shape", [(7, 5), (9, 6, 3)])
def test_windows_match_numpy(tmp_path, shape):
    rng = np.random.default_rng(0)
    reference = np.zeros(shape, dtype=np.float32)
    array = DiskArray(tmp_path / "a.f32", shape)
    assert array.shape == shape and array.ndim == len(shape) and len(array) == shape[0]
    assert (tmp_path / "a.f32").stat().st_size == reference.nbytes
    np.testing.assert_array_equal(np.asarray(array), reference)          # a new file reads as zeros
    writes = [(slice(0, 3),), (slice(2, 6), slice(1, 4)), (slice(5, None), slice(None)), (slice(1, 2), slice(4, 5))]
    for key in writes:
        values = rng.random(reference[key].shape).astype(np.float32)
        reference[key] = values
        array[key] = values
    array[slice(3, 4)] = 7.0                                             # broadcast
    reference[3:4] = 7.0
    reads = [(slice(None),), (slice(1, 5), slice(2, 5)), (slice(None, None, 2), slice(None, None, 3)),
             (slice(6, 2, -1),), (slice(4, 4),), (slice(0, 7), slice(3, 3))]
    for key in reads:
        np.testing.assert_array_equal(array[key], reference[key])
        assert array[key].shape == reference[key].shape
    block = array[1:3]
    block[0] = -1.0                                                      # reads are writable copies
    np.testing.assert_array_equal(array[1:3], reference[1:3])
    np.testing.assert_array_equal(np.asarray(array, dtype=np.float64), reference.astype(np.float64))
    array.close()
    array.close()


def test_refusals(tmp_path):
    with pytest.raises(UsageError, match="positive sizes"):
        DiskArray(tmp_path / "b.f32", (4,))
    array = DiskArray(tmp_path / "c.f32", (4, 4))
    with pytest.raises(UsageError, match="contiguous"):
        array[::2] = 1.0
    with pytest.raises(UsageError, match="slices"):
        array[0]
    with pytest.raises(UsageError, match="slices"):
        array[..., 0]
    with pytest.raises(ValueError):
        array[0:2] = np.ones((3, 4))
