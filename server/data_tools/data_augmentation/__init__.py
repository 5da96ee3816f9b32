"""Random 2D image transformations for augmentation, resampled once per image with OpenCV.

``image_random_transform`` is the reference function. It is built on an
:class:`AugmentationSpec` (its options, parsed once by ``parse_augmentation_spec``), whose
``draw(rng, shape)`` takes every random quantity and ``apply(params, x, y)`` applies them.
:class:`SampleAugmentation` augments every sample of a batch from its own
``(seed, epoch, index)`` generator: a ``data_flow`` preprocessor, as the data node runs it.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from data_tools._parse import parse_int, parse_option
from data_tools.data_augmentation._params import (
    FILL_MODES,
    ORDERS,
    AugmentationSpec,
    Rng,
    TransformParams,
    parse_rng,
    parse_spec,
)
from data_tools.data_augmentation._samples import SampleAugmentation, image_samples

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "FILL_MODES",
    "ORDERS",
    "AugmentationSpec",
    "SampleAugmentation",
    "TransformParams",
    "image_random_transform",
    "image_samples",
    "image_stack_random_transform",
    "parse_augmentation_spec",
]

Array = npt.NDArray[Any]


def _check_contents(name: str, array: Array, shape: tuple[int, ...]) -> None:
    """Raise unless the dtype is numeric and the spatial axes (the last two) are non-empty."""
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"Expected {name} to hold bools, integers or reals. Got dtype {array.dtype} instead."
        )
    if 0 in array.shape[-2:]:
        raise ValueError(
            f"Expected {name} to have non-empty spatial axes. Got shape {shape} instead."
        )


def _parse_image(name: str, value: Any) -> Array:
    array = np.asarray(value)
    if array.ndim != 3:
        raise ValueError(
            f"Expected {name} to be a 3-d array (channels, H, W). Got shape {array.shape} instead."
        )
    _check_contents(name, array, array.shape)
    return array


def _check_same_shape(y: Array, x: Array, axes: str) -> None:
    """Raise unless y and x agree on every axis except the channel axis (-3)."""
    if y.shape[:-3] + y.shape[-2:] != x.shape[:-3] + x.shape[-2:]:
        raise ValueError(
            f"Expected y to have the {axes} shape of x {x.shape} (its channel count may "
            f"differ). Got shape {y.shape} instead."
        )


def image_random_transform(
    x: npt.ArrayLike,
    y: npt.ArrayLike | None = None,
    rotation_range: float = 0.0,
    width_shift_range: float = 0.0,
    height_shift_range: float = 0.0,
    shear_range: float = 0.0,
    zoom_range: float | tuple[float, float] = 0.0,
    intensity_shift_range: float = 0.0,
    fill_mode: str = "nearest",
    cval_x: float = 0.0,
    cval_y: float = 0.0,
    horizontal_flip: bool = False,
    vertical_flip: bool = False,
    spline_warp: bool = False,
    warp_sigma: float = 0.1,
    warp_grid_size: int = 3,
    crop_size: tuple[int, int] | None = None,
    rng: np.random.Generator | np.random.RandomState | int | None = None,
    *,
    order_x: int = 1,
    order_y: int = 0,
) -> Array | tuple[Array, Array]:
    """Randomly transform an image, and its target image or mask with the same geometry.

    Rotation, shift, shear, zoom, flips and the spline warp are composed into one coordinate
    map, so each output pixel is interpolated once (``cv2.warpAffine``, or ``cv2.remap`` when
    the warp is on). The forward geometry, about the image centre ``((H - 1) / 2, (W - 1) / 2)``,
    is: flip, zoom, shear, rotation, shift, then the warp acting on the result. Rows grow
    downwards and angles are counterclockwise as the image is displayed (row 0 on top), as
    ``np.rot90``. All zero ranges with no flips, warp or crop return an exact copy of x (and y).

    Args:
        x: The image, shape (channels, H, W). Any bool, integer or real dtype; the output has
            the same dtype. OpenCV resamples uint8, uint16, int16, float32 and float64
            directly; bool goes through uint8, int8 through int16, float16 through float32 and
            other integers through float64 (exact for magnitudes below 2**53), and integer
            results are rounded and clipped to the dtype's range. OpenCV quantizes sub-pixel
            sample positions to 1/32 pixel for some dtypes (int16 and float64 in OpenCV 5.0).
        y: Optional target image or mask, shape (channels', H, W); it gets exactly the same
            geometry as x, the fill value ``cval_y`` and no intensity shift. Defaults to None.
        rotation_range: Rotation angle drawn uniformly from [-r, r] degrees. Defaults to 0.
        width_shift_range: Horizontal shift drawn uniformly from [-s, s] times W pixels;
            positive moves content right. Defaults to 0.
        height_shift_range: Vertical shift drawn uniformly from [-s, s] times H pixels;
            positive moves content down. Defaults to 0.
        shear_range: Horizontal shear angle drawn uniformly from [-a, a] degrees, a < 90:
            a pixel at (dr, dc) from the centre moves to (dr, dc + tan(angle) * dr).
            Defaults to 0.
        zoom_range: z draws the row and column zoom factors independently from
            [1 - z, 1 + z] (0 <= z < 1); a pair (low, high), 0 < low <= high, draws them from
            [low, high]. A factor above 1 magnifies. Defaults to 0.
        intensity_shift_range: One shift per channel of x drawn uniformly from [-s, s] and
            added after resampling (so fill regions are shifted too). Float results are not
            clipped; integer and bool results are rounded and clipped to the dtype's range.
            Defaults to 0.
        fill_mode: How to fill points mapped outside the input, as scipy.ndimage's modes:
            'nearest' repeats the edge pixel (aaa|abcd|ddd, cv2.BORDER_REPLICATE); 'reflect'
            mirrors about the pixel edge, repeating the edge pixel (cba|abcd|dcb,
            cv2.BORDER_REFLECT); 'mirror' mirrors about the edge pixel's centre (dcb|abcd|cba,
            cv2.BORDER_REFLECT_101); 'wrap' tiles the image (scipy's 'grid-wrap',
            cv2.BORDER_WRAP); 'constant' pads with cval_x / cval_y and interpolates across
            the edge (scipy's 'grid-constant', cv2.BORDER_CONSTANT). The warp uses the same
            mode. Defaults to 'nearest'.
        cval_x: Fill value of x for 'constant', cast to x's dtype. Defaults to 0.
        cval_y: Fill value of y for 'constant', cast to y's dtype. Defaults to 0.
        horizontal_flip: Flip left-right with probability 1/2. Defaults to False.
        vertical_flip: Flip top-bottom with probability 1/2. Defaults to False.
        spline_warp: Apply a smooth random warp: a cubic B-spline displacement field through
            a ``warp_grid_size`` x ``warp_grid_size`` grid of control points spread evenly
            from the first to the last pixel. The border control points are anchored, and the
            field is zero along the whole image border; each interior control point moves by
            a N(0, warp_sigma**2) jitter per axis, in output pixels, and the spline passes
            through it exactly. Defaults to False.
        warp_sigma: Standard deviation of the control-point jitter in pixels, >= 0; 0 makes
            the warp a no-op. Defaults to 0.1.
        warp_grid_size: Control points per axis, border included, >= 3. Defaults to 3.
        crop_size: Optional (h, w) of a random crop of the transformed image; every one of the
            (H - h + 1) * (W - w + 1) offsets is equally likely. Defaults to None (no crop).
        rng: A numpy Generator or RandomState (advanced by the call), an int seed >= 0, or
            None for fresh OS entropy. The same rng state gives the same output. The rng is
            consumed identically whatever the options, so enabling one option never changes
            the values drawn for another. Defaults to None.
        order_x: Interpolation of x: 0 nearest (ties to even), 1 bilinear, 3 bicubic
            (OpenCV's Keys kernel, not scipy's cubic spline). Defaults to 1.
        order_y: Interpolation of y, as order_x; nearest keeps labels labels. Defaults to 0.

    Returns:
        The transformed x, or (x, y) when y is given: new arrays of the input dtypes, of
        spatial shape crop_size (or (H, W)).

    Raises:
        TypeError: If an argument has the wrong type (a non-numeric dtype, a non-bool flag,
            a non-integer size, an rng of another kind).
        ValueError: If a range is negative (or zoom_range >= 1, shear_range >= 90), x or y is
            not 3-d, y's spatial shape differs from x's, fill_mode is unknown, warp_grid_size
            < 3, an order is not 0, 1 or 3, or crop_size does not fit in the image; the message
            names the argument.
    """
    spec = parse_spec(
        rotation_range=rotation_range,
        width_shift_range=width_shift_range,
        height_shift_range=height_shift_range,
        shear_range=shear_range,
        zoom_range=zoom_range,
        intensity_shift_range=intensity_shift_range,
        fill_mode=fill_mode,
        cval_x=cval_x,
        cval_y=cval_y,
        horizontal_flip=horizontal_flip,
        vertical_flip=vertical_flip,
        spline_warp=spline_warp,
        warp_sigma=warp_sigma,
        warp_grid_size=warp_grid_size,
        crop_size=crop_size,
        order_x=order_x,
        order_y=order_y,
    )
    generator = parse_rng(rng)
    x_array = _parse_image("x", x)
    y_array = None if y is None else _parse_image("y", y)
    if y_array is not None:
        _check_same_shape(y_array, x_array, "spatial")
    params = spec.draw(generator, x_array.shape)
    x_out, y_out = spec.apply(params, x_array, y_array)
    return x_out if y_out is None else (x_out, y_out)


_SIGNATURE = inspect.signature(image_random_transform)
_OPTION_NAMES = tuple(name for name in _SIGNATURE.parameters if name not in ("x", "y"))
_SPEC_NAMES = tuple(name for name in _OPTION_NAMES if name != "rng")


def _check_keywords(options: Mapping[str, Any], names: tuple[str, ...]) -> None:
    """Raise TypeError, with a suggestion, for a keyword not in ``names``."""
    for name in options:
        if name not in names:
            try:
                parse_option("keyword argument", name, names)
            except ValueError as error:
                raise TypeError(str(error)) from None


def _spec_with_defaults(options: Mapping[str, Any]) -> AugmentationSpec:
    return parse_spec(
        **{name: options.get(name, _SIGNATURE.parameters[name].default) for name in _SPEC_NAMES}
    )


def parse_augmentation_spec(**options: Any) -> AugmentationSpec:
    """Check ``image_random_transform``'s options once, for any number of images.

    Args:
        **options: Any keyword argument of image_random_transform but x, y and rng
            (rotation_range, ..., crop_size, order_x, order_y), with the same defaults,
            meaning and checks.

    Returns:
        The spec: ``spec.draw(rng, (channels, H, W))`` then ``spec.apply(params, x, y)``
        give exactly ``image_random_transform(x, y, rng=rng, **options)``.

    Raises:
        TypeError: If a keyword is unknown (with a suggestion) or an option has the wrong
            type; the same messages as image_random_transform.
        ValueError: If an option is invalid (see image_random_transform); the message names it.
    """
    _check_keywords(options, _SPEC_NAMES)
    return _spec_with_defaults(options)


def _parse_options(options: dict[str, Any]) -> tuple[AugmentationSpec, Rng]:
    """Validate the keyword arguments a stack passes on, with image_random_transform's defaults."""
    _check_keywords(options, _OPTION_NAMES)
    generator = parse_rng(options.get("rng", _SIGNATURE.parameters["rng"].default))
    return _spec_with_defaults(options), generator


def _parse_channel_axis(channel_axis: Any, ndim: int) -> int:
    axis = parse_int("channel_axis", channel_axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"Expected channel_axis to be None or in [{-ndim}, {ndim}) for x of {ndim} axes. "
            f"Got {channel_axis!r} instead."
        )
    return axis % ndim


def _as_stack(name: str, value: Any, channel_axis: int | None, ndim: int | None) -> Array:
    """View an N-d stack as (..., channels, H, W), adding a channel axis when there is none."""
    array = np.asarray(value)
    minimum = 2 if channel_axis is None else 3
    expected = f"at least {minimum}-d" if ndim is None else f"{ndim}-d, as x"
    if array.ndim < minimum or (ndim is not None and array.ndim != ndim):
        raise ValueError(
            f"Expected {name} to be {expected} (its last two axes spatial, not counting "
            f"channel_axis). Got shape {array.shape} instead."
        )
    if channel_axis is None:
        stack = array[..., None, :, :]
    else:
        stack = np.moveaxis(array, channel_axis, -3)
    _check_contents(name, stack, array.shape)
    return stack


def image_stack_random_transform(
    x: npt.ArrayLike,
    y: npt.ArrayLike | None = None,
    channel_axis: int | None = 1,
    same_transform: bool = False,
    **kwargs: Any,
) -> Array | tuple[Array, Array]:
    """Randomly transform every image of a stack (and its target images), as image_random_transform.

    Args:
        x: A stack of images: any number of leading (batch) axes, one channel axis and two
            spatial axes, which are the last two axes once the channel axis is set aside.
        y: Optional stack of target images or masks with the ndim, channel_axis, batch shape
            and spatial shape of x (the channel count may differ). Defaults to None.
        channel_axis: Position of the channel axis in x (and y), negative values counting
            from the end; None when the stack has no channel axis. Defaults to 1.
        same_transform: If True, one draw transforms the whole stack; if False, each image
            (index over the batch axes) gets its own draw, taken in C order from the one rng.
            Defaults to False.
        **kwargs: Any keyword argument of image_random_transform (rotation_range, ...,
            crop_size, rng, order_x, order_y), with the same defaults and meaning.

    Returns:
        The transformed x, or (x, y) when y is given: new C-contiguous arrays in the input's
        layout and dtype, the spatial axes resized to crop_size when cropping.

    Raises:
        TypeError: If a keyword argument is unknown (with a suggestion) or has the wrong type.
        ValueError: If channel_axis is out of range, x or y has too few axes, y's shape does
            not match x's, or any option is invalid (see image_random_transform); the
            message names the argument.
    """
    spec, generator = _parse_options(kwargs)
    x = np.asarray(x)
    axis = None if channel_axis is None else _parse_channel_axis(channel_axis, x.ndim)
    if not isinstance(same_transform, bool | np.bool_):
        raise TypeError(f"Expected same_transform to be a bool. Got {same_transform!r} instead.")
    xs = _as_stack("x", x, axis, None)
    ys = None if y is None else _as_stack("y", y, axis, x.ndim)
    if ys is not None:
        _check_same_shape(ys, xs, "batch and spatial")
    spatial_shape = (xs.shape[-2], xs.shape[-1])
    window = spec.output_shape(spatial_shape)

    x_out, x_view = _empty_stack(xs, window, axis)
    y_out, y_view = (None, None) if ys is None else _empty_stack(ys, window, axis)
    params: TransformParams | None = None
    for index in np.ndindex(xs.shape[:-3]):
        if params is None or not same_transform:
            params = spec.draw(generator, (xs.shape[-3], *spatial_shape))
        spec.apply(
            params,
            xs[index],
            None if ys is None else ys[index],
            out=(x_view[index], None if y_view is None else y_view[index]),
        )
    return x_out if y_out is None else (x_out, y_out)


def _empty_stack(stack: Array, window: tuple[int, int], axis: int | None) -> tuple[Array, Array]:
    """A C-contiguous output in the caller's layout, and its (..., channels, h, w) view."""
    shape = [*stack.shape[:-2], *window]
    if axis is None:
        out = np.empty(shape[:-3] + shape[-2:], dtype=stack.dtype)
        return out, out[..., None, :, :]
    channels = shape.pop(-3)
    shape.insert(axis, channels)
    out = np.empty(shape, dtype=stack.dtype)
    return out, np.moveaxis(out, axis, -3)
