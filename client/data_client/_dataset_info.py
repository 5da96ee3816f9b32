"""What a node says about its datasets, as the client returns it: DatasetInfo, ArrayInfo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from data_wire.v1 import data_node_pb2

__all__ = ["ArrayInfo", "DatasetInfo", "dataset_info"]


@dataclass(frozen=True)
class ArrayInfo:
    """One named array of a dataset.

    Attributes:
        name: Array name, e.g. "image", "mask" or "label".
        dtype: Element type (little-endian, as on the wire).
        shape: Shape of the whole array; ``shape[0]`` is the dataset length.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]


@dataclass(frozen=True)
class DatasetInfo:
    """What a node says about one dataset.

    Attributes:
        name: Dataset name as configured on the node.
        length: Number of samples.
        arrays: The arrays iterated in tandem, in the order every batch carries them.
        classes: Class numbers of the "label" array when the dataset has a class list; else ().
        registered: Registered at run time (``register_dataset`` or a build job's
            ``register_as``; removable with ``remove_dataset``), else from the node's config
            file. Default False.
    """

    name: str
    length: int
    arrays: tuple[ArrayInfo, ...]
    classes: tuple[int, ...]
    registered: bool = False


def dataset_info(description: data_node_pb2.DatasetDescription) -> DatasetInfo:
    """The ``DatasetInfo`` of a node's DatasetDescription."""
    return DatasetInfo(
        name=description.name,
        length=description.length,
        arrays=tuple(
            ArrayInfo(name=array.name, dtype=np.dtype(array.dtype), shape=tuple(array.shape))
            for array in description.arrays
        ),
        classes=tuple(description.classes),
        registered=description.origin == data_node_pb2.DATASET_ORIGIN_REGISTERED,
    )
