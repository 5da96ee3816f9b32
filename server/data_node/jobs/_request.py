"""Check a SubmitBuildJobRequest field by field, reading only the inputs' headers."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_node.config import EXECUTORS, SOURCE_FORMATS, SourceConfig, resolve_inside
from data_node.errors import (
    DatasetNotFoundError,
    LimitExceededError,
    NodeError,
    PathOutsideRootError,
    RequestError,
)
from data_node.fields import choice
from data_node.jobs._build import MAX_CLASSES, ArraySpec, BuildSpec, check_output_size
from data_node.jobs._import import CaseSpec, ImportSpec
from data_node.jobs._output_tree import RESERVED
from data_tools.errors import ConfinementError
from data_tools.medical import CASES_CONTAINERS, IMAGE_SUFFIXES, parse_import_options
from data_tools.parsing import did_you_mean
from data_tools.patches import plan_classes
from data_tools.storage import FORMATS, PARALLEL_FORMATS, WRITABLE_FORMATS, Root, backend
from data_wire.v1 import jobs_pb2

if TYPE_CHECKING:
    from data_node.catalog.datasets import DatasetRegistry
    from data_node.config import JobsConfig, NodeConfig

__all__ = [
    "DEFAULT_BATCHSIZE",
    "IMAGE_SUFFIXES",
    "MAX_IMPORT_CASES",
    "MAX_TEXT_BYTES",
    "BuildPlan",
    "parse_build_request",
]

# Bounds of what a job stores (its request is kept and listed for good): every text field,
# and writer_options, which may hold a few filter specifications.
MAX_TEXT_BYTES = 4096
DEFAULT_BATCHSIZE = 32
# The most cases one import takes: the request, the job's record and its progress grow
# with them.
MAX_IMPORT_CASES = 10_000
# SubmitBuildJobRequest fields of a patch build only, refused with import_cases.
_PATCH_ONLY_FIELDS = (
    "volume",
    "mask",
    "patchsize",
    "class_list",
    "random_order",
    "max_patches_per_class",
    "slice_axis",
    "store_masks",
    "executor",
    "scheduler_address",
)


@dataclass(frozen=True)
class BuildPlan:
    """A checked request: what the job's process builds and where the node publishes it.

    Attributes:
        spec: What the job's process builds: a patch build or an import.
        output: The resolved output directory, inside the output root.
        register_as: Dataset name to serve the result under; "" for none.
        overwrite: Replace an existing output.
        request: The request as accepted, every default filled in.
    """

    spec: BuildSpec | ImportSpec
    output: Path
    register_as: str
    overwrite: bool
    request: jobs_pb2.SubmitBuildJobRequest


def parse_build_request(
    request: jobs_pb2.SubmitBuildJobRequest, config: NodeConfig, registry: DatasetRegistry
) -> BuildPlan:
    """Check every field of ``request``; only the inputs' headers are read.

    Raises:
        PathOutsideRootError: An input path resolves outside the data root, or its content
            (HDF5 links and storage, zarr entries, a medical header's data files) reads
            from outside it, or ``output`` resolves outside the output root
            (PERMISSION_DENIED).
        DatasetNotFoundError: An input names a dataset the node does not serve (NOT_FOUND).
        RequestError: Any other field is invalid (INVALID_ARGUMENT); the message names it.
    """
    _check_sizes(request)
    if request.HasField("import_cases"):
        return _parse_import_request(request, config)
    if not request.HasField("volume"):
        raise RequestError("volume: Expected a dataset_array or a file. Got neither.")
    volume = _parse_input("volume", request.volume, config, registry)
    shape, dtype = _describe("volume", volume)
    if len(shape) not in (2, 3) or 0 in shape:
        raise RequestError(
            "volume: Expected a 2D slice or a 3D volume of at least one pixel. "
            f"Got an array of shape {shape} instead."
        )
    if dtype is not None and not _is_real(dtype):
        raise RequestError(f"volume: Expected real numbers or bools. Got dtype {dtype} instead.")
    mask = None
    if request.HasField("mask"):
        mask = _parse_input("mask", request.mask, config, registry)
        mask_shape, _ = _describe("mask", mask)
        if mask_shape != shape:
            raise RequestError(
                f"mask: Expected the shape of volume, {shape}. Got shape {mask_shape} instead."
            )
    slice_axis = request.slice_axis if request.HasField("slice_axis") else -1
    patchsize = _parse_patchsize(
        request.patchsize, shape, slice_axis, is_image=volume.image is not None
    )
    class_list = _parse_class_list(list(request.class_list), has_mask=mask is not None)
    batchsize = _non_negative("batchsize", request.batchsize) or DEFAULT_BATCHSIZE
    cap = _non_negative("max_patches_per_class", request.max_patches_per_class) or None
    file_format = choice("file_format", request.file_format or "hdf5", WRITABLE_FORMATS)
    writer_options = _parse_writer_options(request.writer_options, file_format)
    executor, scheduler_address = _parse_executor(request, file_format, config.jobs)
    if request.store_masks and mask is None:
        raise RequestError("store_masks: Expected a mask (mask patches are cut from it). Got none.")
    if request.store_masks and executor != "local":
        raise RequestError(
            f"store_masks: Expected executor 'local' (Dask tasks write image patches only). "
            f"Got executor {executor!r}."
        )
    if mask is None:  # every pixel is a patch: the output's size is known now
        pixels = int(np.prod(shape))
        patches = pixels if cap is None else min(pixels, cap)
        try:
            check_output_size(
                plan_classes({0: patches}, patchsize),
                config.jobs.max_output_bytes,
                config.output_root,
            )
        except ValueError as error:
            raise LimitExceededError(str(error)) from None
    seed = _parse_seed(request)
    accepted = jobs_pb2.SubmitBuildJobRequest()
    accepted.CopyFrom(request)
    accepted.random_order = request.random_order if request.HasField("random_order") else True
    accepted.batchsize = batchsize
    accepted.file_format = file_format
    accepted.slice_axis = slice_axis
    accepted.seed = seed
    accepted.executor = executor
    accepted.scheduler_address = scheduler_address or ""
    spec = BuildSpec(
        volume=volume,
        mask=mask,
        patchsize=patchsize,
        class_list=class_list,
        random_order=accepted.random_order,
        batchsize=batchsize,
        max_patches_per_class=cap,
        file_format=file_format,
        writer_options=writer_options,
        slice_axis=slice_axis,
        seed=seed,
        executor=executor,
        scheduler_address=scheduler_address,
        dask_task_bytes=config.jobs.dask_task_bytes,
        max_output_bytes=config.jobs.max_output_bytes,
        store_masks=request.store_masks,
    )
    return _plan(spec, accepted, config)


def _parse_import_request(request: jobs_pb2.SubmitBuildJobRequest, config: NodeConfig) -> BuildPlan:
    for name in _PATCH_ONLY_FIELDS:
        if _is_set(request, name):
            raise RequestError(
                f"{name}: Expected none with import_cases (an import cuts no patches). "
                f"Got {getattr(request, name)!r}."
            )
    message = request.import_cases
    if not 1 <= len(message.cases) <= MAX_IMPORT_CASES:
        raise RequestError(
            f"import_cases.cases: Expected 1 to {MAX_IMPORT_CASES} cases. "
            f"Got {len(message.cases)} instead."
        )
    cases = tuple(_parse_case(i, case, config.data_root) for i, case in enumerate(message.cases))
    file_format = choice("file_format", request.file_format or "hdf5", tuple(CASES_CONTAINERS))
    writer_options = _parse_writer_options(request.writer_options, file_format)
    batchsize = _non_negative("batchsize", request.batchsize) or DEFAULT_BATCHSIZE
    seed = _parse_seed(request)
    options: dict[str, Any] = {
        "slice_axis": message.slice_axis if message.HasField("slice_axis") else 0,
        "orientation": message.orientation or None,
        "spacing": list(message.spacing) or None,
        "size": list(message.size) or None,
        "clip": list(message.clip) or None,
        "normalize": message.normalize or "none",
        "keep_unlabelled": (
            message.keep_unlabelled if message.HasField("keep_unlabelled") else 1.0
        ),
        "label_values": list(message.label_values) or None,
    }
    try:
        parse_import_options(**options, seed=seed)
    except (TypeError, ValueError) as error:
        raise RequestError(f"import_cases: {error}") from None
    accepted = jobs_pb2.SubmitBuildJobRequest()
    accepted.CopyFrom(request)
    accepted.file_format = file_format
    accepted.batchsize = batchsize
    accepted.seed = seed
    accepted.import_cases.slice_axis = options["slice_axis"]
    accepted.import_cases.normalize = options["normalize"]
    accepted.import_cases.keep_unlabelled = options["keep_unlabelled"]
    spec = ImportSpec(cases, options, file_format, batchsize, writer_options, seed)
    return _plan(spec, accepted, config)


def _plan(
    spec: BuildSpec | ImportSpec, accepted: jobs_pb2.SubmitBuildJobRequest, config: NodeConfig
) -> BuildPlan:
    """The plan of a checked ``spec``, with the output fields of the accepted request checked."""
    output = _parse_output(accepted.output, config.output_root, overwrite=accepted.overwrite)
    accepted.output = str(output.relative_to(config.output_root))
    return BuildPlan(
        spec=spec,
        output=output,
        register_as=_parse_register_as(accepted.register_as, config),
        overwrite=accepted.overwrite,
        request=accepted,
    )


def _check_sizes(request: jobs_pb2.SubmitBuildJobRequest) -> None:
    """Bound the repeated fields a job stores, before any other work (its strings are bounded
    for every request: ``data_node.rpc._strings``)."""
    if len(request.class_list) > MAX_CLASSES:
        raise RequestError(
            f"class_list: Expected at most {MAX_CLASSES} values. "
            f"Got {len(request.class_list)} instead."
        )


def _is_set(request: jobs_pb2.SubmitBuildJobRequest, name: str) -> bool:
    if name in ("volume", "mask", "random_order", "slice_axis"):
        return request.HasField(name)
    return bool(getattr(request, name))


def _parse_case(index: int, message: jobs_pb2.CaseInput, data_root: Path) -> CaseSpec:
    prefix = f"import_cases.cases[{index}]"
    if not message.HasField("image"):
        raise RequestError(f"{prefix}.image: Expected a file under the data root. Got none.")
    image = _parse_file(f"{prefix}.image", message.image, data_root)
    label = None
    if message.HasField("label"):
        label = _parse_file(f"{prefix}.label", message.label, data_root)
        shape, _ = _describe(f"{prefix}.image", image)
        label_shape, dtype = _describe(f"{prefix}.label", label)
        case = f"(case {message.name or message.image.path!r})"
        if label_shape != shape:
            raise RequestError(
                f"{prefix}.label {case}: Expected the image's shape {shape}. "
                f"Got shape {label_shape} instead."
            )
        if dtype is not None and not _is_real(dtype):
            raise RequestError(
                f"{prefix}.label {case}: Expected integer class values. Got dtype {dtype} instead."
            )
    return CaseSpec(image, label, message.name or None)


def _parse_seed(request: jobs_pb2.SubmitBuildJobRequest) -> int:
    return request.seed if request.HasField("seed") else secrets.randbits(63)


def _parse_input(
    name: str, message: jobs_pb2.ArrayInput, config: NodeConfig, registry: DatasetRegistry
) -> ArraySpec:
    source = message.WhichOneof("source")
    if source == "dataset_array":
        reference = message.dataset_array
        try:
            dataset = registry.get(reference.dataset)
        except DatasetNotFoundError as error:
            # The registry's message names the field "dataset"; here it is nested.
            raise DatasetNotFoundError(f"{name}.dataset_array.{error}") from None
        array = choice(f"{name}.dataset_array.array", reference.array, dataset.array_names)
        return ArraySpec(array=dataset.array(array))
    if source == "file":
        return _parse_file(f"{name}.file", message.file, config.data_root)
    raise RequestError(f"{name}: Expected a dataset_array or a file. Got neither.")


def _parse_file(name: str, message: jobs_pb2.FileArray, data_root: Path) -> ArraySpec:
    if not message.path:
        raise RequestError(f"{name}.path: Expected a path under the data root. Got none.")
    try:
        path, exists = _resolve(data_root, message.path, f"{name}.path")
    except PathOutsideRootError:
        # Said without the server's paths (the root's, a symlink's target): a client sees it.
        raise PathOutsideRootError(
            f"{name}.path: Expected a path inside the data root. "
            f"Got {message.path!r}, which resolves outside it, instead."
        ) from None
    if not exists:
        raise RequestError(
            f"{name}.path: Expected an existing file under the data root. "
            f"{message.path!r} does not exist."
        )
    # The suffix of the name given, not of a symlink's target.
    given = Path(message.path).name.lower()
    if given.endswith(IMAGE_SUFFIXES):
        if message.key:
            raise RequestError(
                f"{name}.key: Expected none for a medical image. Got {message.key!r}."
            )
        return ArraySpec(image=path, root=Root(data_root))
    file_format = next((f for s, f in SOURCE_FORMATS.items() if given.endswith(s)), None)
    if file_format is None:
        raise RequestError(
            f"{name}.path: Expected a name ending in one of "
            f"{sorted([*SOURCE_FORMATS, *IMAGE_SUFFIXES])}. Got {message.path!r} instead."
        )
    stored = FORMATS[file_format]
    if stored.key == "required" and not message.key:
        raise RequestError(f"{name}.key: Expected the {stored.noun} path. Got none.")
    if stored.key == "none" and message.key:
        raise RequestError(f"{name}.key: Expected none for a {stored.noun}. Got {message.key!r}.")
    return ArraySpec(source=SourceConfig(path, file_format, message.key or None, Root(data_root)))


def _resolve(root: Path, given: str, name: str) -> tuple[Path, bool]:
    """``given`` resolved inside ``root``, and whether it exists."""
    try:
        path = resolve_inside(root, given, field_name=name)
        return path, path.exists()
    except PathOutsideRootError:
        raise
    except (OSError, ValueError) as error:  # a NUL byte, a name too long...
        raise RequestError(f"{name}: Expected a usable path. Got {given!r}: {error}") from None


def _describe(name: str, spec: ArraySpec) -> tuple[tuple[int, ...], np.dtype[Any] | None]:
    try:
        return spec.describe()
    except NodeError:
        raise
    except ConfinementError as error:
        raise PathOutsideRootError(f"{name}: {error}") from None
    except Exception as error:
        raise RequestError(
            f"{name}: Expected a readable array. Reading it failed: {error}"
        ) from error


def _is_real(dtype: np.dtype[Any]) -> bool:
    return dtype == np.bool_ or (
        np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)
    )


def _parse_patchsize(
    patchsize: int, shape: tuple[int, ...], slice_axis: int, *, is_image: bool
) -> int:
    if len(shape) == 3 and not -3 <= slice_axis <= 2:
        raise RequestError(
            f"slice_axis: Expected an axis of the 3D volume, in [-3, 2]. Got {slice_axis} instead."
        )
    plane = (
        shape if len(shape) == 2 else tuple(n for i, n in enumerate(shape) if i != slice_axis % 3)
    )
    if patchsize < 1:
        raise RequestError(f"patchsize: Expected an integer >= 1. Got {patchsize} instead.")
    if patchsize > min(plane):
        hint = ""
        if is_image and len(shape) == 3 and slice_axis % 3 != 0:
            hint = (
                f" A medical image is a (z, y, x) array: slice_axis {slice_axis} cuts it "
                "along x or y; slice_axis=0 cuts its axial slices."
            )
        raise RequestError(
            f"patchsize: Expected at most {min(plane)}, the smaller side of the volume's "
            f"{plane[0]}x{plane[1]} slices. Got {patchsize} instead.{hint}"
        )
    return patchsize


def _parse_class_list(values: list[int], *, has_mask: bool) -> tuple[int, ...] | None:
    if not values:
        return None
    if not has_mask:
        raise RequestError(
            f"class_list: Expected none without a mask (every pixel is class 0). Got {values}."
        )
    if len(set(values)) != len(values):
        raise RequestError(f"class_list: Expected distinct values. Got {values} instead.")
    return tuple(values)


def _non_negative(name: str, value: int) -> int:
    if value < 0:
        raise RequestError(f"{name}: Expected an integer >= 0 (0: the default). Got {value}.")
    return value


def _parse_writer_options(text: str, file_format: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        options = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise RequestError(
            f"writer_options: Expected a JSON object. Got invalid JSON: {error}."
        ) from None
    if not isinstance(options, dict):
        raise RequestError(f"writer_options: Expected a JSON object. Got {text!r} instead.")
    # Storage layout and compression only (h5py's ``external``, for one, would write
    # outside the output root): the backend's request_options.
    known = backend(file_format).request_options
    for key in options:
        if key not in known:
            raise RequestError(
                f"writer_options: Expected keys among {sorted(known)} for file_format "
                f"{file_format!r}. Got {key!r} instead.{did_you_mean(key, known)}"
            )
    return options


def _parse_executor(
    request: jobs_pb2.SubmitBuildJobRequest, file_format: str, jobs: JobsConfig
) -> tuple[str, str | None]:
    executor = choice("executor", request.executor or jobs.executor, EXECUTORS)
    if executor == "local":
        return executor, None
    address = request.scheduler_address or jobs.scheduler_address
    if not address:
        raise RequestError(
            "scheduler_address: Expected the Dask scheduler's address for executor 'dask' "
            "(the node has none configured). Got none."
        )
    if file_format not in PARALLEL_FORMATS:
        raise RequestError(
            f"file_format: Expected {' or '.join(map(repr, PARALLEL_FORMATS))} with executor "
            f"'dask' (its tasks write chunks in parallel). Got {file_format!r} instead."
        )
    return executor, address


def _parse_output(name: str, output_root: Path, *, overwrite: bool) -> Path:
    if not name:
        raise RequestError("output: Expected a directory name under the output root. Got none.")
    path, exists = _resolve(output_root, name, "output")
    if path == output_root or path.relative_to(output_root).parts[0] in RESERVED:
        raise RequestError(
            f"output: Expected a name inside the output root, other than "
            f"{' and '.join(map(repr, RESERVED))} (the node's own). Got {name!r} instead."
        )
    if not overwrite and exists:
        raise RequestError(f"output: Expected a new name, or overwrite. {name!r} exists.")
    return path


def _parse_register_as(name: str, config: NodeConfig) -> str:
    if name in config.datasets:
        raise RequestError(
            f"register_as: Expected a name other than the configured datasets' "
            f"{sorted(config.datasets)}. Got {name!r} instead."
        )
    return name
