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

import h5py
import numpy as np

from data_tools._parse import (
    parse_int,
    parse_option,
    parse_path,
    parse_positive_int,
)
from data_tools.io.writers import h5py_array_writer, is_complete, zarr_array_writer

if TYPE_CHECKING:
    import numpy.typing as npt

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
CASES_CONTAINERS = {"hdf5": "cases.h5", "zarr": "cases.zarr"}
IMAGE_SUFFIXES = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd")
NORMALIZATIONS = ("none", "zscore", "minmax", "window")
# Relative difference below which two spacings are the same (headers round differently).
_SPACING_TOLERANCE = 1e-4
_AXIS_LETTERS = ("RL", "AP", "SI")
# The most pixels of a resampled slice (256 MiB of float32): a typo in size or spacing
# would otherwise ask for terabytes.
MAX_SLICE_PIXELS = 1 << 26


def load_sitk() -> Any:
    """The SimpleITK module, or an ImportError saying how to install it."""
    try:
        import SimpleITK
    except ImportError as error:  # pragma: no cover - SimpleITK is in the [itk] extra
        raise ImportError(
            "Reading medical images needs SimpleITK: pip install 'data-tools[itk]'."
        ) from error
    return SimpleITK


@dataclass(frozen=True)
class Case:
    """One case: an image and its optional label.

    Attributes:
        image: A medical image file (.nii, .nii.gz, .mha, .mhd, .nrrd), or a 3D array in
            (z, y, x) order (HDF5 dataset, zarr array, ndarray), or a callable returning
            one (called when the case is imported).
        label: The segmentation, in the same forms, on the image's voxel grid; integer
            values (integral floats are accepted). Default None.
        name: The case's name. Default None: the image file's name without its suffix,
            or ``case<index>`` for an array.
        spacing: Voxel spacing (x, y, z) of an array image; a file's header has its own.
            Default None: 1.0 along every axis.
    """

    image: Any
    label: Any = None
    name: str | None = None
    spacing: Sequence[float] | None = None


@dataclass(frozen=True)
class CaseReport:
    """One imported case: its index and name, its slices, and the slices kept."""

    index: int
    name: str
    slices: int
    kept: int


@dataclass(frozen=True)
class ImportOptions:
    """import_cases' options, checked (see :func:`import_cases` for their meaning)."""

    slice_axis: int
    orientation: str | None
    spacing: tuple[float, float] | None
    size: tuple[int, int] | None
    clip: tuple[float, float] | None
    normalize: str
    keep_unlabelled: float
    label_values: tuple[int, ...] | None
    seed: int


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
                f"{_case_field(i, case, 'label')}: Expected "
                f"{'a label' if labelled else 'no label'}, as {_case_name(0, cases[0])} "
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
        first: _Slices | None = None
        rows = 0
        for index, case in enumerate(cases):
            slices = _read_case(index, case, options)
            if first is None:
                first = slices
                writers = _open_writers(
                    stack, file_format, container, slices, mask_dtype, batch_size, kwargs or {}
                )
            else:
                _check_agrees(index, case, slices, cases[0], first, options)
            kept = _select(slices, options, index)
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
        _set_root_attrs(
            file_format,
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
    if os.path.isfile(location):
        with h5py.File(location, "r") as file:
            text = file.attrs["cases"]
    else:
        import zarr

        text = zarr.open_group(location, mode="r").attrs["cases"]
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


# ---------------------------------------------------------------- one case


@dataclass(frozen=True)
class _Slices:
    """A processed case: its slices first."""

    name: str
    image: npt.NDArray[np.float32]  # (n, [C,] H, W)
    mask: npt.NDArray[Any] | None  # (n, H, W)
    spacing: tuple[float, float]  # in-plane (rows, columns)
    metadata: dict[str, Any]


def _case_name(index: int, case: Case) -> str:
    return f"cases[{index}] ({default_case_name(case, index)!r})"


def _case_field(index: int, case: Case, field: str) -> str:
    return f"cases[{index}].{field} (case {default_case_name(case, index)!r})"


def default_case_name(case: Case, index: int) -> str:
    """The case's name, else its image file's name without suffix, else ``case<index>``."""
    if case.name is not None:
        return case.name
    if isinstance(case.image, str | os.PathLike):
        base = os.path.basename(os.fspath(case.image))
        return next((base[: -len(s)] for s in IMAGE_SUFFIXES if base.lower().endswith(s)), base)
    return f"case{index}"


def _read_case(index: int, case: Case, options: ImportOptions) -> _Slices:
    sitk = load_sitk()
    name = default_case_name(case, index)
    image = _load(index, case, "image", case.image)
    original = _geometry(image)
    label = None
    if case.label is not None:
        label = _load(index, case, "label", case.label)
        if label.GetSize() != image.GetSize():
            raise ValueError(
                f"{_case_field(index, case, 'label')}: Expected the image's shape "
                f"{_zyx(image.GetSize())}. Got shape {_zyx(label.GetSize())} instead."
            )
        label = _as_integer_label(index, case, label)
        label.CopyInformation(image)
    if options.orientation is not None:
        image = sitk.DICOMOrient(image, options.orientation)
        label = None if label is None else sitk.DICOMOrient(label, options.orientation)
    if options.spacing is not None or options.size is not None:
        where = _case_field(index, case, "spacing")
        image = _resample(image, options, sitk.sitkLinear, sitk.sitkFloat32, where)
        if label is not None:
            label = _resample(label, options, sitk.sitkNearestNeighbor, label.GetPixelID(), where)
    pixels = np.asarray(sitk.GetArrayFromImage(image), dtype=np.float32)
    pixels = np.moveaxis(pixels, options.slice_axis, 0)
    if pixels.ndim == 4:  # (n, H, W, C) -> (n, C, H, W)
        pixels = np.moveaxis(pixels, -1, 1)
    pixels = _normalize(pixels, options)
    mask = None
    if label is not None:
        mask = np.moveaxis(sitk.GetArrayFromImage(label), options.slice_axis, 0)
        _check_label_values(index, case, mask, options.label_values)
    in_plane = [d for d in (2, 1, 0) if d != 2 - options.slice_axis]  # sitk dims of (rows, cols)
    spacing = tuple(float(image.GetSpacing()[d]) for d in in_plane)
    return _Slices(
        name=name,
        image=np.ascontiguousarray(pixels),
        mask=None if mask is None else np.ascontiguousarray(mask),
        spacing=(spacing[0], spacing[1]),
        metadata={
            "name": name,
            "image": _describe_input(case.image),
            "label": _describe_input(case.label),
            "original": original,
            "imported": _geometry(image),
        },
    )


def _load(index: int, case: Case, field: str, source: Any) -> Any:
    sitk = load_sitk()
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if not path.lower().endswith(IMAGE_SUFFIXES):
            raise ValueError(
                f"{_case_field(index, case, field)}: Expected a file ending in one of "
                f"{list(IMAGE_SUFFIXES)}, or an array. Got {path!r} instead."
            )
        try:
            image = sitk.ReadImage(path)
        except RuntimeError as error:
            raise OSError(
                f"{_case_field(index, case, field)}: cannot read {path!r}: {error}"
            ) from None
    else:
        array = np.asarray(source() if callable(source) else source[...])
        if array.ndim != 3 or 0 in array.shape:
            raise ValueError(
                f"{_case_field(index, case, field)}: Expected a 3D (z, y, x) array. "
                f"Got shape {array.shape} instead."
            )
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        image = sitk.GetImageFromArray(array)
        if case.spacing is not None:
            image.SetSpacing([float(s) for s in case.spacing])
    if image.GetDimension() != 3:
        raise ValueError(
            f"{_case_field(index, case, field)}: Expected a 3D image. "
            f"Got {image.GetDimension()} dimensions instead."
        )
    return image


def _as_integer_label(index: int, case: Case, label: Any) -> Any:
    sitk = load_sitk()
    values = sitk.GetArrayViewFromImage(label)
    if label.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{_case_field(index, case, 'label')}: Expected one integer class value per "
            f"voxel. Got {label.GetNumberOfComponentsPerPixel()} components instead."
        )
    if np.issubdtype(values.dtype, np.integer):
        return label
    if not np.all(np.isfinite(values) & (values == np.round(values))):
        raise ValueError(
            f"{_case_field(index, case, 'label')}: Expected integer class values. "
            f"Got non-integral values of dtype {values.dtype} instead."
        )
    return sitk.Cast(label, sitk.sitkInt32)


def _check_label_values(
    index: int, case: Case, mask: npt.NDArray[Any], allowed: tuple[int, ...] | None
) -> None:
    if allowed is None:
        bounds = np.iinfo(np.int32)
        if mask.size and not bounds.min <= int(mask.min()) <= int(mask.max()) <= bounds.max:
            raise ValueError(
                f"{_case_field(index, case, 'label')}: Expected label values within int32 "
                "(label_values sets another dtype). "
                f"Got values in [{mask.min()}, {mask.max()}] instead."
            )
        return
    unexpected = sorted(set(np.unique(mask).tolist()) - set(allowed))
    if unexpected:
        raise ValueError(
            f"{_case_field(index, case, 'label')}: Expected label values among label_values "
            f"{list(allowed)}. Got {unexpected} instead."
        )


def _resample(
    image: Any, options: ImportOptions, interpolator: int, pixel_type: int, where: str
) -> Any:
    """``image`` on a grid of the target in-plane spacing and size, centred on its own."""
    sitk = load_sitk()
    old_size = np.array(image.GetSize(), dtype=float)
    old_spacing = np.array(image.GetSpacing(), dtype=float)
    new_spacing, new_size = old_spacing.copy(), old_size.copy()
    in_plane = [d for d in (2, 1, 0) if d != 2 - options.slice_axis]  # (rows, cols) dims
    for position, dim in enumerate(in_plane):
        extent = old_size[dim] * old_spacing[dim]
        if options.spacing is not None:
            new_spacing[dim] = options.spacing[position]
        if options.size is not None:
            new_size[dim] = options.size[position]
            if options.spacing is None:
                new_spacing[dim] = extent / new_size[dim]
        else:
            new_size[dim] = max(1, round(extent / new_spacing[dim]))
    if new_size[in_plane[0]] * new_size[in_plane[1]] > MAX_SLICE_PIXELS:
        raise ValueError(
            f"{where}: Expected resampled slices of at most {MAX_SLICE_PIXELS} pixels (give a larger "
            f"spacing or a size). Got {int(new_size[in_plane[0]])}x"
            f"{int(new_size[in_plane[1]])} instead."
        )
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint((old_size - 1) / 2))
    origin = centre - direction @ ((new_size - 1) / 2 * new_spacing)
    values = sitk.GetArrayViewFromImage(image)
    default = float(values.min()) if interpolator == sitk.sitkLinear else 0.0
    return sitk.Resample(
        image,
        [int(n) for n in new_size],
        sitk.Transform(),
        interpolator,
        origin.tolist(),
        new_spacing.tolist(),
        image.GetDirection(),
        default,
        pixel_type,
    )


def _normalize(pixels: npt.NDArray[np.float32], options: ImportOptions) -> npt.NDArray[np.float32]:
    if options.clip is not None:
        pixels = np.clip(pixels, *options.clip)
    if options.normalize == "none":
        return pixels
    if options.normalize == "window":
        assert options.clip is not None
        low, high = options.clip
        return ((pixels - low) / (high - low)).astype(np.float32)
    # Per channel: every axis but the channel axis (1 of a 4D stack).
    axes = (0, 2, 3) if pixels.ndim == 4 else None
    if options.normalize == "zscore":
        shift = pixels.mean(axis=axes, keepdims=True, dtype=np.float64)
        scale = pixels.std(axis=axes, keepdims=True, dtype=np.float64)
    else:
        shift = pixels.min(axis=axes, keepdims=True).astype(np.float64)
        scale = pixels.max(axis=axes, keepdims=True) - shift
    return np.asarray((pixels - shift) / np.where(scale > 0, scale, 1.0), dtype=np.float32)


def _select(slices: _Slices, options: ImportOptions, index: int) -> npt.NDArray[np.intp]:
    """The indices of the slices kept, ascending."""
    count = len(slices.image)
    if options.keep_unlabelled >= 1.0:
        return np.arange(count, dtype=np.intp)
    labelled: npt.NDArray[np.bool_] = np.zeros(count, dtype=bool)
    if slices.mask is not None:
        labelled = np.asarray(slices.mask.reshape(count, -1).any(axis=1))
    others = np.flatnonzero(~labelled)
    rng = np.random.default_rng([options.seed, index])
    chosen = rng.choice(others, size=round(options.keep_unlabelled * len(others)), replace=False)
    return np.sort(np.concatenate([np.flatnonzero(labelled), chosen])).astype(np.intp)


def _check_agrees(
    index: int,
    case: Case,
    slices: _Slices,
    first_case: Case,
    first: _Slices,
    options: ImportOptions,
) -> None:
    """Raise when a case's slices cannot share arrays with the first case's."""
    reference = _case_name(0, first_case)
    if slices.image.shape[1:] != first.image.shape[1:]:
        hint = "" if options.size is not None else " (size= resamples every case to one size)"
        raise ValueError(
            f"{_case_field(index, case, 'image')}: Expected slices of shape "
            f"{first.image.shape[1:]}, as {reference} has{hint}. "
            f"Got shape {slices.image.shape[1:]} instead."
        )
    resampled = options.spacing is not None or options.size is not None
    if not resampled and not np.allclose(
        slices.spacing, first.spacing, rtol=_SPACING_TOLERANCE, atol=0
    ):
        raise ValueError(
            f"{_case_field(index, case, 'spacing')}: Expected the in-plane spacing "
            f"{first.spacing} of {reference} (spacing= resamples every case to one). "
            f"Got {slices.spacing} instead."
        )


# ---------------------------------------------------------------- output


def _open_writers(
    stack: ExitStack,
    file_format: str,
    container: str,
    slices: _Slices,
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
    writer = h5py_array_writer if file_format == "hdf5" else zarr_array_writer
    return {
        name: stack.enter_context(
            writer(
                shape,
                dtype,
                batch_size,
                container,
                name,
                None,
                i > 0,
                # Chunks of one slice of the image, of batchsize scalars.
                kwargs if shape else {k: v for k, v in kwargs.items() if k != "chunks"},
            )
        )
        for i, (name, shape, dtype) in enumerate(arrays)
    }


def _set_root_attrs(file_format: str, writer: buffered_array_writer, attrs: dict[str, str]) -> None:
    if file_format == "hdf5":
        writer.storage_array.file.attrs.update(attrs)
        return
    import zarr

    store = writer.storage_array.store
    zarr.open_group(store, mode="a").attrs.update(attrs)


def _geometry(image: Any) -> dict[str, list[float]]:
    return {
        "size": [int(n) for n in image.GetSize()],
        "spacing": [float(s) for s in image.GetSpacing()],
        "origin": [float(o) for o in image.GetOrigin()],
        "direction": [float(d) for d in image.GetDirection()],
    }


def _describe_input(source: Any) -> str | None:
    if source is None:
        return None
    return os.fspath(source) if isinstance(source, str | os.PathLike) else "array"


def _zyx(size: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(n) for n in reversed(size))
