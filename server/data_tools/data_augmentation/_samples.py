"""Augment every sample of a batch with its own draw, keyed by (seed, epoch, global index)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from data_tools._parse import parse_non_negative_int

if TYPE_CHECKING:
    from collections.abc import Sequence

    from data_tools.data_augmentation._params import AugmentationSpec

__all__ = ["SampleAugmentation", "image_samples"]

Array = npt.NDArray[Any]
IMAGE_NDIMS = (3, 4)  # a batch of (H, W) or of (channels, H, W) samples


def image_samples(
    name: str, shape: Sequence[int], dtype: npt.DTypeLike | None = None
) -> tuple[int, ...]:
    """The (channels, H, W) of each sample of an array ``SampleAugmentation`` transforms.

    Args:
        name: What messages call the array.
        shape: The array's shape, samples first: (n, channels, H, W), or (n, H, W) (each
            sample one channel).
        dtype: The array's dtype, when known; default None: not checked.

    Raises:
        ValueError: ``shape`` is neither, or a sample has an empty axis.
        TypeError: ``dtype`` is not bool, integer or real.
    """
    shape = tuple(int(size) for size in shape)
    if len(shape) not in IMAGE_NDIMS or 0 in shape[1:]:
        raise ValueError(
            f"Expected {name} to be a batch of images (n, channels, H, W) or (n, H, W), with "
            f"no empty axis in a sample. Got shape {shape} instead."
        )
    if dtype is not None and np.dtype(dtype).kind not in "biuf":
        raise TypeError(
            f"Expected {name} to hold bools, integers or reals. Got dtype {np.dtype(dtype)} "
            "instead."
        )
    return shape[1:] if len(shape) == 4 else (1, *shape[1:])


def _as_image(sample: Array) -> Array:
    """A (channels, H, W) view of one sample: an (H, W) sample is one channel."""
    return sample[np.newaxis] if sample.ndim == 2 else sample


@dataclass(frozen=True)
class SampleAugmentation:
    """Augment each sample of a batch: a ``data_flow`` preprocessor, as the data node runs it.

    Sample ``i`` of epoch ``e`` is transformed by ``spec.draw`` from
    ``np.random.default_rng([seed, e, i])`` (``i`` its global index in the data), then
    ``spec.apply``: the result depends on nothing else, so a stream is bit-identical
    whatever the batch size, worker counts or order of work, and equal to the data node's
    stream with the same seed and augmentation. The spec is parsed once, when it is built;
    each sample only draws and applies. Picklable: worker processes receive it.

    ``batch[x_position]`` is transformed as x and ``batch[y_position]`` (when given) as y,
    with x's geometry: arrays of (channels, H, W) samples, or of (H, W) samples transformed
    as one channel. The other arrays pass through.

    Attributes:
        spec: The augmentation (see ``parse_augmentation_spec``).
        seed: The seed of the flow (pass data_flow's ``seed``), an integer >= 0.
        x_position: Which array of the batch is x. Default 0.
        y_position: Which array is y, or None (no y). Default None.

    Raises:
        TypeError: If seed or a position is not an integer.
        ValueError: If seed or a position is negative, or y_position equals x_position.
    """

    spec: AugmentationSpec
    seed: int
    x_position: int = 0
    y_position: int | None = None

    def __post_init__(self) -> None:
        parse_non_negative_int("seed", self.seed)
        parse_non_negative_int("x_position", self.x_position)
        if self.y_position is not None:
            parse_non_negative_int("y_position", self.y_position)
            if self.y_position == self.x_position:
                raise ValueError(
                    f"Expected y_position to name another array than x_position "
                    f"({self.x_position}). Got {self.y_position} instead."
                )

    def output_shapes(self, shapes: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """The shape of each output array for a batch of arrays of ``shapes``.

        x and y take the crop's (h, w) as their last two axes; the others keep theirs.

        Raises:
            ValueError: If x or y is not a batch of images, their H, W or lengths differ, or
                the crop does not fit (the messages name the position).
        """
        window = self._window(shapes)
        return [
            (*shape[:-2], *window) if position in self._positions else tuple(shape)
            for position, shape in enumerate(shapes)
        ]

    def __call__(
        self,
        batch: Sequence[Array],
        *,
        epoch: int,
        indices: npt.NDArray[np.integer[Any]],
        out: Sequence[Array] | None = None,
    ) -> list[Array]:
        """Augment one batch; its samples are ``indices`` (global) of ``epoch``.

        Args:
            batch: One array per array of the data, each of ``len(indices)`` samples.
            epoch: The batch's epoch.
            indices: The global index of each sample.
            out: Optional arrays to write the outputs into, one per array of ``batch``,
                each of its dtype and of the shape ``output_shapes`` gives (for example
                shared memory). Default None: x and y go into new arrays and the other
                arrays of ``batch`` are returned as they are.

        Returns:
            The outputs, one per array of ``batch``: ``out``'s arrays when given.

        Raises:
            ValueError: If the batch does not hold images where the positions say, or
                ``out`` or ``indices`` does not match it; the message names the position.
            TypeError: If x or y is not numeric.
        """
        arrays = list(batch)
        shapes = self.output_shapes([array.shape for array in arrays])
        if len(indices) != len(arrays[self.x_position]):
            raise ValueError(
                f"Expected indices to hold one index per sample ({len(arrays[self.x_position])})."
                f" Got {len(indices)} instead."
            )
        results = self._outputs(arrays, shapes, out)
        x_all, x_out = arrays[self.x_position], results[self.x_position]
        y_all = None if self.y_position is None else arrays[self.y_position]
        y_out = None if self.y_position is None else results[self.y_position]
        for row, index in enumerate(indices):
            rng = np.random.default_rng([self.seed, epoch, int(index)])
            x = _as_image(x_all[row])
            params = self.spec.draw(rng, x.shape)
            self.spec.apply(
                params,
                x,
                None if y_all is None else _as_image(y_all[row]),
                out=(_as_image(x_out[row]), None if y_out is None else _as_image(y_out[row])),
            )
        return results

    @property
    def _positions(self) -> tuple[int, ...]:
        return (self.x_position,) if self.y_position is None else (self.x_position, self.y_position)

    def _window(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, int]:
        """Check x and y of a batch of ``shapes``; return the (h, w) of their outputs."""
        x_shape = self._image_shape(shapes, self.x_position)
        if self.y_position is not None:
            y_shape = self._image_shape(shapes, self.y_position)
            if y_shape[0] != x_shape[0] or y_shape[-2:] != x_shape[-2:]:
                raise ValueError(
                    f"Expected batch[{self.y_position}] (y) to hold as many samples as x, of "
                    f"x's spatial shape (H, W): {x_shape[0]} of {x_shape[-2:]}. Got shape "
                    f"{y_shape} instead."
                )
        return self.spec.output_shape((x_shape[-2], x_shape[-1]))

    @staticmethod
    def _image_shape(shapes: Sequence[tuple[int, ...]], position: int) -> tuple[int, ...]:
        if position >= len(shapes):
            raise ValueError(
                f"Expected a batch of more than {position} arrays (position {position}). "
                f"Got {len(shapes)} instead."
            )
        shape = tuple(shapes[position])
        image_samples(f"batch[{position}]", shape)
        return shape

    def _outputs(
        self, arrays: list[Array], shapes: list[tuple[int, ...]], out: Sequence[Array] | None
    ) -> list[Array]:
        """The output arrays: ``out`` (checked, the pass-through arrays copied in) or new."""
        for position in self._positions:
            image_samples(f"batch[{position}]", arrays[position].shape, arrays[position].dtype)
        if out is None:
            results = list(arrays)
            for position in self._positions:
                results[position] = np.empty(shapes[position], dtype=arrays[position].dtype)
            return results
        if len(out) != len(arrays):
            raise ValueError(
                f"Expected out to hold one array per array of the batch ({len(arrays)}). "
                f"Got {len(out)} instead."
            )
        for position, (array, target) in enumerate(zip(arrays, out, strict=True)):
            shape = shapes[position]
            if target.shape != shape or target.dtype != array.dtype:
                raise ValueError(
                    f"Expected out[{position}] of shape {shape} and dtype {array.dtype}. "
                    f"Got {target.shape} and {target.dtype} instead."
                )
            if position not in self._positions:
                np.copyto(target, array)
        return list(out)
