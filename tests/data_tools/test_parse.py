"""parse_* helpers: accepted values pass through; rejected ones name the argument.

Matrix: int/bool/float/numpy int x minimum; shapes as int or sequence; dtypes; options
with and without a close match.
"""

from __future__ import annotations

import numpy as np
import pytest

from data_tools._parse import (
    parse_dtype,
    parse_int,
    parse_non_negative_int,
    parse_option,
    parse_positive_int,
    parse_shape,
)


def test_parse_int_accepts_python_and_numpy_integers():
    assert parse_int("n", 3) == 3
    assert parse_int("n", np.int64(-2)) == -2


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_parse_int_rejects_non_integers(value):
    with pytest.raises(TypeError, match=r"Expected n to be an integer\. Got"):
        parse_int("n", value)


def test_parse_positive_and_non_negative_name_the_argument():
    assert parse_non_negative_int("size", 0) == 0
    with pytest.raises(ValueError, match=r"Expected batch_size to be an integer >= 1\. Got 0"):
        parse_positive_int("batch_size", 0)
    with pytest.raises(ValueError, match=r"size to be an integer >= 0\. Got -1"):
        parse_non_negative_int("size", -1)


def test_parse_shape():
    assert parse_shape("shape", 4) == (4,)
    assert parse_shape("shape", [2, np.int32(3)]) == (2, 3)
    with pytest.raises(ValueError, match=r"shape\[1\]"):
        parse_shape("shape", (2, -3))
    with pytest.raises(TypeError, match="Expected shape to be a shape"):
        parse_shape("shape", "23")


def test_parse_dtype():
    assert parse_dtype("dtype", "float32") == np.float32
    with pytest.raises(TypeError, match="Expected dtype to be a numpy dtype"):
        parse_dtype("dtype", object())


def test_parse_option_suggests_a_close_match():
    assert parse_option("file_format", "zarr", {"hdf5", "zarr"}) == "zarr"
    with pytest.raises(ValueError, match="Did you mean 'hdf5'"):
        parse_option("file_format", "hdf", {"hdf5", "zarr", "bcolz"})
    with pytest.raises(ValueError, match=r"one of \['bcolz', 'hdf5'\]\. Got 3 instead\.$"):
        parse_option("file_format", 3, {"hdf5", "bcolz"})
