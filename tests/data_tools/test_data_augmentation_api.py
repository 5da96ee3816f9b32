"""The public data_augmentation API: image_random_transform and image_stack_random_transform.

Matrix: the exact signature; identity (all ranges zero) is a bit-identical copy for every
dtype; x/mask alignment after a full random transform; flips happen half the time; the warp
anchors the border and moves interior control points by about warp_sigma, and warp_sigma=0
is a no-op; crop offsets cover every valid position about equally; determinism under int
seeds, Generators and RandomStates; drawn values stay in their ranges and do not depend on
the other options; the stack over channel_axis 0/1/-1/None, with and without y, per-image
and same_transform draws; every bad argument raises naming it.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import scipy.ndimage as ndi

from data_tools.data_augmentation import image_random_transform, image_stack_random_transform
from data_tools.data_augmentation._params import draw, parse_spec

SPEC_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(image_random_transform).parameters.items()
    if name not in ("x", "y", "rng")
}
FULL = {
    "rotation_range": 30.0,
    "width_shift_range": 0.1,
    "height_shift_range": 0.1,
    "shear_range": 10.0,
    "zoom_range": 0.2,
    "horizontal_flip": True,
    "vertical_flip": True,
    "spline_warp": True,
    "warp_sigma": 2.0,
    "warp_grid_size": 4,
}


def smooth_image(rng, shape, sigma=3.0):
    noise = rng.standard_normal(shape)
    sigmas = (0.0,) * (len(shape) - 2) + (sigma, sigma)
    return ndi.gaussian_filter(noise, sigmas).astype(np.float32)


def test_signature_is_the_documented_one():
    parameters = inspect.signature(image_random_transform).parameters
    assert [(name, p.default) for name, p in parameters.items()][1:] == [
        ("y", None),
        ("rotation_range", 0.0),
        ("width_shift_range", 0.0),
        ("height_shift_range", 0.0),
        ("shear_range", 0.0),
        ("zoom_range", 0.0),
        ("intensity_shift_range", 0.0),
        ("fill_mode", "nearest"),
        ("cval_x", 0.0),
        ("cval_y", 0.0),
        ("horizontal_flip", False),
        ("vertical_flip", False),
        ("spline_warp", False),
        ("warp_sigma", 0.1),
        ("warp_grid_size", 3),
        ("crop_size", None),
        ("rng", None),
        ("order_x", 1),
        ("order_y", 0),
    ]
    assert parameters["order_x"].kind is inspect.Parameter.KEYWORD_ONLY
    stack = inspect.signature(image_stack_random_transform).parameters
    assert [(name, p.default) for name, p in stack.items()][1:4] == [
        ("y", None),
        ("channel_axis", 1),
        ("same_transform", False),
    ]


@pytest.mark.parametrize(
    "dtype", [np.bool_, np.uint8, np.int8, np.int16, np.int64, np.float16, np.float32]
)
def test_all_zero_ranges_return_an_exact_copy(rng, dtype):
    x = (rng.standard_normal((3, 7, 5)) * 50).astype(dtype)
    y = (rng.random((2, 7, 5)) * 4).astype(dtype)
    x_out, y_out = image_random_transform(x, y, rng=0, spline_warp=True, warp_sigma=0.0)
    for before, after in ((x, x_out), (y, y_out)):
        assert after.dtype == before.dtype
        assert after.tobytes() == before.tobytes()
        assert not np.shares_memory(after, before)
    assert isinstance(image_random_transform(x), np.ndarray)


def test_mask_stays_aligned_with_the_image(rng):
    x = smooth_image(rng, (1, 96, 96), sigma=5.0)
    y = (x > 0).astype(np.uint8)
    for seed in range(5):
        x_out, y_out = image_random_transform(x, y, rng=seed, fill_mode="reflect", **FULL)
        assert y_out.dtype == np.uint8
        assert set(np.unique(y_out)) <= {0, 1}
        assert np.mean((x_out > 0) == (y_out == 1)) > 0.97


def test_flips_happen_about_half_the_time():
    x = np.arange(12.0).reshape(1, 3, 4)
    outcomes = [
        image_random_transform(x, horizontal_flip=True, vertical_flip=True, rng=seed)
        for seed in range(200)
    ]
    flips = [x, x[:, :, ::-1], x[:, ::-1, :], x[:, ::-1, ::-1]]
    counts = [sum(np.array_equal(o, f) for o in outcomes) for f in flips]
    assert sum(counts) == 200
    assert all(25 < count < 75 for count in counts)


def test_warp_anchors_the_border_and_moves_the_interior_by_warp_sigma():
    ramp = np.broadcast_to(np.arange(41, dtype=np.float64), (41, 41))
    x = np.stack([ramp, ramp.T])  # column index, row index
    moves = []
    for seed in range(100):
        out = image_random_transform(
            x, spline_warp=True, warp_sigma=1.5, warp_grid_size=3, rng=seed
        )
        for channel_in, channel_out in zip(x, out, strict=True):
            for edge in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):
                np.testing.assert_array_equal(channel_out[edge], channel_in[edge])
        moves.append(out[:, 20, 20] - x[:, 20, 20])  # the centre control point
    assert np.std(moves) == pytest.approx(1.5, rel=0.2)


def test_crop_offsets_cover_every_valid_position_about_equally():
    x = np.arange(6 * 5).reshape(1, 6, 5)
    counts = np.zeros((3, 3), int)  # 6 - 4 + 1 rows by 5 - 3 + 1 cols
    for seed in range(900):
        corner = image_random_transform(x, crop_size=(4, 3), rng=seed)[0, 0, 0]
        counts[divmod(int(corner), 5)] += 1
    assert counts.min() > 60
    assert counts.max() < 140


def test_same_seed_same_output_for_every_kind_of_rng(rng):
    x = smooth_image(rng, (2, 32, 32))
    options = {**FULL, "intensity_shift_range": 0.5, "crop_size": (20, 24)}
    first = image_random_transform(x, rng=7, **options)
    np.testing.assert_array_equal(first, image_random_transform(x, rng=7, **options))
    np.testing.assert_array_equal(
        first, image_random_transform(x, rng=np.random.default_rng(7), **options)
    )
    legacy = image_random_transform(x, rng=np.random.RandomState(7), **options)
    np.testing.assert_array_equal(
        legacy, image_random_transform(x, rng=np.random.RandomState(7), **options)
    )
    assert not np.array_equal(first, image_random_transform(x, rng=8, **options))
    shared = np.random.default_rng(7)
    image_random_transform(x, rng=shared, **options)
    assert not np.array_equal(first, image_random_transform(x, rng=shared, **options))


def test_draws_stay_in_their_ranges():
    spec = parse_spec(
        **{
            **SPEC_DEFAULTS,
            **FULL,
            "zoom_range": (0.5, 0.7),
            "intensity_shift_range": 3.0,
            "crop_size": (10, 20),
        }
    )
    for seed in range(200):
        params = draw(np.random.default_rng(seed), spec, 2, (40, 50))
        assert -30 <= params.rotation <= 30
        assert -10 <= params.shear <= 10
        assert abs(params.shift[0]) <= 4
        assert abs(params.shift[1]) <= 5
        assert all(0.5 <= z <= 0.7 for z in params.zoom)
        assert len(params.intensity_shift) == 2
        assert all(abs(s) <= 3 for s in params.intensity_shift)
        assert len(params.warp) == 2 * 2 * 2
        top, left, height, width = params.crop
        assert (height, width) == (10, 20)
        assert 0 <= top <= 30
        assert 0 <= left <= 30


def test_enabling_an_option_does_not_change_the_other_draws():
    def params(**options):
        spec = parse_spec(**{**SPEC_DEFAULTS, **options})
        return draw(np.random.default_rng(3), spec, 3, (32, 32))

    alone = params(rotation_range=20.0)
    together = params(
        rotation_range=20.0,
        zoom_range=0.3,
        horizontal_flip=True,
        intensity_shift_range=1.0,
        spline_warp=True,
        crop_size=(8, 8),
    )
    assert together.rotation == alone.rotation
    with_warp = params(spline_warp=True, warp_sigma=1.0)
    with_more = params(spline_warp=True, warp_sigma=1.0, zoom_range=0.3, shear_range=5.0)
    assert with_more.warp == with_warp.warp


def test_intensity_shift_does_not_change_the_geometry(rng):
    x = smooth_image(rng, (2, 24, 24))
    plain = image_random_transform(x, rng=5, **FULL)
    shifted = image_random_transform(x, rng=5, intensity_shift_range=0.5, **FULL)
    difference = (shifted - plain).reshape(2, -1)
    np.testing.assert_allclose(
        difference, difference[:, :1].repeat(difference.shape[1], 1), atol=1e-5
    )
    assert np.all(np.abs(difference) <= 0.5)


# ---------------------------------------------------------------- stacks


@pytest.mark.parametrize("channel_axis", [0, 1, -1, None])
@pytest.mark.parametrize("with_y", [False, True])
def test_stack_equals_one_call_per_image(rng, channel_axis, with_y):
    base = smooth_image(rng, (4, 3, 20, 22))  # (batch, channel, H, W)
    masks = (base[:, :1] > 0).astype(np.uint8)
    if channel_axis is None:
        x, y, move = base[:, 0], masks[:, 0], lambda a: a[:, None]
    else:
        x = np.moveaxis(base, 1, channel_axis)
        y = np.moveaxis(masks, 1, channel_axis)
        move = lambda a: np.moveaxis(a, channel_axis, 1)
    options = {**FULL, "crop_size": (16, 18)}
    stacked = image_stack_random_transform(
        x, y if with_y else None, channel_axis=channel_axis, rng=np.random.default_rng(9), **options
    )
    x_out, y_out = stacked if with_y else (stacked, None)
    assert x_out.flags.c_contiguous
    single = np.random.default_rng(9)
    for i in range(4):
        expected = image_random_transform(
            move(x)[i], move(y)[i] if with_y else None, rng=single, **options
        )
        expected_x, expected_y = expected if with_y else (expected, None)
        np.testing.assert_array_equal(move(x_out)[i], expected_x)
        if with_y:
            assert y_out.dtype == np.uint8
            np.testing.assert_array_equal(move(y_out)[i], expected_y)


def test_stack_same_transform_applies_one_draw_to_all(rng):
    image = smooth_image(rng, (1, 1, 16, 16))
    x = np.repeat(image, 5, axis=0)
    same = image_stack_random_transform(x, rng=1, same_transform=True, **FULL)
    assert all(np.array_equal(same[0], s) for s in same)
    each = image_stack_random_transform(x, rng=1, **FULL)
    assert not all(np.array_equal(each[0], s) for s in each)


def test_stack_with_extra_batch_axes_and_differing_y_channels(rng):
    x = rng.random((2, 3, 4, 10, 12)).astype(np.float32)  # (batch, batch, channel, H, W)
    y = rng.integers(0, 3, (2, 3, 1, 10, 12)).astype(np.uint8)
    x_out, y_out = image_stack_random_transform(x, y, channel_axis=2, rotation_range=10.0, rng=0)
    assert x_out.shape == x.shape
    assert y_out.shape == y.shape
    assert set(np.unique(y_out)) <= {0, 1, 2}


def test_stack_rejects_unknown_keywords_with_a_suggestion():
    with pytest.raises(TypeError, match="Did you mean 'rotation_range'"):
        image_stack_random_transform(np.zeros((1, 1, 4, 4)), rotaton_range=3)


# ---------------------------------------------------------------- bad arguments

X = np.zeros((1, 8, 8), np.float32)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rotation_range": -1.0}, "rotation_range"),
        ({"width_shift_range": -0.1}, "width_shift_range"),
        ({"height_shift_range": -0.1}, "height_shift_range"),
        ({"shear_range": -5.0}, "shear_range"),
        ({"shear_range": 90.0}, "shear_range"),
        ({"zoom_range": -0.1}, "zoom_range"),
        ({"zoom_range": 1.0}, "zoom_range"),
        ({"zoom_range": (0.0, 1.0)}, "zoom_range"),
        ({"zoom_range": (1.2, 1.1)}, "zoom_range"),
        ({"zoom_range": (0.5, 1.0, 2.0)}, "zoom_range"),
        ({"intensity_shift_range": -1.0}, "intensity_shift_range"),
        ({"intensity_shift_range": float("nan")}, "intensity_shift_range"),
        ({"fill_mode": "reflekt"}, "fill_mode"),
        ({"warp_sigma": -0.1}, "warp_sigma"),
        ({"warp_grid_size": 2}, "warp_grid_size"),
        ({"crop_size": (9, 4)}, "crop_size"),
        ({"crop_size": (4, 0)}, "crop_size"),
        ({"crop_size": (4,)}, "crop_size"),
        ({"order_x": 2}, "order_x"),
        ({"order_y": 5}, "order_y"),
        ({"rng": -1}, "rng"),
        ({"x": np.zeros((8, 8))}, "x"),
        ({"x": np.zeros((1, 1, 8, 8))}, "x"),
        ({"x": np.zeros((1, 0, 8))}, "x"),
        ({"y": np.zeros((8, 8))}, "y"),
        ({"y": np.zeros((1, 8, 7))}, "y"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    arguments = {"x": X, **kwargs}
    with pytest.raises(ValueError, match=name):
        image_random_transform(**arguments)


def test_unknown_fill_mode_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'reflect'"):
        image_random_transform(X, fill_mode="reflekt")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"horizontal_flip": 1}, "horizontal_flip"),
        ({"spline_warp": "yes"}, "spline_warp"),
        ({"rotation_range": "10"}, "rotation_range"),
        ({"cval_x": None}, "cval_x"),
        ({"warp_grid_size": 3.0}, "warp_grid_size"),
        ({"rng": "seed"}, "rng"),
        ({"x": np.zeros((1, 4, 4), complex)}, "x"),
    ],
)
def test_bad_types_raise_type_error_naming_them(kwargs, name):
    arguments = {"x": X, **kwargs}
    with pytest.raises(TypeError, match=name):
        image_random_transform(**arguments)


@pytest.mark.parametrize(
    ("x", "kwargs", "name"),
    [
        (np.zeros((2, 1, 8, 8)), {"channel_axis": 4}, "channel_axis"),
        (np.zeros((2, 1, 8, 8)), {"channel_axis": -5}, "channel_axis"),
        (np.zeros((8, 8)), {}, "x"),
        (np.zeros((2, 1, 8, 8)), {"y": np.zeros((3, 1, 8, 8))}, "y"),
        (np.zeros((2, 1, 8, 8)), {"y": np.zeros((2, 8, 8))}, "y"),
        (np.zeros((2, 1, 8, 8)), {"crop_size": (9, 9)}, "crop_size"),
        (np.zeros((0, 1, 8, 8)), {"crop_size": (9, 9)}, "crop_size"),
    ],
)
def test_stack_bad_arguments_raise_value_error_naming_them(x, kwargs, name):
    with pytest.raises(ValueError, match=name):
        image_stack_random_transform(x, **kwargs)
