"""Case selection: a stream's ``cases`` ranges resolved to the samples it draws from.

A dataset made of cases (a medical import: every slice of a volume, ``case`` its index)
has an integer ``case`` array. A stream selecting ranges of cases draws every epoch from
the samples whose case lies in one of them (``data_flow(subset=...)``), so one dataset
serves a training and a validation split by case without being rebuilt. The selection is
normalised (sorted, overlapping and adjacent ranges merged) before it enters the cursor's
fingerprint, so the same cases however spelled give the same stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np

from data_node.catalog.datasets import CASE_ARRAY
from data_node.errors import RequestError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy.typing as npt

    from data_node.catalog.datasets import Dataset
    from data_wire.v1.data_node_pb2 import CaseRange

__all__ = ["MAX_CASE_RANGES", "parse_cases"]

MAX_CASE_RANGES: Final = 4096
"""Most ranges one selection may hold (it is resolved against every sample's case)."""


def parse_cases(
    ranges: Sequence[CaseRange], dataset: Dataset
) -> tuple[npt.NDArray[np.int64] | None, list[tuple[int, int]]]:
    """The samples of ``dataset`` whose case lies in ``ranges``, and the normalised ranges.

    Returns:
        The selected sample indices (increasing) and the ranges sorted and merged; (None, [])
        for an empty ``ranges``: every sample.

    Raises:
        RequestError: Too many ranges, a dataset without an integer ``case`` array, a range
            with first > last or outside the dataset's cases, or no sample selected; the
            message names ``cases`` (and the range's position).
    """
    if not ranges:
        return None, []
    if len(ranges) > MAX_CASE_RANGES:
        raise RequestError(
            f"cases: Expected at most {MAX_CASE_RANGES} ranges. Got {len(ranges)} instead."
        )
    try:
        cases = dataset.cases
    except KeyError:
        raise RequestError(
            f"cases: Expected a dataset with a {CASE_ARRAY!r} array to select cases by. "
            f"Dataset {dataset.name!r} has arrays {list(dataset.array_names)} instead."
        ) from None
    except TypeError as error:
        raise RequestError(f"cases: {error}") from None
    low, high = int(cases.min()), int(cases.max())
    for i, case_range in enumerate(ranges):
        first, last = case_range.first, case_range.last
        if first > last or first < low or last > high:
            raise RequestError(
                f"cases[{i}]: Expected a range first-last with {low} <= first <= last <= {high} "
                f"(the cases of {dataset.name!r}). Got {first}-{last} instead."
            )
    merged = _merge(sorted((r.first, r.last) for r in ranges))
    firsts = np.array([first for first, _ in merged], dtype=np.int64)
    lasts = np.array([last for _, last in merged], dtype=np.int64)
    # The merged range starting at or before each sample's case; selected if it reaches it.
    position = np.searchsorted(firsts, cases, side="right") - 1
    selected = (position >= 0) & (cases <= lasts[np.maximum(position, 0)])
    subset = np.flatnonzero(selected).astype(np.int64)
    if subset.size == 0:
        shown = ",".join(f"{first}-{last}" for first, last in merged)
        raise RequestError(
            f"cases: Expected a selection holding samples. Got {shown}, in which no sample's "
            f"case lies, instead."
        )
    return subset, merged


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ranges with overlapping and adjacent ones merged."""
    merged = [ranges[0]]
    for first, last in ranges[1:]:
        previous_first, previous_last = merged[-1]
        if first <= previous_last + 1:
            merged[-1] = (previous_first, max(previous_last, last))
        else:
            merged.append((first, last))
    return merged
