"""How much a patch build writes: the plan per class, the pixels kept, the size warning."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy.typing as npt

__all__ = [
    "LARGE_PLAN_BYTES",
    "LARGE_PLAN_RATIO",
    "ClassPlan",
    "choose_pixels",
    "plan_classes",
    "warn_if_large",
]

# create_dataset warns when its patches would take at least LARGE_PLAN_BYTES and at least
# LARGE_PLAN_RATIO times the bytes of its input: every pixel gives a whole patch, so a
# 250 KB volume easily becomes hundreds of MB.
LARGE_PLAN_BYTES = 64 << 20
LARGE_PLAN_RATIO = 64


class ClassPlan(NamedTuple):
    """What a build writes for one class: its patches, and their bytes before compression."""

    patches: int
    bytes: int


def plan_classes(
    counts: Mapping[int, int], patchsize: int, mask_dtype: npt.DTypeLike | None = None
) -> dict[int, ClassPlan]:
    """{class value: ClassPlan} for ``counts`` patches per class, in ``counts``' order.

    A patch takes ``patchsize**2`` float32 values, plus as many of ``mask_dtype`` when the
    mask patches are stored too (``mask_dtype`` not None).
    """
    itemsize = 4 + (0 if mask_dtype is None else np.dtype(mask_dtype).itemsize)
    return {value: ClassPlan(n, n * patchsize**2 * itemsize) for value, n in counts.items()}


def choose_pixels(
    labels: npt.NDArray[Any] | None,
    counts: Mapping[int, int],
    cap: int | None,
    random_order: bool,
    rng: np.random.Generator,
) -> dict[int, npt.NDArray[np.intp]]:
    """Per class, the flat indices into the (slice, row, column) stack of the pixels to extract.

    Ascending. A class of more than ``cap`` pixels keeps its first ``cap`` ones, or with
    ``random_order`` a uniformly random subset of them (drawn from ``rng``, class by class).

    Args:
        labels: The mask as a stack (see :func:`as_stack`); None: every pixel is class 0.
        counts: {class value: its pixels}, as :func:`class_counts` returns.
        cap: The most pixels per class; None: all.
        random_order: Draw a random subset rather than the first pixels.
        rng: The random source.
    """
    flat = None if labels is None else labels.reshape(-1)
    chosen = {}
    for value, count in counts.items():
        if flat is None:
            pixels = np.arange(count, dtype=np.intp)
        else:
            pixels = np.flatnonzero(flat == value).astype(np.intp, copy=False)
        if cap is not None and count > cap:
            if random_order:
                pixels = np.sort(rng.choice(pixels, size=cap, replace=False))
            else:
                pixels = pixels[:cap]
        chosen[value] = pixels
    return chosen


def warn_if_large(plan: Mapping[int, ClassPlan], input_bytes: int) -> None:
    """Warn when ``plan`` takes at least LARGE_PLAN_BYTES and LARGE_PLAN_RATIO x the input."""
    planned = sum(entry.bytes for entry in plan.values())
    if planned >= LARGE_PLAN_BYTES and planned >= LARGE_PLAN_RATIO * input_bytes:
        patches = sum(entry.patches for entry in plan.values())
        warnings.warn(
            f"create_dataset plans {patches} patches taking {_size(planned)} (before "
            f"compression), {planned / max(input_bytes, 1):.0f} times its input's "
            f"{_size(input_bytes)}: every selected pixel gives a whole patch. Bound it with "
            "max_patches_per_class (or fewer classes in class_list).",
            stacklevel=3,
        )


def _size(num_bytes: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            break
        num_bytes /= 1000  # type: ignore[assignment]
    return f"{num_bytes:.4g} {unit}"
