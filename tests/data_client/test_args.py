"""The client's argument checks behave as the library's (the client cannot import it)."""

from __future__ import annotations

import pytest

from data_client import _args
from data_tools import parsing

CHOICES = ["nearest", "constant", "reflect", "wrap"]


@pytest.mark.parametrize(
    "value", ["neerest", "constnt", "x", "", "nearest" * 9, "n" * 64, "nearestt" + "e" * 57]
)
def test_did_you_mean_is_the_librarys(value):
    assert _args.did_you_mean(value, CHOICES) == parsing.did_you_mean(value, CHOICES)


def test_a_value_longer_than_the_cap_gets_no_suggestion():
    assert _args.MAX_SUGGESTED_CHARS == parsing.MAX_SUGGESTED_CHARS
    close = "nearest" + "t" * (_args.MAX_SUGGESTED_CHARS - 7)
    assert _args.did_you_mean(close, ["nearest" + "t" * 60]) != ""
    assert _args.did_you_mean(close + "t", ["nearest" + "t" * 60]) == ""
