"""Medical volumes in, one dataset of 2D slices out: ``import_cases`` (SimpleITK, optional).

A case is an image and an optional label (segmentation) of the same voxel grid: a NIfTI,
MHA/MHD or NRRD file read with SimpleITK, or an array (an HDF5 dataset, a zarr array, an
ndarray) taken as SimpleITK's (z, y, x) layout. Each case is optionally reoriented
(``DICOMOrient``), resampled in-plane (image linear, label nearest neighbour), clipped and
normalized, and its slices along ``slice_axis`` are appended to one store with the arrays

- ``image``: float32, (N, H, W), or (N, C, H, W) for multi-component images;
- ``mask``: integer, (N, H, W), when the cases have labels;
- ``case``: int64, (N,), the index of the slice's case in ``cases``;
- ``slice``: int64, (N,), the slice's index along ``slice_axis`` within its (reoriented) case,

written with the buffered array writers (each array marked complete only once every case
is written). The store's root attribute ``cases`` (a JSON list; :func:`load_cases` reads it)
keeps per case its name, inputs, the original and the imported geometry (size, spacing,
origin, direction, in SimpleITK's x, y, z order) and its rows in the arrays; the root
attribute ``import`` (JSON) keeps the options.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools._medical_case import (
    IMAGE_SUFFIXES,
    MAX_SLICE_PIXELS,
    Case,
    CaseSlices,
    ImportOptions,
    case_field,
    case_name,
    check_agrees,
    default_case_name,
    load_sitk,
    read_case,
    select_slices,
)
from data_tools._parse import (
    parse_int,
    parse_option,
    parse_path,
    parse_positive_int,
)
from data_tools.io.writers import format_writer, is_complete, set_container_attrs
from data_tools.storage import backend, container_names, format_of_path

if TYPE_CHECKING:
    from data_tools.io.writers import buffered_array_writer

__all__ = [
    "CASES_CONTAINERS",
    "IMAGE_SUFFIXES",
    "MAX_SLICE_PIXELS",
    "NORMALIZATIONS",
    "Case",
    "CaseReport",
    "ImportOptions",
    "default_case_name",
    "import_cases",
    "is_import_complete",
    "load_cases",
    "load_sitk",
    "parse_import_options",
    "parse_orientation",
]

# file_format -> the store import_cases writes inside save_path.
CASES_CONTAINERS = container_names("cases", keyed=True)
NORMALIZATIONS = ("none", "zscore", "minmax", "window")
_AXIS_LETTERS = ("RL", "AP", "SI")


@dataclass(frozen=True)
class CaseReport:
    """One imported case: its index and name, its slices, and the slices kept."""

    index: int
    name: str
    slices: int
    kept: int


def parse_orientation(value: Any) -> str | None:
    """Return an orientation code in upper case ("RAS", "LPS", ...), or None for None.

    Raises:
        ValueError: Not three letters, one of each of R/L, A/P and S/I.
    """
    if value is None:
        return None
    code = value.upper() if isinstance(value, str) else None
    if (
        code is None
        or len(code) != 3
        or sorted(next((i for i, p in enumerate(_AXIS_LETTERS) if c in p), -1) for c in code)
        != [0, 1, 2]
    ):
        raise ValueError(
            "Expected orientation to be a 3-letter code with one of R/L, one of A/P and one "
            f"of S/I, such as 'RAS' or 'LPS' (it applies to every case). Got {value!r} instead."
        )
    return code


def import_cases(
    save_path: str | os.PathLike[str],
    cases: Sequence[Case],
    *,
    file_format: str = "hdf5",
    slice_axis: int = 0,
    orientation: str | None = None,
    spacing: Sequence[float] | None = None,
    size: Sequence[int] | None = None,
    clip: Sequence[float] | None = None,
    normalize: str = "none",
    keep_unlabelled: float = 1.0,
    label_values: Sequence[int] | None = None,
    seed: int = 0,
    batchsize: int = 32,
    kwargs: Mapping[str, Any] | None = None,
    progress: Callable[[CaseReport], None] | None = None,
) -> list[CaseReport]:
    """Import medical cases into one dataset of 2D slices (see the module docstring).

    Every case goes through the same steps, in order: reorient (``orientation``), resample
    in-plane (``spacing`` / ``size``), clip (``clip``), normalize (``normalize``), select
    slices (``keep_unlabelled``). The slices of all cases must then agree in shape and
    channels, and (when not resampled) in in-plane spacing; their out-of-plane spacing may
    differ (resampling with ``spacing`` or ``size`` lifts the spacing check). Either every
    case has a label or none has.

    Args:
        save_path: The directory to write the store in (created if missing): ``cases.h5``
            (hdf5) or ``cases.zarr`` (zarr); an existing store is replaced.
        cases: The cases, at least one.
        file_format: ``"hdf5"`` (default) or ``"zarr"``.
        slice_axis: Keyword-only, like every argument after ``cases``. The axis of the
            (z, y, x) array along which slices are cut, in [-3, 2]. Default 0: axial
            slices of an image in RAS/LPS-like orientation.
        orientation: Reorient every case to this code ("RAS", "LPS", ...: SimpleITK's
            ``DICOMOrient``) first. Default None: keep each case's orientation.
        spacing: Target in-plane spacing (row, column) of the slices, in the images'
            units (mm). Default None: keep it (the size then follows from ``size``).
        size: Target slice size (rows, columns); the resampled grid is centred on the
            original. Default None: the extent is kept, so each case's size follows from
            ``spacing``.
        clip: ``(low, high)``: clip the intensities to this range. Default None.
        normalize: Per case (and channel): ``"zscore"`` (zero mean, unit variance),
            ``"minmax"`` (to [0, 1]); or ``"window"``: ``clip``'s range mapped to [0, 1];
            ``"none"`` (default) keeps the intensities.
        keep_unlabelled: Fraction in [0, 1] of the slices without any nonzero label
            (every slice of a case without label) kept, drawn from ``seed``; labelled
            slices are always kept. Default 1.0: every slice; 0.0: only labelled slices.
        label_values: The label values the cases may hold; a case with another one is an
            error. Also sets the mask's dtype (the smallest integer dtype holding them).
            Default None: any integer, stored as int32.
        seed: Seed of the ``keep_unlabelled`` draw (case ``i`` draws from
            ``[seed, i]``). Default 0.
        batchsize: Slices per write, and the chunk length. Default 32.
        kwargs: Options for the writers (``h5py_array_writer`` / ``zarr_array_writer``).
            Default None.
        progress: Called after each case is written with its :class:`CaseReport`.

    Returns:
        The :class:`CaseReport` of every case, in order.

    Raises:
        TypeError, ValueError: An option is invalid (the message names it), or a case
            does not fit: image and label shapes differ, a label is not integer, a case's
            slices, channels or (without resampling) in-plane spacing disagree with the
            first case's, a label value is not in ``label_values``; the message names the
            case (``cases[i]`` and its name) and the field.
        OSError: A file cannot be read, or the store cannot be written.
        data_tools.errors.WriterError: Writing an array failed.
    """
    directory = parse_path("save_path", save_path)
    file_format = parse_option("file_format", file_format, CASES_CONTAINERS)
    batch_size = parse_positive_int("batchsize", batchsize)
    if not isinstance(cases, Sequence) or not cases:
        raise ValueError(f"Expected cases to be a non-empty sequence of Case. Got {cases!r}.")
    for i, case in enumerate(cases):
        if not isinstance(case, Case):
            raise TypeError(f"Expected cases[{i}] to be a Case. Got {case!r} instead.")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"Expected kwargs to be a dict or None. Got {kwargs!r} instead.")
    options = parse_import_options(
        slice_axis, orientation, spacing, size, clip, normalize, keep_unlabelled, label_values, seed
    )
    labelled = cases[0].label is not None
    for i, case in enumerate(cases):
        if (case.label is not None) != labelled:
            raise ValueError(
                f"{case_field(i, case, 'label')}: Expected "
                f"{'a label' if labelled else 'no label'}, as {case_name(0, cases[0])} "
                "(either every case has a label or none has). "
                f"Got {'none' if labelled else 'one'} instead."
            )
    mask_dtype = _mask_dtype(options.label_values) if labelled else None
    container = os.path.join(directory, CASES_CONTAINERS[file_format])
    os.makedirs(directory, exist_ok=True)
    reports: list[CaseReport] = []
    metadata: list[dict[str, Any]] = []
    with ExitStack() as stack:
        writers: dict[str, buffered_array_writer] = {}
        first: CaseSlices | None = None
        rows = 0
        for index, case in enumerate(cases):
            slices = read_case(index, case, options)
            if first is None:
                first = slices
                writers = _open_writers(
                    stack, file_format, container, slices, mask_dtype, batch_size, kwargs or {}
                )
            else:
                check_agrees(index, case, slices, cases[0], first, options)
            kept = select_slices(slices, options, index)
            writers["image"].buffered_write(slices.image[kept])
            if "mask" in writers:
                assert slices.mask is not None
                writers["mask"].buffered_write(slices.mask[kept].astype(mask_dtype))
            writers["case"].buffered_write(np.full(len(kept), index, dtype=np.int64))
            writers["slice"].buffered_write(kept.astype(np.int64))
            report = CaseReport(index, slices.name, len(slices.image), len(kept))
            metadata.append(slices.metadata | {"rows": [rows, rows + len(kept)]})
            rows += len(kept)
            reports.append(report)
            if progress is not None:
                progress(report)
        set_container_attrs(
            writers["case"],
            {"cases": json.dumps(metadata), "import": json.dumps(dataclasses.asdict(options))},
        )
    return reports


def is_import_complete(save_path: str | os.PathLike[str], file_format: str = "hdf5") -> bool:
    """Whether ``import_cases`` finished the store of ``file_format`` in ``save_path``."""
    directory = parse_path("save_path", save_path)
    file_format = parse_option("file_format", file_format, CASES_CONTAINERS)
    return is_complete(os.path.join(directory, CASES_CONTAINERS[file_format]))


def load_cases(store: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-case metadata of an imported store (``cases.h5`` or ``cases.zarr``).

    Each entry: ``name``, ``image``, ``label`` (the inputs, paths or None for arrays),
    ``original`` and ``imported`` geometry (``size``, ``spacing``, ``origin``,
    ``direction``, in SimpleITK's x, y, z order), and ``rows`` ([first, end) in the arrays).
    """
    location = parse_path("store", store)
    found = format_of_path(location)
    if found is None:
        raise FileNotFoundError(f"No imported store at {location!r}.")
    text = backend(found).read_root_attrs(location)["cases"]
    entries: list[dict[str, Any]] = json.loads(text)
    return entries


# ---------------------------------------------------------------- options


def parse_import_options(
    slice_axis: Any,
    orientation: Any,
    spacing: Any,
    size: Any,
    clip: Any,
    normalize: Any,
    keep_unlabelled: Any,
    label_values: Any,
    seed: Any,
) -> ImportOptions:
    """Check import_cases' options; the arguments are its keyword arguments of these names.

    Raises:
        TypeError, ValueError: An option is invalid; the message names it.
    """
    axis = parse_int("slice_axis", slice_axis)
    if not -3 <= axis <= 2:
        raise ValueError(
            f"Expected slice_axis to be an axis of the (z, y, x) volume, in [-3, 2]. "
            f"Got {axis} instead."
        )
    method = parse_option("normalize", normalize, NORMALIZATIONS)
    window = _parse_pair("clip", clip, float)
    if window is not None and not window[0] < window[1]:
        raise ValueError(f"Expected clip to be (low, high) with low < high. Got {clip!r} instead.")
    if method == "window" and window is None:
        raise ValueError("Expected clip=(low, high) with normalize='window'. Got clip=None.")
    target_spacing = _parse_pair("spacing", spacing, float)
    if target_spacing is not None and min(target_spacing) <= 0:
        raise ValueError(f"Expected spacing to be positive. Got {spacing!r} instead.")
    target_size = _parse_pair("size", size, int)
    if target_size is not None and not (
        min(target_size) >= 1 and target_size[0] * target_size[1] <= MAX_SLICE_PIXELS
    ):
        raise ValueError(
            f"Expected size to be at least 1 pixel and at most {MAX_SLICE_PIXELS} pixels in "
            f"all (the limit keeps a typo from filling memory). Got {size!r} instead."
        )
    if isinstance(keep_unlabelled, bool) or not isinstance(keep_unlabelled, int | float):
        raise TypeError(f"Expected keep_unlabelled to be a number. Got {keep_unlabelled!r}.")
    if not 0.0 <= keep_unlabelled <= 1.0:
        raise ValueError(
            f"Expected keep_unlabelled to be a fraction in [0, 1]. Got {keep_unlabelled} instead."
        )
    values = None
    if label_values is not None:
        values = tuple(parse_int(f"label_values[{i}]", v) for i, v in enumerate(label_values))
        if not values or len(set(values)) != len(values):
            raise ValueError(
                f"Expected label_values to hold distinct values. Got {list(values)} instead."
            )
    return ImportOptions(
        slice_axis=axis % 3,
        orientation=parse_orientation(orientation),
        spacing=target_spacing,
        size=target_size,
        clip=window,
        normalize=method,
        keep_unlabelled=float(keep_unlabelled),
        label_values=values,
        seed=parse_int("seed", seed, minimum=0),
    )


def _parse_pair(name: str, value: Any, kind: type) -> tuple[Any, Any] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, Sequence | np.ndarray) else None
    if (
        items is None
        or len(items) != 2
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in items
        )
        or (kind is int and not all(float(v).is_integer() for v in items))
    ):
        raise ValueError(
            f"Expected {name} to be two {'integers' if kind is int else 'numbers'} "
            f"(rows, columns or low, high). Got {value!r} instead."
        )
    return kind(items[0]), kind(items[1])


def _mask_dtype(values: tuple[int, ...] | None) -> np.dtype[Any]:
    if values is None:
        return np.dtype(np.int32)
    return np.result_type(np.min_scalar_type(min(values)), np.min_scalar_type(max(values)))


# ---------------------------------------------------------------- output


def _open_writers(
    stack: ExitStack,
    file_format: str,
    container: str,
    slices: CaseSlices,
    mask_dtype: np.dtype[Any] | None,
    batch_size: int,
    kwargs: Mapping[str, Any],
) -> dict[str, buffered_array_writer]:
    """The writers of every array, created (marked incomplete) before any is written."""
    arrays: list[tuple[str, tuple[int, ...], np.dtype[Any]]] = [
        ("image", slices.image.shape[1:], np.dtype(np.float32))
    ]
    if mask_dtype is not None:
        arrays.append(("mask", slices.image.shape[-2:], mask_dtype))
    arrays += [("case", (), np.dtype(np.int64)), ("slice", (), np.dtype(np.int64))]
    return {
        name: stack.enter_context(
            format_writer(
                file_format,
                container,
                name,
                shape,
                dtype,
                batch_size,
                None,
                i > 0,
                # Chunks of one slice of the image, of batchsize scalars.
                kwargs if shape else {k: v for k, v in kwargs.items() if k != "chunks"},
            )
        )
        for i, (name, shape, dtype) in enumerate(arrays)
    }
