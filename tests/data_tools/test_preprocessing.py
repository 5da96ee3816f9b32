"""How data_flow calls a preprocessor: keyword dispatch, one place, and PreprocessorChain.

Matrix: preprocessor_keywords for positional, keyword-only, positional-only and ``**kwargs``
signatures and callables without one; call_preprocessor passes exactly the named keywords;
data_flow builds a batch's generator only for a preprocessor that takes ``rng``; a chain
gives each stage only its keywords and the same generator, feeds each stage the previous
outputs as a list, equals the stages composed by hand in data_flow (threads and processes),
pickles, and refuses an empty or non-callable stage list.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from data_flow_support import add_noise, tag_epoch

from data_tools.data_augmentation import SampleAugmentation, parse_augmentation_spec
from data_tools.io import PreprocessorChain, _batch, data_flow
from data_tools.io.preprocessing import (
    PREPROCESSOR_KEYWORDS,
    as_arrays,
    call_preprocessor,
    preprocessor_keywords,
)


def plain(batch):
    return batch


def with_rng(batch, rng):
    return batch


def keyword_only(batch, *, epoch, indices, other=None):
    return batch


def positional_only(batch, rng, /):
    return batch


def anything(batch, **kwargs):
    return batch


@pytest.mark.parametrize(
    ("function", "keywords"),
    [
        (plain, set()),
        (with_rng, {"rng"}),
        (keyword_only, {"epoch", "indices"}),
        (positional_only, set()),
        (anything, PREPROCESSOR_KEYWORDS),
        (np.add, set()),  # no signature: called with the batch alone
    ],
)
def test_preprocessor_keywords(function, keywords):
    assert preprocessor_keywords(function) == keywords


def test_call_preprocessor_passes_exactly_the_named_keywords():
    seen = {}

    def record(batch, **kwargs):
        seen.update(kwargs)
        return batch

    indices = np.arange(3)
    call_preprocessor(record, frozenset({"epoch"}), [], rng=None, epoch=4, indices=indices)
    assert seen == {"epoch": 4}
    rng = np.random.default_rng(0)
    call_preprocessor(record, PREPROCESSOR_KEYWORDS, [], rng=rng, epoch=5, indices=indices)
    assert seen["rng"] is rng
    assert seen["epoch"] == 5
    assert seen["indices"] is indices


def test_data_flow_builds_a_generator_only_for_a_preprocessor_taking_rng(monkeypatch):
    built = []
    original = _batch.batch_rng

    def counted(*args):
        built.append(args)
        return original(*args)

    monkeypatch.setattr(_batch, "batch_rng", counted)
    data = [np.arange(12.0)]
    for function, count in ((plain, 0), (with_rng, 4)):
        built.clear()
        flow = data_flow(data, 3, nb_io_workers=0, preprocessor=function, loop_forever=False)
        assert len(list(flow.flow())) == 4
        assert len(built) == count


def test_a_chain_gives_each_stage_its_keywords_and_the_same_generator():
    calls = []

    def first(batch, rng):
        calls.append(("first", rng))
        return [batch[0] * 2, batch[1]]

    def second(batch, *, indices):
        calls.append(("second", indices))
        assert isinstance(batch, list)
        return batch[0] + indices

    chain = PreprocessorChain((first, second, plain))
    rng, indices = np.random.default_rng(1), np.array([5, 6])
    out = chain([np.ones(2), np.zeros(2)], rng=rng, epoch=0, indices=indices)
    assert calls == [("first", rng), ("second", indices)]
    assert len(out) == 1
    np.testing.assert_array_equal(out[0], [7.0, 8.0])


def run(preprocessor, data, transform=None, **workers):
    flow = data_flow(
        data,
        4,
        sample_random=True,
        seed=3,
        preprocessor=preprocessor,
        loop_forever=False,
        **workers,
    )
    with flow:
        return [transform(info) if transform else info.arrays for info in flow.flow_with_info()]


def test_a_chain_in_data_flow_equals_its_stages_composed_by_hand(rng):
    data = [rng.random((10, 1, 12, 12), dtype=np.float32), np.arange(10)]
    augment = SampleAugmentation(parse_augmentation_spec(rotation_range=30.0), 3)
    chain = PreprocessorChain((augment, add_noise, tag_epoch))

    def by_hand(info):
        batch_rng = np.random.default_rng([3, info.epoch, info.batch_index, 0])
        noisy = add_noise(list(info.arrays), batch_rng)
        return as_arrays(tag_epoch(list(noisy), epoch=info.epoch))

    want = run(augment, data, by_hand, nb_io_workers=0)
    for workers in ({"nb_io_workers": 0}, {"nb_io_workers": 2}, {"nb_proc_workers": 2}):
        got = run(chain, data, **workers)
        assert len(got) == len(want) == 3
        for a, b in zip(got, want, strict=True):
            assert [x.tobytes() for x in a] == [x.tobytes() for x in b]


def test_a_chain_pickles_and_refuses_bad_stages():
    chain = PreprocessorChain((with_rng, keyword_only))
    assert pickle.loads(pickle.dumps(chain)) == chain
    for stages in ((), (plain, 3)):
        with pytest.raises(TypeError, match="stages"):
            PreprocessorChain(stages)


def test_as_arrays_refuses_what_is_not_arrays():
    assert as_arrays([[1, 2]])[0].tolist() == [1, 2]
    with pytest.raises(TypeError, match="Expected preprocessor to return"):
        as_arrays({"a": 1})
