"""Preview grids: N samples of a stream, each augmented image beside its original, as a PNG.

A preview streams the first ``num_samples`` samples of an epoch twice with the same seed:
once with the augmentation (what a trainer gets) and once without (the originals; the
order depends on the seed, never on the augmentation, and a sample's augmentation only on
(seed, epoch, sample index), so both streams hold the same samples in the same order).
Each sample becomes a pair of tiles, original then augmented, in a grid of ``columns``
pairs per row. A tile shows the image's first channel in grey, windowed to the original's
minimum and maximum (so an intensity shift shows), with the mask blended over it: pixel
``round((1 - MASK_ALPHA) * grey + MASK_ALPHA * colour)`` where the mask is not 0, the colour
``CLASS_COLOURS[(value - 1) % len(CLASS_COLOURS)]`` of its value, and plain grey elsewhere.
Tiles are enlarged ``scale`` times (nearest neighbour) and laid on a dark background.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from data_client._args import parse_int
from data_client._png import encode_png
from data_client._requests import SEED_LIMIT

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy.typing as npt

    from data_client.client import CaseSelection, DataNodeClient

__all__ = ["BACKGROUND", "CLASS_COLOURS", "MASK_ALPHA", "Preview", "preview", "render_grid"]

CLASS_COLOURS: Final = ((255, 0, 0), (0, 255, 0), (0, 128, 255), (255, 255, 0), (255, 0, 255))
"""Overlay colour of mask value v: ``CLASS_COLOURS[(v - 1) % len(CLASS_COLOURS)]``."""
MASK_ALPHA: Final = 0.5
"""Weight of the overlay colour where the mask is set."""
BACKGROUND: Final = (32, 32, 48)
"""Colour between tiles (never a grey, so it cannot be mistaken for an image pixel)."""
_PAD: Final = 4
_TILE_PIXELS: Final = 128  # the default scale enlarges tiles to about this size


@dataclass(frozen=True)
class Preview:
    """A written preview grid.

    Attributes:
        path: The PNG file.
        indices: The global sample indices shown, in grid order.
        epoch: The epoch they come from.
        seed: The stream's seed (given, or drawn for the preview).
        boxes: For each sample, the (row, column) of the top-left pixel of its original
            tile and of its augmented tile in the PNG.
        scale: How many PNG pixels one sample pixel spans along each side.
    """

    path: Path
    indices: tuple[int, ...]
    epoch: int
    seed: int
    boxes: tuple[tuple[tuple[int, int], tuple[int, int]], ...]
    scale: int


def preview(
    client: DataNodeClient,
    dataset: str,
    path: str | os.PathLike[str],
    num_samples: int = 8,
    *,
    sample_random: bool = False,
    seed: int | None = None,
    epoch: int = 0,
    augmentation: Mapping[str, Any] | None = None,
    cases: CaseSelection | None = None,
    sample_with_replacement: bool = False,
    sample_weights: Sequence[float] | npt.ArrayLike | str | None = None,
    image_array: str | None = None,
    mask_array: str | None = None,
    columns: int = 4,
    scale: int | None = None,
) -> Preview:
    """Write a PNG grid of the first ``num_samples`` samples of an epoch of a stream.

    See ``DataNodeClient.preview``, which calls this with its client.
    """
    num_samples = parse_int("num_samples", num_samples, minimum=1)
    columns = parse_int("columns", columns, minimum=1)
    info = client.describe(dataset)
    names = [array.name for array in info.arrays]
    image_name = image_array or (augmentation or {}).get("x_array") or "image"
    mask_name = (
        mask_array or (augmentation or {}).get("y_array") or ("mask" if "mask" in names else None)
    )
    for argument, array_name in (("image_array", image_name), ("mask_array", mask_name)):
        if array_name is not None and array_name not in names:
            raise ValueError(
                f"Expected {argument} to name an array of {dataset!r} ({names}). "
                f"Got {array_name!r} instead."
            )
    if seed is None:
        seed = secrets.randbelow(SEED_LIMIT)
    request: dict[str, Any] = {
        "sample_random": sample_random,
        "seed": seed,
        "epochs": epoch + 1,
        "start_epoch": epoch,
        "cases": cases,
        "sample_with_replacement": sample_with_replacement,
        "sample_weights": sample_weights,
        "copy": True,
    }
    augmented, indices = _first_batch(
        client, dataset, num_samples, augmentation=augmentation, **request
    )
    original, original_indices = _first_batch(client, dataset, num_samples, **request)
    if not np.array_equal(indices, original_indices):
        raise RuntimeError(
            f"Expected the stream without augmentation to hold the same samples. Got indices "
            f"{original_indices.tolist()} instead of {indices.tolist()}."
        )
    image = names.index(image_name)
    mask = None if mask_name is None else names.index(mask_name)
    pairs = [
        (
            (original[image][k], None if mask is None else original[mask][k]),
            (augmented[image][k], None if mask is None else augmented[mask][k]),
        )
        for k in range(len(indices))
    ]
    if scale is None:
        side = max(max(tile[0].shape[-2:]) for pair in pairs for tile in pair)
        scale = max(1, _TILE_PIXELS // side)
    grid, boxes = render_grid(pairs, columns=columns, scale=parse_int("scale", scale, minimum=1))
    target = Path(path)
    _write_atomically(target, encode_png(grid))
    return Preview(target, tuple(int(i) for i in indices), epoch, seed, boxes, scale)


def render_grid(
    pairs: Sequence[tuple[tuple[npt.NDArray[Any], npt.NDArray[Any] | None], ...]],
    *,
    columns: int,
    scale: int,
) -> tuple[npt.NDArray[np.uint8], tuple[tuple[tuple[int, int], tuple[int, int]], ...]]:
    """The (H, W, 3) uint8 grid of ``pairs`` and the top-left pixel of every tile.

    Args:
        pairs: Per sample, ((original image, its mask or None), (augmented image, its mask
            or None)); an image is (H, W) or (C, H, W) (its first channel is shown), a mask
            (H, W) or (1, H, W). Both tiles use the original image's window.
        columns: Pairs per row, >= 1.
        scale: Enlargement factor, >= 1.
    """
    tiles = []
    for (image, mask), (augmented, augmented_mask) in pairs:
        low, high = _window(image)
        tiles.append(
            (
                _tile(image, mask, low, high, scale),
                _tile(augmented, augmented_mask, low, high, scale),
            )
        )
    height = max(tile.shape[0] for pair in tiles for tile in pair)
    width = max(tile.shape[1] for pair in tiles for tile in pair)
    rows = -(-len(tiles) // columns)
    used = min(columns, len(tiles))
    pair_width = 2 * width + 3 * _PAD
    grid = np.empty((_PAD + rows * (height + _PAD), _PAD + used * pair_width, 3), np.uint8)
    grid[...] = BACKGROUND
    boxes = []
    for k, pair in enumerate(tiles):
        top = _PAD + (k // columns) * (height + _PAD)
        left = _PAD + (k % columns) * pair_width
        corners = ((top, left), (top, left + width + _PAD))
        for (row, column), tile in zip(corners, pair, strict=True):
            grid[row : row + tile.shape[0], column : column + tile.shape[1]] = tile
        boxes.append(corners)
    return grid, tuple(boxes)


def _window(image: npt.NDArray[Any]) -> tuple[float, float]:
    values = _plane(image).astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return low, (high if high > low else low + 1.0)


def _tile(
    image: npt.NDArray[Any], mask: npt.NDArray[Any] | None, low: float, high: float, scale: int
) -> npt.NDArray[np.uint8]:
    scaled = (np.nan_to_num(_plane(image).astype(np.float64), nan=low) - low) / (high - low)
    grey = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0)
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=2)
    if mask is not None:
        labels = np.rint(np.nan_to_num(_plane(mask).astype(np.float64))).astype(np.int64)
        for value in np.unique(labels[labels != 0]):
            colour = np.array(CLASS_COLOURS[(int(value) - 1) % len(CLASS_COLOURS)], np.float64)
            where = labels == value
            rgb[where] = np.rint((1.0 - MASK_ALPHA) * rgb[where] + MASK_ALPHA * colour)
    tile = rgb.astype(np.uint8)
    return np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)


def _plane(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The (H, W) plane shown of an (H, W) or (C, H, W) sample."""
    array = np.asarray(array)
    if array.ndim == 2:
        return array
    if array.ndim == 3:
        plane: npt.NDArray[Any] = array[0]
        return plane
    raise ValueError(
        f"Expected samples of shape (H, W) or (C, H, W) to preview. Got {array.shape} instead."
    )


def _first_batch(
    client: DataNodeClient, dataset: str, num_samples: int, **request: Any
) -> tuple[tuple[npt.NDArray[Any], ...], npt.NDArray[np.int64]]:
    with client.stream(dataset, num_samples, **request) as stream:
        arrays = next(iter(stream))
        assert stream.indices is not None  # set with every batch
        return arrays, stream.indices.copy()


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed over it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
