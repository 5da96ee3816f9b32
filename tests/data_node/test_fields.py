"""data_node.fields: the request-field checks every request parser shares.

Matrix: bounded (inside, at each end, outside, no upper end); choice (a choice, a near
miss with its hint, a value close to nothing, a huge value shown cut short and without a
hint); not_one_of as DatasetRegistry.get and the job and augmentation parsers word it.
"""

from __future__ import annotations

import pytest

from data_node.errors import RequestError
from data_node.fields import bounded, choice, not_one_of, shown


@pytest.mark.parametrize(("value", "high"), [(1, 4), (4, 4), (2, None), (10**9, None)])
def test_bounded_returns_a_value_inside(value, high):
    assert bounded("batch_size", value, 1, high) == value


@pytest.mark.parametrize(
    ("value", "high", "message"),
    [
        (0, 4, r"^batch_size: Expected an integer in \[1, 4\]\. Got 0 instead\.$"),
        (5, 4, r"^batch_size: Expected an integer in \[1, 4\]\. Got 5 instead\.$"),
        (0, None, r"^batch_size: Expected an integer >= 1\. Got 0 instead\.$"),
    ],
)
def test_bounded_names_the_field_and_the_range(value, high, message):
    with pytest.raises(RequestError, match=message):
        bounded("batch_size", value, 1, high)


def test_choice_returns_a_choice():
    assert choice("file_format", "zarr", ("hdf5", "zarr")) == "zarr"


def test_choice_suggests_the_closest_choice():
    with pytest.raises(RequestError) as caught:
        choice("augmentation.fill_mode", "neerest", ("constant", "nearest", "reflect", "wrap"))
    assert str(caught.value) == (
        "augmentation.fill_mode: Expected one of ['constant', 'nearest', 'reflect', 'wrap']. "
        "Got 'neerest' instead. Did you mean 'nearest'?"
    )


def test_choice_without_a_close_choice_gives_no_hint():
    with pytest.raises(RequestError) as caught:
        choice("executor", "qqqq", ("dask", "local"))
    assert str(caught.value) == "executor: Expected one of ['dask', 'local']. Got 'qqqq' instead."


def test_a_huge_value_is_shown_cut_short_and_gets_no_hint():
    huge = "nearest" * 10_000
    with pytest.raises(RequestError) as caught:
        choice("augmentation.fill_mode", huge, ("nearest",))
    message = str(caught.value)
    assert len(message) < 300
    assert f"({len(huge)} characters)" in message
    assert "Did you mean" not in message
    assert shown(huge) in message


def test_not_one_of_is_the_message_choice_raises():
    assert not_one_of("dataset", "brain", ["brains", "toy"]) == (
        "dataset: Expected one of ['brains', 'toy']. Got 'brain' instead. Did you mean 'brains'?"
    )
