"""The work of one import job: medical cases in, one dataset of 2D slices out.

This runs inside the job's own process (see ``_worker``) and calls
``data_tools.medical.import_cases``; files are opened here, from the picklable spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from data_node.jobs._build import writer_kwargs
from data_tools.medical import Case, CaseReport, default_case_name, import_cases

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

    from data_node.jobs._build import ArraySpec

__all__ = ["CaseSpec", "ImportSpec", "run_import"]


@dataclass(frozen=True)
class CaseSpec:
    """One case of an import: where its image and label are read, and its name.

    Attributes:
        image: The image: a medical image file or an HDF5/zarr array under the data root.
        label: The label, likewise; None: the case has none.
        name: The case's name; None: the image file's name without its suffix.
    """

    image: ArraySpec
    label: ArraySpec | None
    name: str | None


@dataclass(frozen=True)
class ImportSpec:
    """One import, checked by the node; fields of SubmitBuildJobRequest and ImportCases.

    Attributes:
        cases: The cases, in order.
        options: import_cases' keyword arguments (slice_axis, orientation, spacing, size,
            clip, normalize, keep_unlabelled, label_values), checked.
        file_format: "hdf5" or "zarr".
        batchsize: Slices per write; the chunk length.
        writer_options: Options for the writers, from JSON.
        seed: Seed of the keep_unlabelled draw.
    """

    cases: tuple[CaseSpec, ...]
    options: Mapping[str, Any]
    file_format: str
    batchsize: int
    writer_options: Mapping[str, Any]
    seed: int


def run_import(
    spec: ImportSpec, save_path: Path, report: Callable[[CaseReport], None]
) -> list[CaseReport]:
    """Import the cases of ``spec`` into the directory ``save_path``.

    Args:
        spec: The import.
        save_path: The directory import_cases writes its store in.
        report: Called after each case is written.

    Returns:
        The report of every case.

    Raises:
        TypeError, ValueError: A case does not fit (the message names the case and field).
        OSError, data_tools.errors.WriterError: Reading or writing failed.
    """
    cases = [
        Case(
            _input(case.image),
            None if case.label is None else _input(case.label),
            case.name or default_case_name(Case(case.image.image), index),
        )
        for index, case in enumerate(spec.cases)
    ]
    return import_cases(
        save_path,
        cases,
        file_format=spec.file_format,
        seed=spec.seed,
        batchsize=spec.batchsize,
        kwargs=writer_kwargs(spec.file_format, spec.writer_options),
        progress=report,
        **spec.options,
    )


def _input(spec: ArraySpec) -> Any:
    """A deferred read, confined to the data root: a medical image with its geometry."""
    return spec.read_sitk if spec.image is not None else spec.read
