"""Cubic B-spline displacement fields from a few control points, by separable basis matrices.

A grid of ``G`` control nodes per axis spans the image: node ``k`` sits at pixel
``k * (length - 1) / (G - 1)``, so nodes ``0`` and ``G - 1`` lie on the first and last pixel.
The displacement along each axis is the cubic B-spline through the node values (an
interpolating spline, so a node moves by exactly its jitter) with the border nodes pinned
at zero. The spline coefficients are extended oddly past the border (``c[-1] = -c[1]``),
which makes the field vanish on the whole border line, not only at the nodes.

For an image of ``H x W`` pixels the field is ``rows_basis @ V @ cols_basis.T`` with
``V`` the ``(G - 2) x (G - 2)`` interior node values: exact, and cheap because ``G`` is small.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["CACHE_BYTES", "coefficient_matrix", "displacement_basis", "spline_basis"]

Float64Array = npt.NDArray[np.float64]
Function = TypeVar("Function", bound=Callable[..., Float64Array])

#: Bytes of matrices each of the functions below keeps for reuse, least recently used out.
#: A matrix larger than this (a huge grid or image) is computed and returned, never kept,
#: so a process's memory never holds more than a few of these budgets.
CACHE_BYTES = 32 << 20


def _cached(function: Function) -> Function:
    """``function`` with its read-only results kept within CACHE_BYTES, by argument."""
    kept: OrderedDict[tuple[int, ...], Float64Array] = OrderedDict()
    lock = threading.Lock()
    held = 0

    @functools.wraps(function)
    def cached(*args: int) -> Float64Array:
        nonlocal held
        with lock:
            found = kept.get(args)
            if found is not None:
                kept.move_to_end(args)
                return found
        result = function(*args)
        with lock:
            if result.nbytes <= CACHE_BYTES and args not in kept:
                kept[args] = result
                held += result.nbytes
                while held > CACHE_BYTES:
                    held -= kept.popitem(last=False)[1].nbytes
        return result

    return cached  # type: ignore[return-value]


def _cubic_bspline(t: Float64Array) -> Float64Array:
    """The centred cubic B-spline kernel, evaluated elementwise."""
    a = np.abs(t)
    inner = 2.0 / 3.0 - a**2 + a**3 / 2.0
    outer = (2.0 - a) ** 3 / 6.0
    return np.where(a < 1.0, inner, np.where(a < 2.0, outer, 0.0))


@_cached
def coefficient_matrix(grid_size: int) -> Float64Array:
    """Map interior node values to all ``grid_size + 2`` spline coefficients along one axis.

    Args:
        grid_size: Number of control nodes along the axis, border nodes included (>= 3).

    Returns:
        A read-only ``(grid_size + 2, grid_size - 2)`` matrix. Its rows are the coefficients
        of nodes ``-1 .. grid_size`` (one phantom node beyond each border, as the cubic
        support needs), its columns the interior nodes ``1 .. grid_size - 2``.
    """
    interior = grid_size - 2
    # Interpolation at the interior nodes, with the border coefficients zero:
    # (c[k-1] + 4 c[k] + c[k+1]) / 6 = v[k].
    tridiagonal = (
        np.diag(np.full(interior, 4.0 / 6.0))
        + np.diag(np.full(interior - 1, 1.0 / 6.0), 1)
        + np.diag(np.full(interior - 1, 1.0 / 6.0), -1)
    )
    prefilter = np.linalg.inv(tridiagonal)
    coefficients = np.zeros((grid_size + 2, interior))
    coefficients[2:grid_size, :] = prefilter
    # Odd extension about each border node keeps the whole border line at zero.
    coefficients[0] = -coefficients[2]
    coefficients[-1] = -coefficients[-3]
    coefficients.flags.writeable = False
    return coefficients


@_cached
def spline_basis(length: int, grid_size: int) -> Float64Array:
    """Cubic B-spline weights of each pixel on the ``grid_size + 2`` coefficients of one axis.

    Args:
        length: Number of pixels along the axis.
        grid_size: Number of control nodes along the axis, border nodes included.

    Returns:
        A read-only ``(length, grid_size + 2)`` matrix (at most four non-zeros per row).
    """
    # Integer product first, so pixel length - 1 lands exactly on node grid_size - 1.
    node_position = np.arange(length, dtype=np.float64) * (grid_size - 1) / max(length - 1, 1)
    node_index = np.arange(-1, grid_size + 1, dtype=np.float64)
    basis = _cubic_bspline(node_position[:, None] - node_index[None, :])
    basis.flags.writeable = False
    return basis


@_cached
def displacement_basis(length: int, grid_size: int) -> Float64Array:
    """Weights of each pixel on the interior node values of one axis.

    Args:
        length: Number of pixels along the axis.
        grid_size: Number of control nodes along the axis, border nodes included (>= 3).

    Returns:
        A read-only ``(length, grid_size - 2)`` matrix ``spline_basis @ coefficient_matrix``;
        its first and last rows are exactly zero.
    """
    basis = spline_basis(length, grid_size) @ coefficient_matrix(grid_size)
    # Zero in exact arithmetic; a fused multiply-add could leave rounding residue.
    basis[[0, -1]] = 0.0
    basis.flags.writeable = False
    return basis
