"""The work of one build job: read its inputs, choose the patches, write them locally or on Dask.

This runs inside the job's own process (see ``_worker``); nothing here knows of gRPC.

Local executor: ``data_tools.patches.create_dataset`` itself, so the output is exactly what
that function writes for the same inputs (``max_patches_per_class`` and ``store_masks``
included). A medical image's voxel spacing (SimpleITK's x, y, z order) is kept as the
attribute ``spacing`` of every array written.

Dask executor (formats written by parallel processes, ``PARALLEL_FORMATS``: zarr): the job's process creates every ``class_<v>`` array at its final
size, marked incomplete, scatters the volume to the cluster, and submits one task per block
of whole chunks of one class's output (at most ``dask_task_bytes`` of patches). With
``random_order`` false a block is a run of consecutive pixels of that class, so a task reads
a block of consecutive slices; with it true the block's pixels are a slice of a random
permutation of the class's pixels. Each task cuts its patches with ``patch_generator`` and
writes its own chunks, so tasks never write the same chunk; the arrays are marked complete
once every task succeeded. Ordered output is identical to the local executor's; random output
holds the same patches (and, with ``max_patches_per_class``, the same subset) in another
random order.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from data_node.catalog.datasets import open_source
from data_tools.patches import (
    CONTAINERS,
    ClassPlan,
    as_stack,
    choose_pixels,
    class_counts,
    create_dataset,
    parse_class_mask,
    parse_image,
    parse_slice_axis,
    patch_generator,
    plan_classes,
)
from data_tools.storage import Root, backend, chunk_rows, close_source
from data_tools.storage.sitk import describe_image, image_spacing, read_sitk_image

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    import numpy.typing as npt

    from data_node.config import SourceConfig

__all__ = ["MAX_CLASSES", "ArraySpec", "BuildSpec", "build", "check_output_size", "write_block"]

Counts = dict[int, int]
# Classes one build may write: each is an array, and a line of its job's record.
MAX_CLASSES = 4096


@dataclass(frozen=True)
class ArraySpec:
    """Where a job reads one array: exactly one of ``source``, ``image`` or ``array`` is set.

    Picklable: the job's process opens files itself, confined to their roots again.

    Attributes:
        source: An HDF5, zarr or bcolz array in a file under the data root.
        image: A medical image under ``root``, read with SimpleITK as a (z, y, x) array.
        array: An array of a served dataset (a lazy, picklable view or an ndarray).
        root: The directory ``image`` and the data files its header names must lie in.
    """

    source: SourceConfig | None = None
    image: Path | None = None
    array: Any = None
    root: Root | None = None

    def describe(self) -> tuple[tuple[int, ...], np.dtype[Any] | None]:
        """The array's shape and dtype (None when only a read tells), without reading data.

        Raises:
            ConfinementError: A file (or what it names) lies outside its root.
        """
        if self.image is not None:
            return describe_image(self.image, self._image_root()), None
        array = self.array if self.source is None else open_source(self.source)
        try:
            return tuple(int(n) for n in array.shape), np.dtype(array.dtype)
        finally:
            if self.source is not None:
                close_source(array)  # the node keeps no handle on a job's input

    def spacing(self) -> tuple[float, ...] | None:
        """A medical image's voxel spacing (x, y, z, as SimpleITK reports it); else None."""
        if self.image is None:
            return None
        return image_spacing(self.image, self._image_root())

    def read_sitk(self) -> Any:
        """A medical image as a SimpleITK image, with its geometry; raises as ``describe``."""
        assert self.image is not None
        return read_sitk_image(self.image, self._image_root())

    def read(self) -> npt.NDArray[Any]:
        """The whole array, in memory; raises as ``describe``."""
        if self.image is not None:
            array = backend("sitk").open(self.image, None, self._image_root())
        else:
            array = self.array if self.source is None else open_source(self.source)
        return np.asarray(array[...])

    def _image_root(self) -> Root:
        """The root reads of the image must stay inside."""
        assert self.image is not None
        return self.root or Root(self.image.parent, "image's directory")


@dataclass(frozen=True)
class BuildSpec:
    """One build, checked by the node; the fields are SubmitBuildJobRequest's, resolved.

    Attributes:
        volume: Where the volume is read.
        mask: Where the mask is read; None: every pixel is class 0.
        patchsize: Patch edge, in pixels.
        class_list: Mask values to extract; None: every value.
        random_order: Randomize the order of each class's patches.
        batchsize: Patches per write; the chunk length.
        max_patches_per_class: At most this many patches per class; None: all.
        file_format: A key of ``data_tools.storage.WRITABLE_FORMATS`` (of ``PARALLEL_FORMATS``
            with executor "dask").
        writer_options: Options for the writers (create_dataset's ``kwargs``), from JSON.
        slice_axis: Axis of a 3D volume indexing its slices.
        seed: Seed of every random draw of the build.
        executor: "local" or "dask".
        scheduler_address: The Dask scheduler (executor "dask" only).
        dask_task_bytes: Patch bytes per Dask task, rounded to whole chunks.
        max_output_bytes: Largest planned output (patches x patch bytes), in bytes.
        store_masks: Also store each patch's mask patch (executor "local" only).
    """

    volume: ArraySpec
    mask: ArraySpec | None
    patchsize: int
    class_list: tuple[int, ...] | None
    random_order: bool
    batchsize: int
    max_patches_per_class: int | None
    file_format: str
    writer_options: Mapping[str, Any]
    slice_axis: int
    seed: int
    executor: str
    scheduler_address: str | None = None
    dask_task_bytes: int = 16 << 20
    max_output_bytes: int = 1 << 40
    store_masks: bool = False


def build(
    spec: BuildSpec,
    save_path: Path,
    planned: Callable[[dict[int, ClassPlan]], None],
    progress: Callable[[Counts], None],
) -> Counts:
    """Build the patch dataset of ``spec`` in the directory ``save_path``.

    Args:
        spec: The build.
        save_path: The directory create_dataset writes its container in.
        planned: Called once, before any patch is written, with {class value: ClassPlan}.
        progress: Called as patches are written with {class value: patches written so far}.

    Returns:
        {class value: patches written}, in class order.

    Raises:
        TypeError, ValueError: The data does not fit the request (the message names the
            argument: volume, mask, class_list, writer_options...), or the planned output
            exceeds ``max_output_bytes`` or the free space (checked before any write).
        OSError, data_tools.errors.WriterError: Reading or writing failed.
    """
    image = parse_image("volume", spec.volume.read())
    labels = None if spec.mask is None else parse_class_mask(spec.mask.read(), image.shape)
    counts = class_counts(labels, spec.class_list, image.size)
    if len(counts) > MAX_CLASSES:
        raise ValueError(
            f"class_list: Expected at most {MAX_CLASSES} classes. The mask holds "
            f"{len(counts)} values; choose some with class_list."
        )
    slice_axis = parse_slice_axis(spec.slice_axis, image.ndim)
    rng = np.random.default_rng(spec.seed)

    def checked(plan: dict[int, ClassPlan]) -> None:
        check_output_size(plan, spec.max_output_bytes, save_path)
        planned(plan)

    if spec.executor == "dask":
        stacked = None if labels is None else as_stack(labels, slice_axis)
        cap = spec.max_patches_per_class
        pixels = choose_pixels(stacked, counts, cap, spec.random_order, rng)
        checked(
            plan_classes({value: len(chosen) for value, chosen in pixels.items()}, spec.patchsize)
        )
        stack = as_stack(image, slice_axis)
        return _build_on_dask(spec, stack, pixels, save_path, rng, progress)
    spacing = spec.volume.spacing()
    return create_dataset(
        save_path,
        spec.patchsize,
        image,
        labels,
        class_list=spec.class_list,
        random_order=spec.random_order,
        batchsize=spec.batchsize,
        file_format=spec.file_format,
        kwargs=writer_kwargs(spec.file_format, spec.writer_options),
        slice_axis=slice_axis,
        rng=rng,
        progress=progress,
        planned=checked,
        max_patches_per_class=spec.max_patches_per_class,
        store_masks=spec.store_masks,
        attrs=None if spacing is None else {"spacing": list(spacing)},
    )


def check_output_size(plan: Mapping[int, ClassPlan], max_bytes: int, directory: Path) -> None:
    """Check a build's plan against ``max_bytes`` and the free space, before it writes.

    Args:
        plan: {class value: ClassPlan}, as ``data_tools.patches.plan_classes`` gives it.
        max_bytes: The node's ``jobs.max_output_bytes``.
        directory: A directory on the output's file system.

    Raises:
        ValueError: The plan is larger than either.
    """
    total = sum(each.bytes for each in plan.values())
    patches = sum(each.patches for each in plan.values())
    what = f"{patches} patches make {total} bytes"
    if total > max_bytes:
        raise ValueError(
            f"max_output_bytes: Expected a build of at most {max_bytes} bytes "
            f"(jobs.max_output_bytes). Got a plan where {what} instead; set a smaller "
            "max_patches_per_class, or choose fewer classes."
        )
    free = shutil.disk_usage(directory).free
    if total > free:
        raise ValueError(
            f"output: Expected a build that fits the {free} bytes free under the output "
            f"root. Got a plan where {what} instead."
        )


def writer_kwargs(file_format: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The writers' ``kwargs`` for JSON-decoded ``writer_options``.

    JSON has no tuples: ``chunks`` becomes one. A bcolz ``cparams`` object becomes
    ``bcolz.cparams(**cparams)`` (``StorageBackend.options_from_json``).
    """
    return backend(file_format).options_from_json(options)


def write_block(
    stack: npt.NDArray[Any],
    patchsize: int,
    file_format: str,
    container: str,
    array_name: str,
    start: int,
    pixels: npt.NDArray[np.intp],
) -> int:
    """One Dask task: cut the patches of ``pixels`` and write them at ``start`` of an array.

    Args:
        stack: The volume as (slice, row, column).
        patchsize: Patch edge, in pixels.
        file_format: The container's format, one of ``PARALLEL_FORMATS``.
        container: The container (a zarr store) of the dataset.
        array_name: The array to write, ``class_<v>``.
        start: Output position of the first patch; a multiple of the array's chunk length.
        pixels: Flat indices into ``stack`` of the patch centres, in output order.

    Returns:
        The number of patches written.
    """
    plane = stack.shape[1] * stack.shape[2]
    order = np.argsort(pixels, kind="stable")
    ordered = pixels[order]
    first, last = int(ordered[0]) // plane, int(ordered[-1]) // plane
    slab = stack[first : last + 1]
    selection = np.zeros(slab.shape, dtype=bool)
    selection.reshape(-1)[ordered - first * plane] = True
    block = np.empty((len(pixels), 1, patchsize, patchsize), dtype=np.float32)
    done = 0
    # patch_generator yields the selected pixels in flat order: put each back in its place.
    for patches, _ in patch_generator(patchsize, slab, selection, slice_axis=0).iter_blocks():
        block[order[done : done + len(patches)], 0] = patches
        done += len(patches)
    # A task still running after its job was cancelled (and its directory removed) fails
    # here instead of recreating files.
    backend(file_format).open_rows(container, array_name).store(start, block)
    return len(pixels)


# ---------------------------------------------------------------- Dask


def _build_on_dask(
    spec: BuildSpec,
    stack: npt.NDArray[Any],
    pixels: dict[int, npt.NDArray[np.intp]],
    save_path: Path,
    rng: np.random.Generator,
    progress: Callable[[Counts], None],
) -> Counts:
    import distributed

    order = {v: rng.permutation(p) if spec.random_order else p for v, p in pixels.items()}
    container = str(save_path / CONTAINERS[spec.file_format])
    element = (1, spec.patchsize, spec.patchsize)
    # The layout and defaults of the format's writer, at the final length.
    storage = backend(spec.file_format)
    options = storage.default_options(spec.batchsize, element, None)
    options |= writer_kwargs(spec.file_format, spec.writer_options)
    chunk = spec.batchsize
    for number, (value, chosen) in enumerate(order.items()):
        target = storage.create_sized(
            container,
            f"class_{value}",
            (len(chosen), *element),
            np.dtype(np.float32),
            number > 0,
            options,
        )
        chunk = chunk_rows(target.array) or chunk
    per_task = chunk * max(1, spec.dask_task_bytes // (4 * math.prod(element) * chunk))
    written = dict.fromkeys(order, 0)
    client: Any = distributed.Client(  # type: ignore[no-untyped-call]
        spec.scheduler_address, timeout="30s"
    )
    with client:
        volume = client.scatter(np.ascontiguousarray(stack), broadcast=True)
        tasks = {
            client.submit(
                write_block,
                volume,
                spec.patchsize,
                spec.file_format,
                container,
                f"class_{value}",
                start,
                chosen[start : start + per_task],
                pure=False,
            ): value
            for value, chosen in order.items()
            for start in range(0, len(chosen), per_task)
        }
        for task in distributed.as_completed(tasks):  # type: ignore[no-untyped-call]
            written[tasks[task]] += task.result()
            progress(dict(written))
    for value in order:
        storage.open_rows(container, f"class_{value}").mark(True)
    return written
