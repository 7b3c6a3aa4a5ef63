"""rtlab._util.is_int: the integer test behind every count/index argument check."""

import numpy as np
import pytest

from rtlab._util import is_int


@pytest.mark.parametrize("v", [0, 3, -2, np.int32(4), np.int64(-1), np.uint8(7)])
def test_is_int_accepts_python_and_numpy_integers(v):
    assert is_int(v)


@pytest.mark.parametrize("v", [True, False, np.bool_(True), 2.0, np.float32(1), "3", None, [1], np.array(1)])
def test_is_int_rejects_bools_floats_and_other_types(v):
    assert not is_int(v)
