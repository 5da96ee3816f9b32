"""AugmentationSpec: parsed once, draw(rng, shape) then apply(params, x, y).

Matrix: every bad option raises from parse_augmentation_spec exactly what
image_random_transform raises (type and message), a crop too large for the image at draw,
unknown keywords (rng included) with a suggestion, the stack's unknown-keyword message as
before; the defaults are image_random_transform's; draw is a pure function of the rng state
and consumes the rng exactly as image_random_transform; apply equals image_random_transform
bit for bit (option sets x dtypes, with and without y, 2 seeds) and writes into ``out``
(contiguous, strided, working-dtype and cast dtypes), returning ``out``'s arrays.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from data_tools.data_augmentation import (
    AugmentationSpec,
    image_random_transform,
    image_stack_random_transform,
    parse_augmentation_spec,
)
from data_tools.data_augmentation._params import draw, parse_spec

X = np.zeros((1, 8, 8), np.float32)
SIGNATURE = inspect.signature(image_random_transform).parameters
OPTION_NAMES = [name for name in SIGNATURE if name not in ("x", "y")]

BAD_OPTIONS = [
    {"rotation_range": -1.0},
    {"width_shift_range": -0.1},
    {"height_shift_range": float("inf")},
    {"shear_range": -5.0},
    {"shear_range": 90.0},
    {"zoom_range": -0.1},
    {"zoom_range": 1.0},
    {"zoom_range": (0.0, 1.0)},
    {"zoom_range": (1.2, 1.1)},
    {"zoom_range": (0.5, 1.0, 2.0)},
    {"zoom_range": ("a", 1.0)},
    {"intensity_shift_range": float("nan")},
    {"fill_mode": "reflekt"},
    {"fill_mode": 3},
    {"cval_x": None},
    {"cval_y": "0"},
    {"horizontal_flip": 1},
    {"vertical_flip": None},
    {"spline_warp": "yes"},
    {"warp_sigma": -0.1},
    {"warp_grid_size": 2},
    {"warp_grid_size": 3.0},
    {"crop_size": (4, 0)},
    {"crop_size": (4,)},
    {"crop_size": "44"},
    {"crop_size": (4.0, 4)},
    {"order_x": 2},
    {"order_y": 5},
    {"order_y": True},
    {"rotation_range": -1.0, "order_x": 2},  # the first bad option in signature order wins
]

OPTION_SETS = [
    {},
    {"rotation_range": 30.0, "zoom_range": 0.2, "horizontal_flip": True},
    {
        "rotation_range": 20.0,
        "width_shift_range": 0.1,
        "height_shift_range": 0.2,
        "shear_range": 10.0,
        "zoom_range": (0.8, 1.3),
        "intensity_shift_range": 5.0,
        "fill_mode": "constant",
        "cval_x": 3.0,
        "cval_y": 1.0,
        "vertical_flip": True,
        "crop_size": (9, 7),
        "order_x": 3,
    },
    {"spline_warp": True, "warp_sigma": 1.5, "warp_grid_size": 5, "fill_mode": "mirror"},
    {"horizontal_flip": True, "vertical_flip": True, "crop_size": (5, 6)},  # flip-only path
]
DTYPES = [np.float32, np.uint8, np.int32, np.bool_, np.float16]


def raised(function, *args, **kwargs):
    with pytest.raises((TypeError, ValueError)) as info:
        function(*args, **kwargs)
    return type(info.value), str(info.value)


@pytest.mark.parametrize("options", BAD_OPTIONS, ids=repr)
def test_a_bad_option_raises_what_image_random_transform_raises(options):
    expected = raised(image_random_transform, X, **options)
    assert raised(parse_augmentation_spec, **options) == expected
    assert next(iter(options)) in expected[1]


def test_a_crop_larger_than_the_image_raises_at_draw_as_image_random_transform():
    expected = raised(image_random_transform, X, crop_size=(9, 4), rng=0)
    spec = parse_augmentation_spec(crop_size=(9, 4))
    assert raised(spec.draw, np.random.default_rng(0), X.shape) == expected
    assert "crop_size" in expected[1]


def test_unknown_keywords_get_a_suggestion_and_rng_is_not_an_option():
    kind, message = raised(parse_augmentation_spec, rotaton_range=3)
    assert kind is TypeError
    assert message.endswith("Got 'rotaton_range' instead. Did you mean 'rotation_range'?")
    kind, message = raised(parse_augmentation_spec, rng=0)
    assert kind is TypeError
    assert "'rng'" in message
    assert "'order_x'" in message


def test_the_stack_reports_unknown_keywords_as_before():
    names = sorted(OPTION_NAMES)
    message = (
        f"Expected keyword argument to be one of {names}. Got 'rotaton_range' instead. "
        "Did you mean 'rotation_range'?"
    )
    x = np.zeros((1, 1, 4, 4))
    assert raised(image_stack_random_transform, x, rotaton_range=3) == (TypeError, message)


def test_defaults_are_image_random_transforms():
    defaults = {name: SIGNATURE[name].default for name in OPTION_NAMES if name != "rng"}
    assert parse_augmentation_spec() == parse_spec(**defaults)
    spec = parse_augmentation_spec(zoom_range=0.25, crop_size=[3, 4])
    assert isinstance(spec, AugmentationSpec)
    assert spec.zoom_range == (0.75, 1.25)
    assert spec.crop_size == (3, 4)


def test_draw_is_a_pure_function_of_the_rng_state_and_consumes_it_as_the_reference():
    options = OPTION_SETS[2] | {"spline_warp": True, "warp_grid_size": 4}
    spec = parse_augmentation_spec(**options)
    shape = (3, 20, 30)
    first = spec.draw(np.random.default_rng(5), shape)
    assert first == spec.draw(np.random.default_rng(5), shape)
    assert first == draw(np.random.default_rng(5), spec, 3, (20, 30))
    assert first != spec.draw(np.random.default_rng(6), shape)
    assert len(first.intensity_shift) == 3
    drawn, reference = np.random.default_rng(9), np.random.default_rng(9)
    spec.draw(drawn, shape)
    image_random_transform(np.zeros(shape, np.float32), rng=reference, **options)
    assert drawn.random() == reference.random()


def spec_and_images(rng, options, dtype):
    """The spec of ``options``, a (2, 12, 10) x of ``dtype`` and a (1, 12, 10) uint8 y."""
    values = rng.standard_normal((2, 12, 10)) * 40
    x = (values > 0) if dtype is np.bool_ else values.astype(dtype)
    y = (rng.random((1, 12, 10)) * 3).astype(np.uint8)
    return parse_augmentation_spec(**options), x, y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTION_SETS, ids=range(len(OPTION_SETS)))
def test_apply_equals_image_random_transform(rng, options, dtype):
    spec, x, y = spec_and_images(rng, options, dtype)
    for seed in (0, 1):
        params = spec.draw(np.random.default_rng(seed), x.shape)
        x_out, y_out = spec.apply(params, x, y)
        want_x, want_y = image_random_transform(x, y, rng=np.random.default_rng(seed), **options)
        assert (x_out.dtype, x_out.shape) == (want_x.dtype, want_x.shape)
        assert x_out.tobytes() == want_x.tobytes()
        assert y_out.tobytes() == want_y.tobytes()
        alone, none = spec.apply(params, x)
        assert none is None
        assert alone.tobytes() == want_x.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTION_SETS, ids=range(len(OPTION_SETS)))
def test_apply_writes_into_out(rng, options, dtype):
    spec, x, y = spec_and_images(rng, options, dtype)
    params = spec.draw(np.random.default_rng(3), x.shape)
    want_x, want_y = spec.apply(params, x, y)
    window = spec.output_shape((12, 10))
    # Contiguous destinations, and strided ones (every other column of a wider array).
    x_dst = np.full((2, *window), 7, dtype=x.dtype)
    y_dst = np.full((1, *window), 7, dtype=np.uint8)
    wide = np.full((2, window[0], 2 * window[1]), 7, dtype=x.dtype)
    for x_target, y_target in ((x_dst, y_dst), (wide[:, :, ::2], None)):
        x_out, y_out = spec.apply(
            params, x, None if y_target is None else y, out=(x_target, y_target)
        )
        assert x_out is x_target
        assert x_target.tobytes() == want_x.tobytes()
        if y_target is not None:
            assert y_out is y_target
            assert y_target.tobytes() == want_y.tobytes()
    assert np.all(wide[:, :, 1::2] == np.array(7).astype(x.dtype))  # nothing written between
