"""Apply drawn parameters: compose one coordinate map, resample once with OpenCV, shift, crop."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from data_tools.data_augmentation._bspline import displacement_basis

if TYPE_CHECKING:
    from data_tools.data_augmentation._params import AugmentationSpec, TransformParams

__all__ = ["apply", "coordinate_maps", "inverse_affine"]

Array = npt.NDArray[Any]
Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

# scipy.ndimage mode name -> OpenCV border: 'reflect' repeats the edge pixel (d c b a | a b c d),
# 'mirror' does not (d c b | a b c d), as in scipy; 'wrap' is scipy's 'grid-wrap'.
_BORDERS = {
    "constant": cv2.BORDER_CONSTANT,
    "mirror": cv2.BORDER_REFLECT_101,
    "nearest": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT,
    "wrap": cv2.BORDER_WRAP,
}
_INTERPOLATIONS = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}

# OpenCV resamples these dtypes natively; the others go through a working dtype and back.
_NATIVE = frozenset(np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32, np.float64))
_WIDENED = {
    np.dtype(np.bool_): np.uint8,
    np.dtype(np.int8): np.int16,
    np.dtype(np.float16): np.float32,
}

# Resample one contiguous 2-D plane into ``dst`` with (interpolation flag, fill value).
PlaneWarp = Callable[[Array, Array, int, float], None]


def inverse_affine(params: TransformParams, spatial_shape: tuple[int, int]) -> Float64Array:
    """The 2x3 matrix taking output (col, row) to input (col, row), for the whole image.

    The forward map is ``p_out = c + t + R @ S @ Z @ F @ (p_in - c)`` about the centre
    ``c = ((W - 1) / 2, (H - 1) / 2)``: flip F, zoom Z, horizontal shear S, counterclockwise
    rotation R, then translation t. This returns its exact inverse.
    """
    rows, cols = spatial_shape
    angle = math.radians(params.rotation)
    cos, sin = math.cos(angle), math.sin(angle)
    shear = math.tan(math.radians(params.shear))
    # Rows of F @ Z^-1 @ S^-1 @ R^T, in scalars: tiny numpy matmuls cost more than the warp
    # of a small image.
    flip_cols = -1.0 if params.flip[1] else 1.0
    flip_rows = -1.0 if params.flip[0] else 1.0
    l00 = flip_cols * (cos - shear * sin) / params.zoom[1]
    l01 = flip_cols * (-sin - shear * cos) / params.zoom[1]
    l10 = flip_rows * sin / params.zoom[0]
    l11 = flip_rows * cos / params.zoom[0]
    centre_col, centre_row = (cols - 1) / 2, (rows - 1) / 2
    source_col, source_row = centre_col + params.shift[1], centre_row + params.shift[0]
    return np.array(
        [
            [l00, l01, centre_col - (l00 * source_col + l01 * source_row)],
            [l10, l11, centre_row - (l10 * source_col + l11 * source_row)],
        ]
    )


def coordinate_maps(
    matrix: Float64Array, params: TransformParams, spatial_shape: tuple[int, int]
) -> tuple[Float32Array, Float32Array]:
    """Input (col, row) coordinates of every pixel of the crop window, spline warp included.

    An output pixel ``p`` samples the input at ``matrix @ (p + d(p))``, ``d`` being the
    spline displacement: the warp acts after the affine, as a warp of the affine's output.
    Both terms fold into one low-rank product per map, ``U @ K @ V.T``, with
    ``U = [row basis | row | 1]`` and ``V = [col basis | col | 1]``.
    """
    rows, cols = spatial_shape
    top, left, height, width = params.crop
    grid_size = params.warp_grid_size
    interior = grid_size - 2
    row_jitter, col_jitter = np.asarray(params.warp, dtype=np.float64).reshape(2, interior, -1)
    u = _augmented_basis(displacement_basis(rows, grid_size), top, height)
    v = _augmented_basis(displacement_basis(cols, grid_size), left, width)
    maps = []
    for col_weight, row_weight, offset in matrix:
        k = np.zeros((interior + 2, interior + 2))
        k[:interior, :interior] = col_weight * col_jitter + row_weight * row_jitter
        k[interior, interior + 1] = row_weight
        k[interior + 1, interior] = col_weight
        k[interior + 1, interior + 1] = offset
        maps.append((u @ k.astype(np.float32)) @ v.T)
    return maps[0], maps[1]


def _augmented_basis(basis: Float64Array, start: int, size: int) -> Float32Array:
    augmented = np.ones((size, basis.shape[1] + 2), dtype=np.float32)
    augmented[:, :-2] = basis[start : start + size]
    augmented[:, -2] = np.arange(start, start + size)
    return augmented


def _is_flip_only(params: TransformParams) -> bool:
    return (
        params.rotation == 0
        and params.shear == 0
        and params.zoom == (1.0, 1.0)
        and params.shift == (0.0, 0.0)
        and not params.warp
    )


def _bounds(dtype: np.dtype[Any], work_dtype: np.dtype[Any]) -> tuple[float, float]:
    low, high = (0, 1) if dtype == np.bool_ else (int(np.iinfo(dtype).min), np.iinfo(dtype).max)
    if work_dtype.kind != "f":
        return low, int(high)
    top = float(high)
    if top > high:  # float(2**63 - 1) rounds up to 2**63, which would wrap around
        top = math.nextafter(top, 0.0)
    return float(low), top


def _cast(array: Array, dtype: np.dtype[Any], out: Array | None = None) -> Array:
    """Convert a working array back to ``dtype`` (into ``out`` when given, else a new array
    unless the dtypes agree): integers and bools are rounded and clipped."""
    if array.dtype != dtype and dtype.kind in "biu":
        if array.dtype.kind == "f":
            np.rint(array, out=array)
        low, high = _bounds(dtype, array.dtype)
        np.clip(array, low, high, out=array)
    if out is not None:
        np.copyto(out, array, casting="unsafe")
        return out
    return array if array.dtype == dtype else array.astype(dtype)


def _work_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype in _NATIVE:
        return dtype
    if dtype in _WIDENED:
        return np.dtype(_WIDENED[dtype])
    return np.dtype(np.float64)  # other integers: exact for magnitudes below 2**53


def _resample(
    image: Array,
    warp_plane: PlaneWarp,
    window: tuple[int, int],
    order: int,
    cval: float,
    out: Array | None,
) -> Array:
    work = np.ascontiguousarray(image, dtype=_work_dtype(image.dtype))
    # OpenCV writes into a destination only if it is contiguous and of the working dtype.
    direct = out is not None and out.dtype == work.dtype and out.flags.c_contiguous
    target = out if direct else np.empty((image.shape[0], *window), dtype=work.dtype)
    assert target is not None
    for src, dst in zip(work, target, strict=True):
        warp_plane(src, dst, _INTERPOLATIONS[order], cval)
    return target if direct else _cast(target, image.dtype, out)


def _plane_warp(params: TransformParams, spatial_shape: tuple[int, int], border: int) -> PlaneWarp:
    """One plane's resampling: cv2.warpAffine for an affine, cv2.remap with a warp field."""
    matrix = inverse_affine(params, spatial_shape)
    top, left, height, width = params.crop
    if params.warp:
        map_cols, map_rows = coordinate_maps(matrix, params, spatial_shape)

        def remap(src: Array, dst: Array, interpolation: int, cval: float) -> None:
            cv2.remap(
                src, map_cols, map_rows, interpolation, dst=dst, borderMode=border, borderValue=cval
            )

        return remap
    cropped = matrix.copy()
    cropped[:, 2] += matrix[:, :2] @ np.array([left, top])

    def warp_affine(src: Array, dst: Array, interpolation: int, cval: float) -> None:
        cv2.warpAffine(
            src,
            cropped,
            (width, height),
            dst=dst,
            flags=interpolation | cv2.WARP_INVERSE_MAP,
            borderMode=border,
            borderValue=cval,
        )

    return warp_affine


def _shift_intensity(image: Array, shifts: tuple[float, ...]) -> None:
    """Add one shift per channel in place: floats are not clipped, integers are rounded and
    clipped."""
    shift = np.asarray(shifts).reshape(-1, 1, 1)
    if image.dtype.kind == "f":
        image += shift.astype(image.dtype)
    else:
        _cast(image + shift, image.dtype, image)


# Transform one (channels, rows, cols) array given (order, cval, destination or None).
Transform = Callable[[Array, int, float, Array | None], Array]


def _flip_and_crop(image: Array, axes: tuple[int, ...], window: Any, out: Array | None) -> Array:
    flipped: Array = np.flip(image, axes)[window]
    if out is None:
        return flipped.copy()
    np.copyto(out, flipped)
    return out


def _transformer(params: TransformParams, spatial_shape: tuple[int, int], border: int) -> Transform:
    """The geometric part for a (channels, rows, cols) array."""
    top, left, height, width = params.crop
    window = (slice(None), slice(top, top + height), slice(left, left + width))
    if _is_flip_only(params):
        # Exact for every dtype, and no resampling at all for the identity.
        axes = tuple(axis for axis, flip in zip((1, 2), params.flip, strict=True) if flip)
        return lambda image, order, cval, out: _flip_and_crop(image, axes, window, out)
    warp_plane = _plane_warp(params, spatial_shape, border)
    return lambda image, order, cval, out: _resample(
        image, warp_plane, (height, width), order, cval, out
    )


def apply(
    x: Array,
    y: Array | None,
    spec: AugmentationSpec,
    params: TransformParams,
    *,
    x_out: Array | None = None,
    y_out: Array | None = None,
) -> tuple[Array, Array | None]:
    """Transform x, and y alongside it, by ``params``; both must be (channels, rows, cols).

    Writes into ``x_out`` and ``y_out`` when given (each of its input's dtype and of shape
    (channels, crop height, crop width)), else into new arrays; returns the results.
    """
    transform = _transformer(params, (x.shape[-2], x.shape[-1]), _BORDERS[spec.fill_mode])
    x_result = transform(x, spec.order_x, spec.cval_x, x_out)
    if params.intensity_shift:
        _shift_intensity(x_result, params.intensity_shift)
    y_result = None if y is None else transform(y, spec.order_y, spec.cval_y, y_out)
    return x_result, y_result
