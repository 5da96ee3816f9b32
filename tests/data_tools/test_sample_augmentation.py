"""SampleAugmentation: the per-sample map, as a data_flow preprocessor and on its own.

Matrix: a batch equals image_random_transform of each sample with
``default_rng([seed, epoch, index])`` (x with y, x alone, (C, H, W) and (H, W) samples, a
crop, x and y at other positions, pass-through arrays untouched); ``out`` arrays are written
in place and returned (x, y and the pass-through arrays), wrong ``out`` lengths, shapes and
dtypes are refused naming them; output_shapes; no option is parsed again per sample (parse
helpers counted) and the spec given is the one used; in data_flow: the same samples for any
batch size, worker threads or processes; bad positions, seeds, batches and indices raise
naming them.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from data_tools.data_augmentation import (
    SampleAugmentation,
    _params,
    image_random_transform,
    parse_augmentation_spec,
)
from data_tools.io import data_flow

OPTIONS = {
    "rotation_range": 25.0,
    "zoom_range": 0.2,
    "horizontal_flip": True,
    "intensity_shift_range": 0.3,
    "crop_size": (10, 9),
}
SPEC = parse_augmentation_spec(**OPTIONS)


def reference(batch, seed, epoch, indices, x_position=0, y_position=None, options=OPTIONS):
    """What the node did before the map: image_random_transform per sample, then np.stack."""
    out = list(batch)
    xs, ys = [], []
    for row, index in enumerate(indices):
        rng = np.random.default_rng([seed, epoch, int(index)])
        x = batch[x_position][row]
        flat = x.ndim == 2
        x_in = x[np.newaxis] if flat else x
        if y_position is None:
            x_out = image_random_transform(x_in, rng=rng, **options)
        else:
            y_in = batch[y_position][row][np.newaxis] if flat else batch[y_position][row]
            x_out, y_out = image_random_transform(x_in, y_in, rng=rng, **options)
            ys.append(y_out[0] if flat else y_out)
        xs.append(x_out[0] if flat else x_out)
    out[x_position] = np.stack(xs)
    if y_position is not None:
        out[y_position] = np.stack(ys)
    return out


def make_batch(rng, n=5, shape=(2, 14, 12)):
    image = rng.random((n, *shape), dtype=np.float32)
    mask = (image[:, :1] > 0.5).astype(np.uint8) if len(shape) == 3 else (image > 0.5) * 3
    return [image, mask.astype(np.uint8), np.arange(n, dtype=np.float64) / 7]


def assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("shape", [(2, 14, 12), (14, 12)], ids=["channels", "2d"])
@pytest.mark.parametrize("with_y", [True, False])
def test_a_batch_equals_image_random_transform_per_sample(rng, shape, with_y):
    batch = make_batch(rng, shape=shape)
    indices = np.array([31, 4, 17, 0, 9])
    augment = SampleAugmentation(SPEC, seed=3, y_position=1 if with_y else None)
    want = reference(batch, 3, 2, indices, y_position=1 if with_y else None)
    got = augment(batch, epoch=2, indices=indices)
    assert_same(got, want)
    assert got[2] is batch[2]  # passed through as it is
    if not with_y:
        assert got[1] is batch[1]
    assert got[0].shape[-2:] == (10, 9)


def test_x_and_y_at_other_positions(rng):
    image, mask, weights = make_batch(rng)
    batch = [weights, mask, image]
    augment = SampleAugmentation(SPEC, seed=8, x_position=2, y_position=1)
    indices = np.arange(5) + 100
    got = augment(batch, epoch=0, indices=indices)
    assert_same(got, reference(batch, 8, 0, indices, x_position=2, y_position=1))


def test_each_sample_depends_only_on_seed_epoch_and_index(rng):
    batch = make_batch(rng)
    augment = SampleAugmentation(SPEC, seed=1, y_position=1)
    whole = augment(batch, epoch=4, indices=np.arange(5))
    part = augment([a[2:4] for a in batch], epoch=4, indices=np.arange(2, 4))
    assert_same([a[2:4] for a in whole], part)
    other_epoch = augment(batch, epoch=5, indices=np.arange(5))
    assert not np.array_equal(whole[0], other_epoch[0])


def test_out_arrays_are_written_in_place_and_returned(rng):
    batch = make_batch(rng)
    augment = SampleAugmentation(SPEC, seed=2, y_position=1)
    indices = np.arange(5)
    want = augment(batch, epoch=1, indices=indices)
    shapes = augment.output_shapes([a.shape for a in batch])
    assert shapes == [(5, 2, 10, 9), (5, 1, 10, 9), (5,)]
    out = [np.full(shape, 9, dtype=a.dtype) for shape, a in zip(shapes, batch, strict=True)]
    got = augment(batch, epoch=1, indices=indices, out=out)
    assert all(g is o for g, o in zip(got, out, strict=True))
    assert_same(out, want)  # the pass-through array is copied into its out array too


def test_2d_samples_are_written_into_out(rng):
    batch = make_batch(rng, shape=(14, 12))
    augment = SampleAugmentation(SPEC, seed=2, y_position=1)
    shapes = augment.output_shapes([a.shape for a in batch])
    assert shapes[:2] == [(5, 10, 9), (5, 10, 9)]
    out = [np.empty(shape, dtype=a.dtype) for shape, a in zip(shapes, batch, strict=True)]
    augment(batch, epoch=0, indices=np.arange(5), out=out)
    assert_same(out, reference(batch, 2, 0, np.arange(5), y_position=1))


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (lambda out: out[:2], "out to hold one array per array"),
        (lambda out: [out[0][:, :, :5], *out[1:]], r"out\[0\] of shape"),
        (lambda out: [out[0], out[1].astype(np.int16), out[2]], r"out\[1\] of shape .* dtype"),
        (lambda out: [*out[:2], np.empty(4)], r"out\[2\] of shape \(5,\)"),
    ],
)
def test_wrong_out_arrays_are_refused(rng, change, name):
    batch = make_batch(rng)
    augment = SampleAugmentation(SPEC, seed=2, y_position=1)
    out = [
        np.empty(s, a.dtype)
        for s, a in zip(augment.output_shapes([a.shape for a in batch]), batch, strict=True)
    ]
    with pytest.raises(ValueError, match=name):
        augment(batch, epoch=0, indices=np.arange(5), out=change(out))


def test_no_option_is_parsed_again_per_sample(rng, monkeypatch):
    calls = []
    for name in ("_parse_range", "_parse_order", "_parse_zoom_range", "_parse_crop_size"):
        original = getattr(_params, name)

        def counted(*args, _original=original, **kwargs):
            calls.append(args)
            return _original(*args, **kwargs)

        monkeypatch.setattr(_params, name, counted)
    augment = SampleAugmentation(SPEC, seed=2, y_position=1)
    restored = pickle.loads(pickle.dumps(augment))  # as a worker process receives it
    for epoch in range(3):
        restored(make_batch(rng), epoch=epoch, indices=np.arange(5))
    assert calls == []
    assert augment.spec is SPEC
    parse_augmentation_spec(**OPTIONS)  # the counters do count a parse
    assert calls


def flow_samples(batch_size, preprocessor, data, **workers):
    """{global index: (image bytes, mask bytes)} of one shuffled epoch of data_flow."""
    flow = data_flow(
        data,
        batch_size,
        sample_random=True,
        seed=21,
        preprocessor=preprocessor,
        loop_forever=False,
        **workers,
    )
    samples = {}
    with flow:
        for info in flow.flow_with_info():
            for row, index in enumerate(info.indices):
                samples[int(index)] = (info.arrays[0][row].tobytes(), info.arrays[1][row].tobytes())
    return samples


def test_as_a_data_flow_preprocessor_any_batch_size_or_workers_give_the_same_samples(rng):
    data = make_batch(rng, n=23)
    augment = SampleAugmentation(SPEC, seed=21, y_position=1)
    first = flow_samples(4, augment, data, nb_io_workers=0)
    assert sorted(first) == list(range(23))
    assert first == flow_samples(7, augment, data, nb_io_workers=3)
    assert first == flow_samples(5, augment, data, nb_proc_workers=2)
    want = reference(data, 21, 0, np.arange(23), y_position=1)
    for index, (image, mask) in first.items():
        assert image == want[0][index].tobytes()
        assert mask == want[1][index].tobytes()


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": 0, "x_position": -1}, ValueError, "x_position"),
        ({"seed": 0, "y_position": 0}, ValueError, "y_position"),
        ({"seed": 0, "y_position": True}, TypeError, "y_position"),
    ],
)
def test_bad_arguments_are_refused(arguments, error, match):
    with pytest.raises(error, match=match):
        SampleAugmentation(SPEC, **arguments)


@pytest.mark.parametrize(
    ("batch", "indices", "error", "match"),
    [
        ([np.zeros((2, 14))], np.arange(2), ValueError, r"batch\[0\] to be a batch of images"),
        ([np.zeros((2, 1, 0, 14))], np.arange(2), ValueError, r"batch\[0\]"),
        ([np.zeros((2, 14, 12), complex)], np.arange(2), TypeError, r"batch\[0\]"),
        ([np.zeros((2, 14, 12))], np.arange(3), ValueError, "indices"),
        ([np.zeros((2, 8, 8))], np.arange(2), ValueError, "crop_size"),
        ([np.zeros((2, 14, 12)), np.zeros((2, 14, 11))], np.arange(2), ValueError, r"batch\[1\]"),
        ([np.zeros((2, 14, 12)), np.zeros((3, 14, 12))], np.arange(2), ValueError, r"batch\[1\]"),
        ([np.zeros((2, 14, 12))], np.arange(2), ValueError, "more than 1 arrays"),
    ],
)
def test_bad_batches_are_refused_naming_the_array(batch, indices, error, match):
    y_position = 1 if len(batch) == 2 or match == "more than 1 arrays" else None
    augment = SampleAugmentation(SPEC, seed=0, y_position=y_position)
    with pytest.raises(error, match=match):
        augment(batch, epoch=0, indices=indices)
