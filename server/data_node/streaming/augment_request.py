"""A StreamRequest's ``augmentation``, checked against the node's bounds and the dataset.

Every value is checked here, in the node's process, before any work: numbers against the
bounds of :data:`BOUNDS` (finite, and small enough that the resampling stays finite and
sane: OpenCV's fixed-point coordinates, the spline warp's matrices), the arrays against the
dataset's shapes and dtypes, the crop against the image. The checked options become the
library's :class:`~data_tools.data_augmentation.AugmentationSpec`, parsed once per request
(the library's own checks then pass: the bounds here are narrower). Nothing here runs the
transform: it runs only in a stream's worker processes, so a crash in native code takes one
worker, never the node.

The result's :attr:`AugmentPlan.meaning` is the augmentation with every default applied and
every field that cannot change the output reset (``cval_x`` without ``fill_mode``
"constant", the warp's sigma and grid without a warp, ``order_y`` and ``cval_y`` without
``y_array``), so equivalent requests fingerprint alike (see ``cursors.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from data_node.errors import RequestError
from data_node.fields import choice
from data_node.fields import shown as _shown
from data_tools.data_augmentation import (
    FILL_MODES,
    ORDERS,
    AugmentationSpec,
    image_samples,
    parse_augmentation_spec,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from data_node.catalog.datasets import Dataset
    from data_wire.v1 import data_node_pb2

__all__ = [
    "BOUNDS",
    "MAX_ZOOM",
    "MIN_ZOOM",
    "AugmentPlan",
    "parse_augmentation",
]

#: Zoom factors (rows and columns) a stream may draw: at most 16 times larger or smaller,
#: so the inverse map's coefficients stay below 16 and every source coordinate stays
#: within 16 image sizes (OpenCV's fixed-point coordinates then never overflow).
MIN_ZOOM = 1.0 / 16.0
MAX_ZOOM = 16.0
#: The largest fill value or intensity shift: every integer up to it is exact in float64.
_MAX_VALUE = float(2**53)
#: (low, high, unit and reason) of each scalar field of ``Augmentation``, both ends included.
BOUNDS: Mapping[str, tuple[float, float, str]] = {
    "rotation_range": (0.0, 360.0, "degrees"),
    "width_shift_range": (0.0, 1.0, "a fraction of the width"),
    "height_shift_range": (0.0, 1.0, "a fraction of the height"),
    # tan(80 degrees) < 6: a steeper shear maps the image far outside itself.
    "shear_range": (0.0, 80.0, "degrees"),
    "intensity_shift_range": (0.0, _MAX_VALUE, "2**53, exact in float64"),
    "cval_x": (-_MAX_VALUE, _MAX_VALUE, "2**53 in magnitude, exact in float64"),
    "cval_y": (-_MAX_VALUE, _MAX_VALUE, "2**53 in magnitude, exact in float64"),
    # Jitter in pixels; more than a few image sizes only folds the image onto itself.
    "warp_sigma": (0.0, 1000.0, "pixels"),
    # The warp's matrices grow with the square (and their setup with the cube) of the grid.
    "warp_grid_size": (3, 64, "control points per side"),
}
# Every option at the library's default (image_random_transform's signature).
_DEFAULTS = parse_augmentation_spec()
_SCALARS = (
    "rotation_range",
    "width_shift_range",
    "height_shift_range",
    "shear_range",
    "intensity_shift_range",
    "cval_x",
    "cval_y",
)
_FLAGS = ("horizontal_flip", "vertical_flip", "spline_warp")


@dataclass(frozen=True)
class AugmentPlan:
    """A checked augmentation.

    Attributes:
        x_position: Position of the x array in the dataset's arrays.
        y_position: Position of the y array, or None.
        spec: The library's augmentation, parsed once here for every sample of the stream.
        meaning: What the augmentation does, for the cursor fingerprint (see the module).
    """

    x_position: int
    y_position: int | None
    spec: AugmentationSpec
    meaning: Mapping[str, Any]


def parse_augmentation(augmentation: data_node_pb2.Augmentation, dataset: Dataset) -> AugmentPlan:
    """Check ``augmentation`` against :data:`BOUNDS` and ``dataset``; nothing is run.

    Raises:
        RequestError: A field is out of its bounds, names no array of the dataset, or does
            not fit the arrays; the message names the field ("augmentation.<field>: ...").
    """
    names = list(dataset.array_names)
    x_position = _array_position("augmentation.x_array", augmentation.x_array, names)
    image = _image_shape("augmentation.x_array", dataset, x_position)
    y_position = None
    if augmentation.y_array:
        y_position = _array_position("augmentation.y_array", augmentation.y_array, names)
        if y_position == x_position:
            raise RequestError(
                "augmentation.y_array: Expected an array other than x_array (y is transformed "
                f"alongside x). Got {_shown(augmentation.y_array)}, the x_array, instead."
            )
        y_image = _image_shape("augmentation.y_array", dataset, y_position)
        if y_image[1:] != image[1:]:
            raise RequestError(
                f"augmentation.y_array: Expected samples of the spatial shape (H, W) of x, "
                f"{image[1:]}. Got {y_image[1:]} instead."
            )
    options: dict[str, Any] = {name: _bounded(augmentation, name) for name in _SCALARS}
    options["zoom_range"] = _zoom(list(augmentation.zoom_range))
    options["fill_mode"] = _fill_mode(augmentation.fill_mode or _DEFAULTS.fill_mode)
    for name in _FLAGS:
        options[name] = bool(getattr(augmentation, name))
    for name in ("warp_sigma", "warp_grid_size"):
        options[name] = (
            _bounded(augmentation, name)
            if augmentation.HasField(name)
            else getattr(_DEFAULTS, name)
        )
    options["crop_size"] = _crop(list(augmentation.crop_size), image)
    for name in ("order_x", "order_y"):
        options[name] = _order(augmentation, name)
    meaning = _meaning(options, augmentation.x_array, augmentation.y_array or None)
    return AugmentPlan(x_position, y_position, parse_augmentation_spec(**options), meaning)


def _array_position(field: str, name: str, names: list[str]) -> int:
    return names.index(choice(field, name, names))


def _image_shape(field: str, dataset: Dataset, position: int) -> tuple[int, ...]:
    """The (channels, H, W) of each sample of the array at ``position``; an (H, W) sample
    is one channel (``SampleAugmentation`` transforms it so)."""
    name, array = dataset.arrays[position]
    try:
        return image_samples(name, array.shape, array.dtype)
    except (TypeError, ValueError):
        raise RequestError(
            f"{field}: Expected an array of numeric images (channels, H, W) or (H, W) per "
            f"sample. Got {name!r}, of {np.dtype(array.dtype)} samples of shape "
            f"{tuple(array.shape[1:])}, instead."
        ) from None


def _bounded(augmentation: data_node_pb2.Augmentation, name: str) -> Any:
    low, high, unit = BOUNDS[name]
    value = getattr(augmentation, name)
    if not low <= value <= high:  # NaN fails too
        kind = "an integer" if isinstance(low, int) else "a number"
        raise RequestError(
            f"augmentation.{name}: Expected {kind} in [{low:g}, {high:g}] ({unit}). "
            f"Got {value!r} instead."
        )
    # + 0.0 makes -0.0 the 0.0 it means, for the fingerprint.
    return value if isinstance(low, int) else value + 0.0


def _zoom(values: list[float]) -> tuple[float, float]:
    """The (low, high) zoom factors of one value z (1 - z, 1 + z) or of a pair."""
    if len(values) > 2:
        raise RequestError(
            f"augmentation.zoom_range: Expected one value or two (lo, hi). Got {len(values)}."
        )
    if not values:
        return 1.0, 1.0
    if len(values) == 1:
        spread = values[0]
        if not 0 <= spread <= 1 - MIN_ZOOM:
            raise RequestError(
                f"augmentation.zoom_range: Expected one value z in [0, {1 - MIN_ZOOM:g}] (zoom "
                f"factors in [1 - z, 1 + z], at least 1/{1 / MIN_ZOOM:g}). Got {spread!r} instead."
            )
        return 1.0 - spread, 1.0 + spread
    low, high = values
    if not MIN_ZOOM <= low <= high <= MAX_ZOOM:
        raise RequestError(
            f"augmentation.zoom_range: Expected a pair (lo, hi) with {MIN_ZOOM:g} <= lo <= hi "
            f"<= {MAX_ZOOM:g} (zoom factors). Got ({low!r}, {high!r}) instead."
        )
    return low + 0.0, high + 0.0


def _fill_mode(value: str) -> str:
    return choice("augmentation.fill_mode", value, FILL_MODES)


def _crop(values: list[int], image: tuple[int, ...]) -> tuple[int, int] | None:
    if not values:
        return None
    _, rows, cols = image
    if len(values) != 2 or not (1 <= values[0] <= rows and 1 <= values[1] <= cols):
        raise RequestError(
            f"augmentation.crop_size: Expected (h, w) with 1 <= h <= {rows} and "
            f"1 <= w <= {cols} (crops are taken inside the image, without padding). "
            f"Got {values[:3]}{'...' if len(values) > 3 else ''} instead."
        )
    return values[0], values[1]


def _order(augmentation: data_node_pb2.Augmentation, name: str) -> int:
    if not augmentation.HasField(name):
        return int(getattr(_DEFAULTS, name))
    value = getattr(augmentation, name)
    if value not in ORDERS:
        raise RequestError(
            f"augmentation.{name}: Expected one of {list(ORDERS)} (0 nearest, 1 bilinear, "
            f"3 bicubic). Got {value} instead."
        )
    return int(value)


def _meaning(options: Mapping[str, Any], x_array: str, y_array: str | None) -> dict[str, Any]:
    """``options`` with every field that cannot change the output reset to its default."""
    meaning = {**options, "x_array": x_array, "y_array": y_array}
    if options["fill_mode"] != "constant":
        meaning["cval_x"], meaning["cval_y"] = _DEFAULTS.cval_x, _DEFAULTS.cval_y
    if y_array is None:
        meaning["cval_y"], meaning["order_y"] = _DEFAULTS.cval_y, _DEFAULTS.order_y
    if not (options["spline_warp"] and options["warp_sigma"] > 0):
        meaning["spline_warp"] = False
        meaning["warp_sigma"] = _DEFAULTS.warp_sigma
        meaning["warp_grid_size"] = _DEFAULTS.warp_grid_size
    meaning["zoom_range"] = list(options["zoom_range"])
    crop = options["crop_size"]
    meaning["crop_size"] = None if crop is None else list(crop)
    return meaning
