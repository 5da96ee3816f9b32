"""Patch extraction (patch_generator) and patch-dataset building (create_dataset)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view
from tqdm import tqdm

from data_tools._parse import (
    parse_bool,
    parse_int,
    parse_non_negative_int,
    parse_option,
    parse_path,
    parse_positive_int,
)
from data_tools._patch_plan import (
    LARGE_PLAN_BYTES,
    LARGE_PLAN_RATIO,
    ClassPlan,
    choose_pixels,
    plan_classes,
    warn_if_large,
)
from data_tools.io.writers import format_writer
from data_tools.storage import backend, container_names

if TYPE_CHECKING:
    from collections.abc import Iterator


__all__ = [
    "CONTAINERS",
    "LARGE_PLAN_BYTES",
    "LARGE_PLAN_RATIO",
    "ClassPlan",
    "as_stack",
    "choose_pixels",
    "class_counts",
    "create_dataset",
    "is_dataset_complete",
    "parse_class_mask",
    "parse_image",
    "parse_slice_axis",
    "patch_generator",
    "plan_classes",
]

FloatPatches: TypeAlias = npt.NDArray[np.float32]
Coordinates: TypeAlias = npt.NDArray[np.intp]

# Float32 elements gathered per block by default (16 MiB): large enough that numpy, not
# Python, does the work, small enough that a block never dominates memory.
_BLOCK_ELEMENTS = 1 << 22


def parse_image(name: str, value: Any) -> npt.NDArray[Any]:
    """Return ``value`` as a 2D or 3D ndarray of a real numeric or bool dtype."""
    array = np.asarray(value)
    if array.dtype != np.bool_ and (
        not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating)
    ):
        raise TypeError(
            f"Expected {name} to hold real numbers or bools. Got dtype {array.dtype} instead."
        )
    if array.ndim not in (2, 3):
        raise ValueError(
            f"Expected {name} to be a 2D slice or a 3D volume. "
            f"Got an array of shape {array.shape} instead."
        )
    return array


def parse_slice_axis(value: Any, ndim: int) -> int:
    """Return ``slice_axis`` normalized to 0..ndim-1 (any int is accepted for 2D sources)."""
    axis = parse_int("slice_axis", value)
    if ndim == 2:
        return axis
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"Expected slice_axis to be an axis of the 3D source, in [-3, 2]. Got {axis} instead."
        )
    return axis % ndim


def as_stack(array: npt.NDArray[Any], slice_axis: int) -> npt.NDArray[Any]:
    """View ``array`` as (slice, row, column): slices first, one slice for 2D."""
    return array[np.newaxis] if array.ndim == 2 else np.moveaxis(array, slice_axis, 0)


def _parse_rng(value: Any) -> np.random.Generator:
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"Expected rng to be None, a seed or a numpy Generator. Got {value!r}.")
    try:
        return np.random.default_rng(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"Expected rng to be None, a seed or a numpy Generator. Got {value!r} instead."
        ) from error


class patch_generator:
    """Iterate over square 2D float32 patches centred on the (masked) pixels of an image.

    A 2D ``source`` is one slice; a 3D ``source`` is a stack of slices along
    ``slice_axis``, and patches are taken in the plane of each slice (never across
    slices). Iterating yields one ``(patchsize, patchsize)`` float32 array per selected
    pixel, the patch centred on that pixel.

    Centre: the centre pixel sits at index ``patchsize // 2`` of the patch along both
    axes. For an odd ``patchsize`` the patch is exactly centred; for an even one it
    reaches one pixel further up/left than down/right (``patchsize // 2`` pixels before
    the centre, ``patchsize // 2 - 1`` after).

    Edges: with ``mirrored=True`` the slice is extended by mirroring it about its border,
    the edge pixel repeated (numpy's ``np.pad(mode="symmetric")``, scipy.ndimage's
    ``"reflect"``: row ``-1`` is row ``0``, row ``-2`` is row ``1``). The mirroring
    repeats, so a patch larger than the slice is allowed. With ``mirrored=False``
    everything outside the slice reads as 0.

    Order: by default slices in increasing index, then pixels in row-major order within a
    slice; with ``random_order=True``, a uniformly random order over all selected pixels of
    the whole volume (a fresh order, drawn from ``rng``, on every iteration). ``max_num``
    keeps the first ``max_num`` patches of that order (so a random subset when random).

    Memory: ``source`` and ``binary_mask`` are read into memory with ``np.asarray``
    (h5py datasets, zarr arrays and views are read whole). Ordered iteration pads one
    slice at a time; random iteration pads the whole volume once, as float32. Patches are
    gathered in vectorized blocks (:meth:`iter_blocks`); the patches yielded one by one are
    views into those blocks, so they do not alias the source or each other.

    Args:
        patchsize: Edge length of the square patches, in pixels; an int >= 1.
        source: The 2D slice or 3D volume, any array-like of real numbers or bools.
        binary_mask: Optional array of the same shape as ``source``; patches are centred
            only on pixels where it is true (nonzero). Default None: every pixel.
        random_order: Randomize the order of the patches. Default False.
        mirrored: Mirror the slice at its edges; else zero-pad. Default True.
        max_num: Optional int >= 0: stop after this many patches. Default None: all.
        slice_axis: Keyword-only. Which axis of a 3D ``source`` indexes the slices, in
            [-3, 2]. Default -1 (a stack of 2D images along the last axis). Ignored for a
            2D ``source``.
        rng: Keyword-only. The random source for ``random_order``: None (fresh entropy),
            an int seed, or anything else ``numpy.random.default_rng`` accepts (a
            ``Generator`` is used as is, so its state advances). Default None.

    Raises:
        TypeError: If ``patchsize``, ``max_num`` or ``slice_axis`` is not an int,
            ``random_order`` or ``mirrored`` is not a bool, ``source`` does not hold real
            numbers or bools, or ``rng`` is not accepted by ``numpy.random.default_rng``.
        ValueError: If ``patchsize`` < 1, ``max_num`` < 0, ``source`` is not 2D or 3D,
            ``binary_mask`` has a different shape than ``source``, or ``slice_axis`` is
            not an axis of a 3D ``source``.
    """

    def __init__(
        self,
        patchsize: int,
        source: Any,
        binary_mask: Any = None,
        random_order: bool = False,
        mirrored: bool = True,
        max_num: int | None = None,
        *,
        slice_axis: int = -1,
        rng: Any = None,
    ) -> None:
        self.patchsize = parse_positive_int("patchsize", patchsize)
        self.source = parse_image("source", source)
        self.random_order = parse_bool("random_order", random_order)
        self.mirrored = parse_bool("mirrored", mirrored)
        self.max_num = None if max_num is None else parse_non_negative_int("max_num", max_num)
        self.slice_axis = parse_slice_axis(slice_axis, self.source.ndim)
        self._rng = _parse_rng(rng)
        self._stack = self._as_stack(self.source)
        self._mask = None if binary_mask is None else self._as_stack(self._parse_mask(binary_mask))
        available = self._stack.size if self._mask is None else int(np.count_nonzero(self._mask))
        self._len = available if self.max_num is None else min(available, self.max_num)

    def _parse_mask(self, binary_mask: Any) -> npt.NDArray[np.bool_]:
        mask = np.asarray(binary_mask)
        if mask.shape != self.source.shape:
            raise ValueError(
                f"Expected binary_mask to have the shape of source, {self.source.shape}. "
                f"Got shape {mask.shape} instead."
            )
        return mask.astype(bool, copy=False)

    def _as_stack(self, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return as_stack(array, self.slice_axis)

    def __len__(self) -> int:
        """The number of patches one iteration yields."""
        return self._len

    def __iter__(self) -> Iterator[FloatPatches]:
        for patches, _ in self.iter_blocks():
            yield from patches

    def iter_blocks(
        self, block_size: int | None = None
    ) -> Iterator[tuple[FloatPatches, Coordinates]]:
        """Yield the patches of one iteration in blocks, with their centre coordinates.

        The concatenated blocks are exactly the patches iteration yields, in the same
        order (one iteration's worth: with ``random_order`` each call draws a new order).

        Args:
            block_size: Most patches per block; an int >= 1. Default None: about 16 MiB
                of float32 per block.

        Yields:
            ``(patches, centres)``: ``patches`` a C-contiguous float32 array of shape
            ``(n, patchsize, patchsize)``; ``centres`` an intp array of shape
            ``(n, source.ndim)`` holding each patch's centre as an index into ``source``
            in its own axis order, so ``source[tuple(centres[i])]`` is the centre pixel.

        Raises:
            TypeError, ValueError: If ``block_size`` is not an int >= 1.
        """
        if block_size is None:
            block_size = max(1, _BLOCK_ELEMENTS // self.patchsize**2)
        block_size = parse_positive_int("block_size", block_size)
        if self._len == 0:
            return
        groups = self._random_groups() if self.random_order else self._ordered_groups()
        for first_slice, padded, centres in groups:
            windows = sliding_window_view(padded, (self.patchsize,) * 2, axis=(1, 2))
            for start in range(0, len(centres), block_size):
                block = centres[start : start + block_size]
                patches = windows[block[:, 0] - first_slice, block[:, 1], block[:, 2]]
                yield patches, self._source_coordinates(block)

    def _ordered_groups(self) -> Iterator[tuple[int, FloatPatches, Coordinates]]:
        """Per slice: (its index, the padded slice as a 1-stack, its centres in order)."""
        remaining = self._len
        for index in range(self._stack.shape[0]):
            if remaining == 0:
                return
            if self._mask is None:
                rows, cols = np.indices(self._stack.shape[1:]).reshape(2, -1)
            else:
                rows, cols = np.nonzero(self._mask[index])
            rows, cols = rows[:remaining], cols[:remaining]
            if len(rows):
                remaining -= len(rows)
                centres = np.stack([np.full_like(rows, index), rows, cols], axis=1)
                centres = centres.astype(np.intp, copy=False)
                yield index, self._pad(self._stack[index : index + 1]), centres

    def _random_groups(self) -> Iterator[tuple[int, FloatPatches, Coordinates]]:
        """One group: (0, the whole padded stack, a random selection of its centres)."""
        available = self._stack.size if self._mask is None else np.flatnonzero(self._mask)
        picks = self._rng.choice(available, size=self._len, replace=False, shuffle=True)
        centres = np.stack(np.unravel_index(picks, self._stack.shape), axis=1).astype(np.intp)
        yield 0, self._pad(self._stack), centres

    def _pad(self, stack: npt.NDArray[Any], dtype: npt.DTypeLike = np.float32) -> npt.NDArray[Any]:
        """Return ``stack`` as ``dtype``, padded in-plane so each pixel has a full patch."""
        before = self.patchsize // 2
        widths = (
            (0, 0),
            (before, self.patchsize - 1 - before),
            (before, self.patchsize - 1 - before),
        )
        mode: Literal["symmetric", "constant"] = "symmetric" if self.mirrored else "constant"
        return np.pad(stack.astype(dtype, copy=False), widths, mode=mode)

    def cutter(self, array: Any, dtype: npt.DTypeLike) -> Callable[[Coordinates], npt.NDArray[Any]]:
        """A function cutting patches of ``array`` at centres, as this generator cuts source.

        ``array`` (of source's shape) is read and padded once, as ``dtype``, with this
        generator's edges; the function returned takes centres as :meth:`iter_blocks`
        yields them and returns their ``(n, patchsize, patchsize)`` patches of ``array``:
        the mask patch of every image patch, say.

        Raises:
            ValueError: If ``array``'s shape differs from source's.
        """
        values = np.asarray(array)
        if values.shape != self.source.shape:
            raise ValueError(
                f"Expected an array of source's shape, {self.source.shape}. "
                f"Got shape {values.shape} instead."
            )
        padded = self._pad(self._as_stack(values), dtype)
        windows = sliding_window_view(padded, (self.patchsize,) * 2, axis=(1, 2))
        if self.source.ndim == 2:
            return lambda centres: windows[0, centres[:, 0], centres[:, 1]]
        axis, (row, col) = self.slice_axis, (a for a in range(3) if a != self.slice_axis)
        return lambda centres: windows[centres[:, axis], centres[:, row], centres[:, col]]

    def _source_coordinates(self, centres: Coordinates) -> Coordinates:
        """Map (slice, row, column) centres to indices in ``source``'s axis order."""
        if self.source.ndim == 2:
            return centres[:, 1:]
        columns = [1, 2]
        columns.insert(self.slice_axis, 0)
        return centres[:, columns]


# file_format -> the container create_dataset writes inside save_path.
CONTAINERS = container_names("patches")


def parse_class_mask(mask: Any, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """Return ``mask`` as an array of ``shape`` holding integer class values."""
    array = np.asarray(mask)
    if array.shape != shape:
        raise ValueError(
            f"Expected mask to have the shape of volume, {shape}. Got shape {array.shape} instead."
        )
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"Expected mask to hold integer class values (an integer, bool or float dtype). "
            f"Got dtype {array.dtype} instead."
        )
    if not np.all(np.isfinite(array) & (array == np.round(array))):
        raise ValueError(
            "Expected mask to hold integer class values. Got non-integral floats instead."
        )
    return array


def class_counts(mask: npt.NDArray[Any] | None, class_list: Any, size: int) -> dict[int, int]:
    """Return {class value: number of its pixels}, in class_list order (else ascending)."""
    if mask is None:
        if class_list is not None:
            raise ValueError(
                f"Expected class_list to be None when mask is None (every pixel is class 0). "
                f"Got {class_list!r} instead."
            )
        return {0: size}
    values, counts = np.unique(mask, return_counts=True)
    present = {int(value): int(count) for value, count in zip(values, counts, strict=True)}
    if class_list is None:
        return present
    if not isinstance(class_list, Sequence | np.ndarray) or isinstance(class_list, str | bytes):
        raise TypeError(
            f"Expected class_list to be None or a sequence of mask values. "
            f"Got {class_list!r} instead."
        )
    classes = [parse_int(f"class_list[{i}]", value) for i, value in enumerate(class_list)]
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(
            f"Expected class_list to hold at least one value, each once. Got {classes} instead."
        )
    absent = [value for value in classes if value not in present]
    if absent:
        raise ValueError(
            f"Expected class_list to hold values present in mask ({sorted(present)}). "
            f"Got absent values {absent} instead."
        )
    return {value: present[value] for value in classes}


def _mask_patch_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """Mask patches hold integers: bools as uint8, integral floats as int32."""
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    return dtype if np.issubdtype(dtype, np.integer) else np.dtype(np.int32)


def create_dataset(
    save_path: str | os.PathLike[str],
    patchsize: int,
    volume: Any,
    mask: Any = None,
    class_list: Sequence[int] | None = None,
    random_order: bool = True,
    batchsize: int = 32,
    file_format: str = "hdf5",
    kwargs: Mapping[str, Any] | None = None,
    show_progress: bool = False,
    *,
    slice_axis: int = -1,
    rng: Any = None,
    progress: Callable[[dict[int, int]], None] | None = None,
    planned: Callable[[dict[int, ClassPlan]], None] | None = None,
    max_patches_per_class: int | None = None,
    store_masks: bool = False,
    attrs: Mapping[str, Any] | None = None,
) -> dict[int, int]:
    """Extract patches around every pixel of a volume and save them, one array per class.

    Each pixel's class is its mask value; every pixel of a class listed in ``class_list``
    (all pixels of every class when it is None) gives one patch, as ``patch_generator``
    cuts it (mirrored edges, centre at index ``patchsize // 2``, slices along
    ``slice_axis``). The patches of class ``v`` are stored as a float32 array named
    ``class_<v>`` (``v`` the integer mask value, e.g. ``class_0``, ``class_-1``) of shape
    ``(n_v, 1, patchsize, patchsize)``: axis 1 is a channel axis of length 1.

    With ``store_masks`` each class also gets an array ``mask_<v>`` of the same shape: the
    patch of ``mask`` cut at the same centre with the same edges (``mask_<v>[i]`` belongs to
    ``class_<v>[i]``), in the mask's integer dtype (bools as uint8, integral floats as
    int32), ready for segmentation training.

    On-disk layout, by ``file_format``, inside the directory ``save_path`` (created if
    missing; nothing else in it is touched):

    - ``"hdf5"``: one HDF5 file ``save_path/patches.h5`` holding the datasets
      ``/class_<v>`` (lzf, chunks of ``batchsize`` patches, unless ``kwargs`` say else);
    - ``"zarr"``: one zarr v3 store (a group) ``save_path/patches.zarr`` holding the arrays
      ``class_<v>`` (blosc lz4, chunks of ``batchsize`` patches);
    - ``"bcolz"``: one directory ``save_path/patches.bcolz`` holding one bcolz carray
      directory per class, ``save_path/patches.bcolz/class_<v>``.

    An existing container of the same format is replaced, classes and all.

    Completion: every array carries the ``data_tools_complete`` attribute of
    ``data_tools.io.writers``. All class arrays are created, marked incomplete, before any
    patch is written, and are marked complete only after every patch of every class was
    written, so a build that fails or is killed never leaves a container whose arrays are
    all marked complete. Check with :func:`is_dataset_complete` (``save_path``,
    ``file_format``) before reading.

    Order: with ``random_order`` the patches of each class are in a uniformly random
    order; otherwise in ``patch_generator``'s order (slices, then row-major).

    Size: before writing, the plan (:class:`ClassPlan` per class: patches and bytes before
    compression) goes to ``planned``, and a ``UserWarning`` says so when it takes at least
    ``LARGE_PLAN_BYTES`` and ``LARGE_PLAN_RATIO`` times the input's bytes.

    Args:
        save_path: The directory to write the container in.
        patchsize: Edge length of the square patches, in pixels; an int >= 1.
        volume: A 2D slice or a 3D stack of slices (real numbers or bools), read into
            memory.
        mask: Optional array of volume's shape holding each pixel's class as an integer
            value (an integer, bool or integral float dtype; not binary). Default None:
            every pixel is class 0.
        class_list: Optional sequence of distinct mask values (ints) to extract, each
            present in ``mask``; requires ``mask``. Default None: every value in ``mask``.
        random_order: Randomize the order of each class's patches. Default True.
        batchsize: Patches per write to disk (>= 1); also the chunk length. Default 32.
        file_format: ``"hdf5"`` (default), ``"zarr"`` or ``"bcolz"``.
        kwargs: Arguments passed to each array writer (``h5py_array_writer``,
            ``zarr_array_writer`` or ``bcolz_array_writer``) as its ``kwargs``: options of
            the dataset/array/carray creation (compression, chunks, ...). Default None, i.e.
            ``{}``. Never modified.
        show_progress: Draw a tqdm progress bar on stderr, counting patches. Default False.
        slice_axis: Keyword-only. The axis of a 3D ``volume`` that indexes slices, in
            [-3, 2]. Default -1. Ignored for a 2D volume. A medical image read with
            SimpleITK is a (z, y, x) array: ``slice_axis=0`` cuts its axial slices.
        rng: Keyword-only. Random source for ``random_order`` and the
            ``max_patches_per_class`` subset: None, an int seed, or a
            ``numpy.random.Generator``. Default None.
        progress: Keyword-only. Called after each block of patches is handed to the writers
            with ``{class value: patches written so far}`` (every class, in the order of the
            returned dict; a fresh dict each call). An exception it raises aborts the build
            like any other failure. Default None.
        planned: Keyword-only. Called once, before anything is written, with
            ``{class value: ClassPlan(patches, bytes)}``. Default None.
        max_patches_per_class: Keyword-only. Keep at most this many patches (>= 1) per
            class: the first ones in order, or with ``random_order`` a random subset drawn
            from ``rng``. Default None: all.
        store_masks: Keyword-only. Also store each patch's mask patch (``mask_<v>``);
            needs ``mask``. Default False.
        attrs: Keyword-only. Attributes set on every array written (values: numbers,
            strings or lists of numbers), e.g. the volume's voxel spacing. Default None.

    Returns:
        ``{class value: number of patches written}``, in ``class_list`` order (ascending
        mask values when ``class_list`` is None; ``{0: volume.size}`` without a mask).

    Raises:
        TypeError: If ``save_path`` is not a path, ``patchsize``, ``batchsize``,
            ``slice_axis``, ``max_patches_per_class`` or a ``class_list`` value is not an
            int, ``class_list`` is not a sequence, ``random_order``, ``store_masks`` or
            ``show_progress`` is not a bool, ``kwargs`` or ``attrs`` is not a mapping,
            ``progress`` or ``planned`` is neither None nor callable, ``volume`` or ``mask``
            has an unsupported dtype, or ``rng`` is not accepted by
            ``numpy.random.default_rng``.
        ValueError: If ``patchsize``, ``batchsize`` or ``max_patches_per_class`` < 1,
            ``file_format`` is unknown (with a did-you-mean hint), ``volume`` is not 2D or
            3D or has no pixel, ``mask``'s shape differs from ``volume``'s or it holds
            non-integral values, ``class_list`` is given without ``mask``, is empty, repeats
            a value or names a value absent from ``mask``, ``store_masks`` is set without
            ``mask``, ``slice_axis`` is not an axis of ``volume``, or ``kwargs`` sets a key
            the writer sets itself.
        OSError: If ``save_path`` cannot be created or written.
        data_tools.errors.WriterError: If writing an array fails.
    """
    directory = parse_path("save_path", save_path)
    file_format = parse_option("file_format", file_format, CONTAINERS)
    batch_size = parse_positive_int("batchsize", batchsize)
    options = dict(_parse_mapping("kwargs", kwargs))
    extra_attrs = dict(_parse_mapping("attrs", attrs))
    show_bar = parse_bool("show_progress", show_progress)
    shuffle = parse_bool("random_order", random_order)
    with_masks = parse_bool("store_masks", store_masks)
    cap = None
    if max_patches_per_class is not None:
        cap = parse_positive_int("max_patches_per_class", max_patches_per_class)
    for name, callback in (("progress", progress), ("planned", planned)):
        if callback is not None and not callable(callback):
            raise TypeError(f"Expected {name} to be None or a callable. Got {callback!r} instead.")
    generator_rng = _parse_rng(rng)
    image = parse_image("volume", volume)
    if image.size == 0:
        raise ValueError(
            f"Expected volume to have at least one pixel. Got shape {image.shape} instead."
        )
    labels = None if mask is None else parse_class_mask(mask, image.shape)
    if with_masks and labels is None:
        raise ValueError(
            "Expected a mask with store_masks=True (the mask patches are cut from it). "
            "Got mask=None instead."
        )
    counts = class_counts(labels, class_list, image.size)
    axis = parse_slice_axis(slice_axis, image.ndim)
    selection = None if labels is None or class_list is None else np.isin(labels, list(counts))
    if cap is not None and any(count > cap for count in counts.values()):
        stacked = None if labels is None else as_stack(labels, axis)
        kept = choose_pixels(stacked, counts, cap, shuffle, generator_rng)
        picked = np.zeros(as_stack(image, axis).shape, dtype=bool)
        for pixels in kept.values():
            picked.reshape(-1)[pixels] = True
        selection = picked[0] if image.ndim == 2 else np.moveaxis(picked, 0, axis)
        counts = {value: len(pixels) for value, pixels in kept.items()}
    generator = patch_generator(
        patchsize, image, selection, shuffle, slice_axis=axis, rng=generator_rng
    )
    mask_dtype = None if labels is None or not with_masks else _mask_patch_dtype(labels.dtype)
    plan = plan_classes(counts, generator.patchsize, mask_dtype)
    warn_if_large(plan, image.nbytes + (0 if labels is None else labels.nbytes))
    if planned is not None:
        planned(dict(plan))

    container = os.path.join(directory, CONTAINERS[file_format])
    os.makedirs(directory, exist_ok=True)
    backend(file_format).new_container(container)
    element_shape = (1, generator.patchsize, generator.patchsize)
    arrays = [(f"class_{value}", np.dtype(np.float32), value) for value in counts]
    if mask_dtype is not None:
        arrays += [(f"mask_{value}", mask_dtype, value) for value in counts]
    with ExitStack() as stack:
        # Every array exists, marked incomplete, before the first is marked complete.
        writers = [
            stack.enter_context(
                # The first one replaces an HDF5 file or zarr store.
                format_writer(
                    file_format,
                    container,
                    name,
                    element_shape,
                    dtype,
                    batch_size,
                    counts[value],
                    i > 0,
                    options,
                )
            )
            for i, (name, dtype, value) in enumerate(arrays)
        ]
        for writer in writers:
            for key, attribute in extra_attrs.items():
                writer.storage_array.attrs[key] = attribute
        patch_writers = dict(zip(counts, writers, strict=False))
        mask_writers = dict(zip(counts, writers[len(counts) :], strict=False))
        cut_masks = None if mask_dtype is None else generator.cutter(labels, mask_dtype)
        bar = stack.enter_context(tqdm(total=len(generator), disable=not show_bar, unit="patch"))
        written = dict.fromkeys(counts, 0)
        for patches, centres in generator.iter_blocks():
            classes = None if labels is None else labels[tuple(centres.T)]
            mask_patches = None if cut_masks is None else cut_masks(centres)
            for value, writer in patch_writers.items():
                member = slice(None) if classes is None else classes == value
                chosen = patches[member]
                if len(chosen):
                    writer.buffered_write(chosen[:, np.newaxis])
                    written[value] += len(chosen)
                    if mask_patches is not None:
                        mask_writers[value].buffered_write(mask_patches[member][:, np.newaxis])
            bar.update(len(patches))
            if progress is not None:
                progress(dict(written))
    return counts


def _parse_mapping(name: str, value: Any) -> Mapping[str, Any]:
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"Expected {name} to be a dict or None. Got {value!r} instead.")
    return value or {}


def is_dataset_complete(save_path: str | os.PathLike[str], file_format: str = "hdf5") -> bool:
    """Whether ``create_dataset`` finished the dataset of ``file_format`` in ``save_path``.

    Args:
        save_path: The directory given to ``create_dataset``.
        file_format: ``"hdf5"`` (default), ``"zarr"`` or ``"bcolz"``.

    Returns:
        True when the container exists, holds at least one ``class_<v>`` array, and every
        array in it is marked complete; else False.

    Raises:
        TypeError: If ``save_path`` is not a path.
        ValueError: If ``file_format`` is unknown.
    """
    directory = parse_path("save_path", save_path)
    file_format = parse_option("file_format", file_format, CONTAINERS)
    container = os.path.join(directory, CONTAINERS[file_format])
    return backend(file_format).is_container_complete(container)
