"""The pure apply step of data_augmentation, with hand-made parameters.

Matrix: known geometry (rotation == np.rot90 and a known pixel, flips == np.flip, integer
shift == roll with fill for every fill mode == scipy's named mode, zoom of a centred disk,
shear of a known pixel, composed affine == scipy.ndimage.affine_transform), crop window ==
crop of the full output (affine and warp paths), dtype round trips, intensity shift clipping,
and the spline warp (field == SimpleITK BSplineTransform, interpolation through the jitter,
anchored border, warp + affine == scipy map_coordinates of the composed map).
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import numpy as np
import pytest
import scipy.ndimage as ndi
import SimpleITK as sitk  # noqa: N813

from data_tools.data_augmentation import _bspline, _functional, image_random_transform
from data_tools.data_augmentation._bspline import coefficient_matrix, displacement_basis
from data_tools.data_augmentation._functional import apply, coordinate_maps, inverse_affine
from data_tools.data_augmentation._params import FILL_MODES, ORDERS, TransformParams, parse_spec

SPEC_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(image_random_transform).parameters.items()
    if name not in ("x", "y", "rng")
}
SCIPY_MODES = {
    "constant": "grid-constant",
    "mirror": "mirror",
    "nearest": "nearest",
    "reflect": "reflect",
    "wrap": "grid-wrap",
}


def make_spec(**changes):
    return parse_spec(**{**SPEC_DEFAULTS, **changes})


def make_params(shape, **changes):
    rows, cols = shape
    identity = TransformParams(
        rotation=0.0,
        shift=(0.0, 0.0),
        shear=0.0,
        zoom=(1.0, 1.0),
        flip=(False, False),
        intensity_shift=(),
        warp=(),
        warp_grid_size=3,
        crop=(0, 0, rows, cols),
    )
    return dataclasses.replace(identity, **changes)


def transform(x, y=None, spec_changes=None, **changes):
    return apply(x, y, make_spec(**(spec_changes or {})), make_params(x.shape[-2:], **changes))


def smooth_image(rng, shape, sigma=3.0):
    noise = rng.standard_normal(shape)
    return ndi.gaussian_filter(noise, (0, sigma, sigma)).astype(np.float32)


def disk(shape, radius):
    rows, cols = np.indices(shape)
    centre_r, centre_c = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    return ((rows - centre_r) ** 2 + (cols - centre_c) ** 2 <= radius**2).astype(np.uint8)


def test_every_accepted_option_has_an_opencv_counterpart():
    assert set(_functional._BORDERS) == set(FILL_MODES) == set(SCIPY_MODES)
    assert set(_functional._INTERPOLATIONS) == set(ORDERS)


# ---------------------------------------------------------------- known geometry


@pytest.mark.parametrize("angle", [90.0, -90.0, 180.0, 270.0])
def test_right_angle_rotation_equals_rot90(rng, angle):
    x = rng.random((2, 9, 9)).astype(np.float32)
    y = rng.integers(0, 5, (1, 9, 9)).astype(np.uint8)
    x_out, y_out = transform(x, y, {"order_x": 0}, rotation=angle)
    k = round(angle / 90)
    np.testing.assert_array_equal(x_out, np.rot90(x, k, axes=(1, 2)))
    np.testing.assert_array_equal(y_out, np.rot90(y, k, axes=(1, 2)))
    x_linear, _ = transform(x, None, rotation=angle)
    np.testing.assert_allclose(x_linear, np.rot90(x, k, axes=(1, 2)), atol=1e-6)


def test_rotation_is_counterclockwise_about_the_centre():
    x = np.zeros((1, 33, 33), np.float32)
    x[0, 16, 26] = 1  # 10 pixels right of the centre (16, 16)
    out, _ = transform(x, None, {"order_x": 0, "fill_mode": "constant"}, rotation=30.0)
    (row,), (col,) = np.nonzero(out[0])
    assert (row, col) == (16 - 5, 16 + round(10 * math.cos(math.radians(30))))


@pytest.mark.parametrize("flip", [(False, True), (True, False), (True, True)])
def test_flips_equal_np_flip_for_any_dtype(rng, flip):
    x = rng.integers(-(2**62), 2**62, (2, 6, 7))
    y = rng.random((1, 6, 7)) > 0.5
    x_out, y_out = transform(x, y, flip=flip)
    axes = tuple(axis for axis, f in zip((1, 2), flip, strict=True) if f)
    np.testing.assert_array_equal(x_out, np.flip(x, axes))
    np.testing.assert_array_equal(y_out, np.flip(y, axes))
    assert x_out.dtype == x.dtype
    assert y_out.dtype == y.dtype


@pytest.mark.parametrize("fill_mode", sorted(SCIPY_MODES))
@pytest.mark.parametrize("order", [0, 1])
def test_integer_shift_matches_scipy_mode(rng, fill_mode, order):
    x = rng.random((2, 10, 12)).astype(np.float32)
    spec = {"fill_mode": fill_mode, "cval_x": -7.0, "order_x": order}
    out, _ = transform(x, None, spec, shift=(3.0, -4.0))
    expected = [
        ndi.shift(c, (3, -4), order=order, mode=SCIPY_MODES[fill_mode], cval=-7.0) for c in x
    ]
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_integer_shift_equals_roll_with_fill(rng):
    x = rng.integers(0, 200, (1, 8, 9)).astype(np.uint8)
    out, _ = transform(x, None, {"fill_mode": "constant", "cval_x": 255}, shift=(2.0, -3.0))
    expected = np.roll(x, (2, -3), axis=(1, 2))
    expected[:, :2, :] = 255
    expected[:, :, -3:] = 255
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("zoom", [(1.5, 1.5), (0.6, 0.6), (1.25, 0.8), (0.9, 1.3)])
def test_zoom_scales_a_centred_disk_area_by_the_product_of_factors(zoom):
    x = disk((129, 129), 24)[None]
    out, _ = transform(x, None, {"order_x": 0, "fill_mode": "constant"}, zoom=zoom)
    ratio = out.sum() / x.sum()
    assert ratio == pytest.approx(zoom[0] * zoom[1], rel=0.03)
    rows = np.nonzero(out[0].any(axis=1))[0]
    cols = np.nonzero(out[0].any(axis=0))[0]
    assert np.ptp(rows) + 1 == pytest.approx(49 * zoom[0], abs=2)
    assert np.ptp(cols) + 1 == pytest.approx(49 * zoom[1], abs=2)


@pytest.mark.parametrize(("angle", "step"), [(45.0, 1), (-45.0, -1)])
def test_shear_moves_a_known_pixel_where_the_matrix_says(angle, step):
    x = np.zeros((1, 33, 33), np.float32)
    x[0, 16 + 5, 16 + 2] = 1  # (5, 2) from the centre
    out, _ = transform(x, None, {"order_x": 0, "fill_mode": "constant"}, shear=angle)
    (row,), (col,) = np.nonzero(out[0])
    assert (row, col) == (16 + 5, 16 + 2 + step * 5)  # col += tan(angle) * row


def forward_matrix(shape, rotation, shift, shear, zoom, flip):
    """p_out = c + t + R S Z F (p_in - c) in homogeneous (col, row), from elementary matrices."""
    rows, cols = shape
    angle, slant = np.radians(rotation), np.tan(np.radians(shear))
    centre = np.array([[1, 0, (cols - 1) / 2], [0, 1, (rows - 1) / 2], [0, 0, 1]])
    rotate = np.array(
        [[np.cos(angle), np.sin(angle), 0], [-np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    shear_matrix = np.array([[1, slant, 0], [0, 1, 0], [0, 0, 1]])
    scale = np.diag([zoom[1], zoom[0], 1])
    mirror = np.diag([-1 if flip[1] else 1, -1 if flip[0] else 1, 1])
    translate = np.array([[1, 0, shift[1]], [0, 1, shift[0]], [0, 0, 1]])
    return translate @ centre @ rotate @ shear_matrix @ scale @ mirror @ np.linalg.inv(centre)


def test_composed_affine_equals_scipy_affine_transform_of_the_inverse(rng):
    x = smooth_image(rng, (1, 40, 50))
    changes = {
        "rotation": 23.0,
        "shift": (2.5, -3.25),
        "shear": 12.0,
        "zoom": (1.1, 0.85),
        "flip": (True, False),
    }
    inverse = np.linalg.inv(forward_matrix((40, 50), **changes))
    np.testing.assert_allclose(
        inverse_affine(make_params((40, 50), **changes), (40, 50)), inverse[:2], atol=1e-12
    )
    out, _ = transform(x, None, {"fill_mode": "mirror"}, **changes)
    # scipy works in (row, col): reverse both axes of the (col, row) matrix.
    expected = ndi.affine_transform(
        x[0], inverse[1::-1, 1::-1], inverse[1::-1, 2], order=1, mode="mirror"
    )
    np.testing.assert_allclose(out[0], expected, atol=1e-4)


# ---------------------------------------------------------------- crop, dtypes, intensity


@pytest.mark.parametrize("warp", [(), (0.8, -1.5, 2.0, 0.5, -0.3, 1.1, 0.7, -2.0)])
def test_crop_window_equals_crop_of_the_full_output(rng, warp):
    x = smooth_image(rng, (2, 30, 40))
    y = (x[:1] > 0).astype(np.uint8)
    changes = {"rotation": 17.0, "zoom": (1.2, 0.9), "warp": warp, "warp_grid_size": 4}
    full_x, full_y = transform(x, y, **changes)
    x_out, y_out = transform(x, y, crop=(5, 7, 20, 25), **changes)
    np.testing.assert_allclose(x_out, full_x[:, 5:25, 7:32], atol=1e-5)
    assert np.mean(y_out != full_y[:, 5:25, 7:32]) < 0.01


@pytest.mark.parametrize(
    "dtype",
    [
        np.bool_,
        np.uint8,
        np.int8,
        np.uint16,
        np.int16,
        np.int32,
        np.uint32,
        np.int64,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
    ],
)
@pytest.mark.parametrize("order", [0, 1, 3])
def test_every_dtype_is_preserved_and_nearest_keeps_values(rng, dtype, order):
    if np.dtype(dtype).kind == "b":
        x = rng.random((2, 12, 12)) > 0.5
    elif np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -(2**52)), min(info.max, 2**52), (2, 12, 12), dtype=dtype)
    else:
        x = rng.standard_normal((2, 12, 12)).astype(dtype)
    spec = {"order_x": order, "fill_mode": "reflect"}
    out, _ = transform(x, None, spec, rotation=33.0, zoom=(1.3, 1.1))
    assert out.dtype == x.dtype
    assert out.shape == x.shape
    if order == 0:
        assert np.isin(out, x).all()


def test_integer_bilinear_rounds_and_stays_in_range():
    x = np.array([[[0, 255, 0, 255]]], np.uint8).repeat(3, axis=1)
    out, _ = transform(x, None, shift=(0.0, 0.5))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 1], [0, 128, 128, 128])
    wide = np.full((1, 3, 4), 2**30, np.int32)
    out, _ = transform(wide, None, {"fill_mode": "constant", "cval_x": 1e30}, shift=(0.0, 2.0))
    assert out[0, 0, 0] == np.iinfo(np.int32).max  # cval rounded and clipped to the dtype
    assert out[0, 0, 3] == 2**30
    big = np.full((1, 3, 4), 2**62, np.int64)
    out, _ = transform(big, None, {"fill_mode": "constant", "cval_x": 1e30}, shift=(0.0, 2.0))
    assert out[0, 0, 0] > 2**62  # clipped below 2**63, never wrapped around
    assert out[0, 0, 3] == 2**62


def test_intensity_shift_per_channel_floats_unclipped_integers_clipped():
    x = np.full((2, 4, 4), 250.0, np.float32)
    out, _ = transform(x, None, intensity_shift=(9.6, -3.0))
    np.testing.assert_array_equal(out[0], np.float32(250) + np.float32(9.6))
    np.testing.assert_array_equal(out[1], 247.0)
    out, _ = transform(x.astype(np.uint8), None, intensity_shift=(9.6, -3.4))
    np.testing.assert_array_equal(out[0], 255)
    np.testing.assert_array_equal(out[1], 247)
    out, _ = transform(np.zeros((1, 2, 2), np.int8), None, intensity_shift=(-200.0,))
    np.testing.assert_array_equal(out, -128)


def test_intensity_shift_leaves_y_alone(rng):
    x = rng.random((1, 5, 5)).astype(np.float32)
    y = rng.random((1, 5, 5)).astype(np.float32)
    x_out, y_out = transform(x, y, intensity_shift=(0.5,))
    np.testing.assert_allclose(x_out, x + 0.5)
    np.testing.assert_array_equal(y_out, y)


# ---------------------------------------------------------------- spline warp


def sitk_field(jitter, shape, grid_size):
    """The same field from SimpleITK's BSplineTransform, given the same coefficients."""
    rows, cols = shape
    q = coefficient_matrix(grid_size)
    transform = sitk.BSplineTransform(2, 3)
    transform.SetTransformDomainOrigin((0.0, 0.0))
    transform.SetTransformDomainPhysicalDimensions((cols - 1.0, rows - 1.0))
    transform.SetTransformDomainMeshSize((grid_size - 1, grid_size - 1))
    # ITK orders the parameters x (column) coefficients first, each image x-fastest.
    transform.SetParameters(np.concatenate([(q @ j @ q.T).ravel() for j in jitter[::-1]]))
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, (cols, rows), (0.0, 0.0), (1.0, 1.0), (1, 0, 0, 1)
    )
    return np.moveaxis(sitk.GetArrayFromImage(field), -1, 0)[::-1]  # (row, col) displacements


@pytest.mark.parametrize(("shape", "grid_size"), [((37, 53), 3), ((64, 48), 5), ((20, 90), 7)])
def test_separable_field_equals_simpleitk_bspline_transform(rng, shape, grid_size):
    jitter = rng.standard_normal((2, grid_size - 2, grid_size - 2)) * 3
    rows_basis = displacement_basis(shape[0], grid_size)
    cols_basis = displacement_basis(shape[1], grid_size)
    ours = np.stack([rows_basis @ j @ cols_basis.T for j in jitter])
    np.testing.assert_allclose(ours, sitk_field(jitter, shape, grid_size), atol=1e-10)


def test_field_passes_through_the_jitter_and_vanishes_on_the_border(rng):
    jitter = rng.standard_normal((3, 3))
    basis = displacement_basis(41, 5)  # nodes at pixels 0, 10, 20, 30, 40
    field = basis @ jitter @ basis.T
    np.testing.assert_allclose(field[10:31:10, 10:31:10], jitter, atol=1e-12)
    for edge in (field[0], field[-1], field[:, 0], field[:, -1]):
        np.testing.assert_array_equal(edge, 0.0)


def test_warp_moves_a_ramp_by_the_field_and_anchors_the_border(rng):
    ramp = np.broadcast_to(np.arange(41, dtype=np.float32), (41, 41))
    x = np.stack([ramp, ramp.T])  # x[0] = column index, x[1] = row index
    jitter = rng.standard_normal((2, 3, 3)) * 2
    out, _ = transform(x, None, warp=tuple(jitter.ravel()), warp_grid_size=5)
    nodes = slice(10, 31, 10)
    np.testing.assert_allclose(out[1][nodes, nodes] - x[1][nodes, nodes], jitter[0], atol=1e-4)
    np.testing.assert_allclose(out[0][nodes, nodes] - x[0][nodes, nodes], jitter[1], atol=1e-4)
    for channel_in, channel_out in zip(x, out, strict=True):
        for edge in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):
            np.testing.assert_array_equal(channel_out[edge], channel_in[edge])


def test_warp_with_affine_equals_map_coordinates_of_the_composed_map(rng):
    shape = (36, 44)
    x = smooth_image(rng, (1, *shape))
    jitter = rng.standard_normal((2, 2, 2)) * 2
    changes = {"rotation": -15.0, "zoom": (0.9, 1.15), "shift": (1.5, 2.0)}
    params = make_params(shape, warp=tuple(jitter.ravel()), warp_grid_size=4, **changes)
    out, _ = apply(x, None, make_spec(fill_mode="nearest"), params)
    field = sitk_field(jitter, shape, 4)
    rows, cols = np.indices(shape, dtype=np.float64)
    warped = np.stack([cols + field[1], rows + field[0], np.ones(shape)])
    matrix = inverse_affine(params, shape)
    source_cols, source_rows = np.tensordot(matrix, warped, axes=1)
    expected = ndi.map_coordinates(x[0], [source_rows, source_cols], order=1, mode="nearest")
    np.testing.assert_allclose(out[0], expected, atol=1e-4)


def test_coordinate_maps_without_jitter_are_the_affine_grid():
    params = make_params((7, 9), rotation=10.0, warp=(0.0,) * 2, warp_grid_size=3)
    matrix = inverse_affine(params, (7, 9))
    map_cols, map_rows = coordinate_maps(matrix, params, (7, 9))
    rows, cols = np.indices((7, 9))
    np.testing.assert_allclose(
        map_cols, matrix[0, 0] * cols + matrix[0, 1] * rows + matrix[0, 2], atol=1e-5
    )
    np.testing.assert_allclose(
        map_rows, matrix[1, 0] * cols + matrix[1, 1] * rows + matrix[1, 2], atol=1e-5
    )


def test_the_spline_matrices_kept_stay_within_the_cache_budget(monkeypatch):
    """A warp matrix above the budget is computed, never kept; small ones are, LRU first out."""
    # Sizes no other test uses, so nothing is cached for them beforehand.
    monkeypatch.setattr(_bspline, "CACHE_BYTES", 8 * 13 * 103)  # one (103, 13) basis
    large = _bspline.spline_basis(1013, 11)
    assert _bspline.spline_basis(1013, 11) is not large  # not kept
    np.testing.assert_array_equal(_bspline.spline_basis(1013, 11), large)
    small = _bspline.spline_basis(103, 11)
    assert _bspline.spline_basis(103, 11) is small  # kept
    _bspline.spline_basis(101, 11)  # the budget holds one: the older one goes
    assert _bspline.spline_basis(103, 11) is not small
