"""One case of an import: read it (SimpleITK), reorient, resample, normalize, select slices.

The steps of ``data_tools.medical.import_cases`` for a single case, and the types they share
with it; ``medical`` writes the results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from data_tools.storage.sitk import IMAGE_SUFFIXES, load_sitk

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_SLICE_PIXELS",
    "Case",
    "CaseSlices",
    "ImportOptions",
    "case_field",
    "case_name",
    "check_agrees",
    "default_case_name",
    "load_sitk",
    "read_case",
    "select_slices",
]

# Relative difference below which two spacings are the same (headers round differently).
_SPACING_TOLERANCE = 1e-4
# The most pixels of a resampled slice (256 MiB of float32): a typo in size or spacing
# would otherwise ask for terabytes.
MAX_SLICE_PIXELS = 1 << 26


@dataclass(frozen=True)
class Case:
    """One case: an image and its optional label.

    Attributes:
        image: A medical image file (.nii, .nii.gz, .mha, .mhd, .nrrd), or a 3D array in
            (z, y, x) order (HDF5 dataset, zarr array, ndarray), or a callable returning
            such an array or a SimpleITK image (kept with its geometry), called when the case is
            imported.
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


@dataclass(frozen=True)
class CaseSlices:
    """A processed case: its slices first, and its metadata."""

    name: str
    image: npt.NDArray[np.float32]  # (n, [C,] H, W)
    mask: npt.NDArray[Any] | None  # (n, H, W)
    spacing: tuple[float, float]  # in-plane (rows, columns)
    metadata: dict[str, Any]


def case_name(index: int, case: Case) -> str:
    return f"cases[{index}] ({default_case_name(case, index)!r})"


def case_field(index: int, case: Case, field: str) -> str:
    return f"cases[{index}].{field} (case {default_case_name(case, index)!r})"


def default_case_name(case: Case, index: int) -> str:
    """The case's name, else its image file's name without suffix, else ``case<index>``."""
    if case.name is not None:
        return case.name
    if isinstance(case.image, str | os.PathLike):
        base = os.path.basename(os.fspath(case.image))
        return next((base[: -len(s)] for s in IMAGE_SUFFIXES if base.lower().endswith(s)), base)
    return f"case{index}"


def read_case(index: int, case: Case, options: ImportOptions) -> CaseSlices:
    sitk = load_sitk()
    name = default_case_name(case, index)
    image = _load(index, case, "image", case.image)
    original = _geometry(image)
    label = None
    if case.label is not None:
        label = _load(index, case, "label", case.label)
        if label.GetSize() != image.GetSize():
            raise ValueError(
                f"{case_field(index, case, 'label')}: Expected the image's shape "
                f"{_zyx(image.GetSize())}. Got shape {_zyx(label.GetSize())} instead."
            )
        label = _as_integer_label(index, case, label)
        label.CopyInformation(image)
    if options.orientation is not None:
        image = sitk.DICOMOrient(image, options.orientation)
        label = None if label is None else sitk.DICOMOrient(label, options.orientation)
    if options.spacing is not None or options.size is not None:
        where = case_field(index, case, "spacing")
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
    return CaseSlices(
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
                f"{case_field(index, case, field)}: Expected a file ending in one of "
                f"{list(IMAGE_SUFFIXES)}, or an array. Got {path!r} instead."
            )
        try:
            image = sitk.ReadImage(path)
        except RuntimeError as error:
            raise OSError(
                f"{case_field(index, case, field)}: cannot read {path!r}: {error}"
            ) from None
    elif callable(source) and isinstance(loaded := source(), sitk.Image):
        image = loaded
    else:
        array = np.asarray(loaded if callable(source) else source[...])
        if array.ndim != 3 or 0 in array.shape:
            raise ValueError(
                f"{case_field(index, case, field)}: Expected a 3D (z, y, x) array. "
                f"Got shape {array.shape} instead."
            )
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        image = sitk.GetImageFromArray(array)
        if case.spacing is not None:
            image.SetSpacing([float(s) for s in case.spacing])
    if image.GetDimension() != 3:
        raise ValueError(
            f"{case_field(index, case, field)}: Expected a 3D image. "
            f"Got {image.GetDimension()} dimensions instead."
        )
    return image


def _as_integer_label(index: int, case: Case, label: Any) -> Any:
    sitk = load_sitk()
    values = sitk.GetArrayViewFromImage(label)
    if label.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{case_field(index, case, 'label')}: Expected one integer class value per "
            f"voxel. Got {label.GetNumberOfComponentsPerPixel()} components instead."
        )
    if np.issubdtype(values.dtype, np.integer):
        return label
    if not np.all(np.isfinite(values) & (values == np.round(values))):
        raise ValueError(
            f"{case_field(index, case, 'label')}: Expected integer class values. "
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
                f"{case_field(index, case, 'label')}: Expected label values within int32 "
                "(label_values sets another dtype). "
                f"Got values in [{mask.min()}, {mask.max()}] instead."
            )
        return
    unexpected = sorted(set(np.unique(mask).tolist()) - set(allowed))
    if unexpected:
        raise ValueError(
            f"{case_field(index, case, 'label')}: Expected label values among label_values "
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


def select_slices(slices: CaseSlices, options: ImportOptions, index: int) -> npt.NDArray[np.intp]:
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


def check_agrees(
    index: int,
    case: Case,
    slices: CaseSlices,
    first_case: Case,
    first: CaseSlices,
    options: ImportOptions,
) -> None:
    """Raise when a case's slices cannot share arrays with the first case's."""
    reference = case_name(0, first_case)
    if slices.image.shape[1:] != first.image.shape[1:]:
        hint = "" if options.size is not None else " (size= resamples every case to one size)"
        raise ValueError(
            f"{case_field(index, case, 'image')}: Expected slices of shape "
            f"{first.image.shape[1:]}, as {reference} has{hint}. "
            f"Got shape {slices.image.shape[1:]} instead."
        )
    resampled = options.spacing is not None or options.size is not None
    if not resampled and not np.allclose(
        slices.spacing, first.spacing, rtol=_SPACING_TOLERANCE, atol=0
    ):
        raise ValueError(
            f"{case_field(index, case, 'spacing')}: Expected the in-plane spacing "
            f"{first.spacing} of {reference} (spacing= resamples every case to one). "
            f"Got {slices.spacing} instead."
        )


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
