"""Validate augmentation options, and draw every random quantity of a transform in one place."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools._parse import parse_bool, parse_int, parse_option
from data_tools.data_augmentation import _functional

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = [
    "FILL_MODES",
    "ORDERS",
    "AugmentationSpec",
    "Rng",
    "TransformParams",
    "draw",
    "output_shape",
    "parse_rng",
    "parse_spec",
]

FILL_MODES = ("constant", "mirror", "nearest", "reflect", "wrap")
ORDERS = (0, 1, 3)
MAX_SHEAR = 90.0
MIN_WARP_GRID_SIZE = 3

Rng = np.random.Generator | np.random.RandomState

# Layout of the fixed block of uniform draws taken for every image, whatever the options.
_ROTATION, _SHIFT_ROWS, _SHIFT_COLS, _SHEAR, _ZOOM_ROWS, _ZOOM_COLS = range(6)
_FLIP_ROWS, _FLIP_COLS, _CROP_TOP, _CROP_LEFT = range(6, 10)
_NUM_UNIFORMS = 10


@dataclass(frozen=True)
class AugmentationSpec:
    """The validated, non-random options of ``image_random_transform`` (see its docstring).

    Parsed once (``parse_augmentation_spec``, or ``parse_spec`` with every option), then used
    for any number of images: :meth:`draw` takes every random quantity of one transform from
    an rng, :meth:`apply` applies it, with no rng (MONAI's randomize/apply split).
    """

    rotation_range: float
    width_shift_range: float
    height_shift_range: float
    shear_range: float
    zoom_range: tuple[float, float]
    intensity_shift_range: float
    fill_mode: str
    cval_x: float
    cval_y: float
    horizontal_flip: bool
    vertical_flip: bool
    spline_warp: bool
    warp_sigma: float
    warp_grid_size: int
    crop_size: tuple[int, int] | None
    order_x: int
    order_y: int

    def draw(self, rng: Rng, image_shape: tuple[int, ...]) -> TransformParams:
        """Draw one transform for an image of ``image_shape`` (channels, H, W) from ``rng``.

        The shape is part of the draw, as in MONAI's ``randomize(img_size)``: the number of
        intensity shifts drawn is the number of channels, and shifts and crop offsets are
        resolved in pixels. Every rng call of the augmentation happens here (see ``draw``).

        Raises:
            ValueError: If ``crop_size`` does not fit in the image.
        """
        return draw(rng, self, image_shape[0], (image_shape[1], image_shape[2]))

    def apply(
        self,
        params: TransformParams,
        x: npt.NDArray[Any],
        y: npt.NDArray[Any] | None = None,
        *,
        out: tuple[npt.NDArray[Any], npt.NDArray[Any] | None] | None = None,
    ) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
        """Transform x (channels, H, W), and y alongside it, by ``params``; nothing random.

        Args:
            params: A draw of :meth:`draw` for x's shape.
            x: The image.
            y: Its target image or mask (same H, W), or None. Default None.
            out: Optional (x_out, y_out) to write the results into, each of its input's
                dtype and shape (channels, crop height, crop width); y_out None without y.
                Default None: new arrays.

        Returns:
            (x, y) transformed: ``out``'s arrays when given, y None without y.
        """
        x_out, y_out = (None, None) if out is None else out
        return _functional.apply(x, y, self, params, x_out=x_out, y_out=y_out)

    def output_shape(self, spatial_shape: tuple[int, int]) -> tuple[int, int]:
        """The (rows, cols) of an output for an image of ``spatial_shape`` (see ``output_shape``)."""
        return output_shape(self, spatial_shape)


@dataclass(frozen=True)
class TransformParams:
    """One draw: everything random about a transform, already resolved against the options.

    Attributes:
        rotation: Counterclockwise rotation (as displayed, row 0 on top), degrees.
        shift: (rows, cols) translation in pixels; positive moves content down and right.
        shear: Horizontal shear angle in degrees: ``col += tan(shear) * row`` about the centre.
        zoom: (rows, cols) scale factors; above 1 magnifies.
        flip: (vertical, horizontal) flips.
        intensity_shift: One additive shift per channel of x; empty when disabled.
        warp: Interior control-node jitter in pixels, shape ``(2, G - 2, G - 2)`` (row
            displacements, then column displacements) flattened in C order; empty when the
            warp is disabled or ``warp_sigma`` is 0.
        warp_grid_size: ``G``, control nodes per axis including the anchored border nodes.
        crop: (top, left, height, width) of the output window in the transformed image.
    """

    rotation: float
    shift: tuple[float, float]
    shear: float
    zoom: tuple[float, float]
    flip: tuple[bool, bool]
    intensity_shift: tuple[float, ...]
    warp: tuple[float, ...]
    warp_grid_size: int
    crop: tuple[int, int, int, int]


def _parse_real(name: str, value: Any) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected {name} to be a real number. Got {value!r} instead.")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"Expected {name} to be a finite number. Got {value!r} instead.")
    return result


def _parse_range(name: str, value: Any) -> float:
    result = _parse_real(name, value)
    if result < 0:
        raise ValueError(f"Expected {name} to be a number >= 0. Got {value!r} instead.")
    return result


def _parse_shear_range(value: Any) -> float:
    result = _parse_range("shear_range", value)
    if result >= MAX_SHEAR:
        raise ValueError(
            f"Expected shear_range to be in [0, {MAX_SHEAR}) degrees: a {MAX_SHEAR} degree shear "
            f"is degenerate. Got {value!r} instead."
        )
    return result


def _parse_warp_grid_size(value: Any) -> int:
    size = parse_int("warp_grid_size", value)
    if size < MIN_WARP_GRID_SIZE:
        raise ValueError(
            f"Expected warp_grid_size to be an integer >= {MIN_WARP_GRID_SIZE}: the border "
            f"control points are anchored, so fewer leave none to move. Got {value!r} instead."
        )
    return size


def _parse_zoom_range(value: Any) -> tuple[float, float]:
    message = (
        "Expected zoom_range to be a number in [0, 1) or a pair (low, high) with "
        f"0 < low <= high. Got {value!r} instead."
    )
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes):
        if len(value) != 2:
            raise ValueError(message)
        low, high = (_parse_real(f"zoom_range[{i}]", v) for i, v in enumerate(value))
    else:
        spread = _parse_range("zoom_range", value)
        low, high = 1.0 - spread, 1.0 + spread
    if not 0 < low <= high:
        raise ValueError(message)
    return low, high


def _parse_crop_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, Sequence | np.ndarray) or isinstance(value, str | bytes):
        raise TypeError(f"Expected crop_size to be None or a pair (h, w). Got {value!r} instead.")
    if len(value) != 2:
        raise ValueError(f"Expected crop_size to be a pair (h, w). Got {value!r} instead.")
    height, width = (parse_int(f"crop_size[{i}]", v, minimum=1) for i, v in enumerate(value))
    return height, width


def _parse_order(name: str, value: Any) -> int:
    order = parse_int(name, value)
    if order not in ORDERS:
        raise ValueError(f"Expected {name} to be one of {list(ORDERS)}. Got {value!r} instead.")
    return order


def parse_spec(
    *,
    rotation_range: Any,
    width_shift_range: Any,
    height_shift_range: Any,
    shear_range: Any,
    zoom_range: Any,
    intensity_shift_range: Any,
    fill_mode: Any,
    cval_x: Any,
    cval_y: Any,
    horizontal_flip: Any,
    vertical_flip: Any,
    spline_warp: Any,
    warp_sigma: Any,
    warp_grid_size: Any,
    crop_size: Any,
    order_x: Any,
    order_y: Any,
) -> AugmentationSpec:
    """Validate the options of ``image_random_transform``; raise TypeError/ValueError naming one."""
    return AugmentationSpec(
        rotation_range=_parse_range("rotation_range", rotation_range),
        width_shift_range=_parse_range("width_shift_range", width_shift_range),
        height_shift_range=_parse_range("height_shift_range", height_shift_range),
        shear_range=_parse_shear_range(shear_range),
        zoom_range=_parse_zoom_range(zoom_range),
        intensity_shift_range=_parse_range("intensity_shift_range", intensity_shift_range),
        fill_mode=parse_option("fill_mode", fill_mode, FILL_MODES),
        cval_x=_parse_real("cval_x", cval_x),
        cval_y=_parse_real("cval_y", cval_y),
        horizontal_flip=parse_bool("horizontal_flip", horizontal_flip),
        vertical_flip=parse_bool("vertical_flip", vertical_flip),
        spline_warp=parse_bool("spline_warp", spline_warp),
        warp_sigma=_parse_range("warp_sigma", warp_sigma),
        warp_grid_size=_parse_warp_grid_size(warp_grid_size),
        crop_size=_parse_crop_size(crop_size),
        order_x=_parse_order("order_x", order_x),
        order_y=_parse_order("order_y", order_y),
    )


def parse_rng(rng: Any) -> Rng:
    """Return a Generator or RandomState; None draws fresh OS entropy, an int >= 0 seeds one."""
    if isinstance(rng, np.random.Generator | np.random.RandomState):
        return rng
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, bool | np.bool_) and isinstance(rng, numbers.Integral):
        return np.random.default_rng(parse_int("rng", rng, minimum=0))
    raise TypeError(
        "Expected rng to be a numpy Generator or RandomState, an int seed >= 0 or None. "
        f"Got {rng!r} instead."
    )


def _symmetric(unit: float, half_width: float) -> float:
    """Map a uniform draw in [0, 1) onto [-half_width, half_width)."""
    return (2.0 * unit - 1.0) * half_width


def output_shape(spec: AugmentationSpec, spatial_shape: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) of the output: the crop size, or the input's when not cropping.

    Raises:
        ValueError: If ``spec.crop_size`` does not fit in ``spatial_shape``.
    """
    if spec.crop_size is None:
        return spatial_shape
    rows, cols = spatial_shape
    height, width = spec.crop_size
    if height > rows or width > cols:
        raise ValueError(
            f"Expected crop_size to fit in the image {spatial_shape}. Got {spec.crop_size} "
            "instead: crops are taken inside the transformed image, without padding."
        )
    return height, width


def _crop_window(
    spec: AugmentationSpec, spatial_shape: tuple[int, int], top_unit: float, left_unit: float
) -> tuple[int, int, int, int]:
    rows, cols = spatial_shape
    height, width = output_shape(spec, spatial_shape)
    # floor(u * n) is uniform over the n valid offsets; min() guards against u * n rounding to n.
    top = min(math.floor(top_unit * (rows - height + 1)), rows - height)
    left = min(math.floor(left_unit * (cols - width + 1)), cols - width)
    return top, left, height, width


def draw(
    rng: Rng, spec: AugmentationSpec, num_channels: int, spatial_shape: tuple[int, int]
) -> TransformParams:
    """Draw one transform's parameters: every rng call of the augmentation happens here.

    The rng is consumed identically whatever the options: a fixed block of uniforms for the
    scalar quantities, then ``num_channels`` uniforms for the intensity shifts, then the warp
    jitter. Enabling one option therefore never changes the values drawn for another.

    Args:
        rng: The source of randomness; advanced by this call.
        spec: Validated options.
        num_channels: Number of channels of x.
        spatial_shape: (rows, cols) of the image.

    Returns:
        The parameters, neutral (zero, one, False or empty) for every disabled option.

    Raises:
        ValueError: If ``spec.crop_size`` does not fit in ``spatial_shape``.
    """
    units: list[float] = rng.random(_NUM_UNIFORMS).tolist()
    intensity_units: list[float] = rng.random(num_channels).tolist()
    interior = spec.warp_grid_size - 2
    jitter = rng.standard_normal((2, interior, interior))

    rows, cols = spatial_shape
    low, high = spec.zoom_range
    intensity = (
        tuple(_symmetric(u, spec.intensity_shift_range) for u in intensity_units)
        if spec.intensity_shift_range > 0
        else ()
    )
    warp = (
        tuple((spec.warp_sigma * jitter).ravel().tolist())
        if spec.spline_warp and spec.warp_sigma > 0
        else ()
    )
    return TransformParams(
        rotation=_symmetric(units[_ROTATION], spec.rotation_range),
        shift=(
            _symmetric(units[_SHIFT_ROWS], spec.height_shift_range) * rows,
            _symmetric(units[_SHIFT_COLS], spec.width_shift_range) * cols,
        ),
        shear=_symmetric(units[_SHEAR], spec.shear_range),
        zoom=(
            low + (high - low) * units[_ZOOM_ROWS],
            low + (high - low) * units[_ZOOM_COLS],
        ),
        flip=(
            spec.vertical_flip and bool(units[_FLIP_ROWS] < 0.5),
            spec.horizontal_flip and bool(units[_FLIP_COLS] < 0.5),
        ),
        intensity_shift=intensity,
        warp=warp,
        warp_grid_size=spec.warp_grid_size,
        crop=_crop_window(spec, spatial_shape, units[_CROP_TOP], units[_CROP_LEFT]),
    )
