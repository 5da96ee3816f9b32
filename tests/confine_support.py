"""Files under a data root whose content reads from outside it, one per kind of escape.

Each escape's data, read naively, is ``SECRET`` (4 x 8 x 8 float32 of 777s), kept in a
directory beside the data root; a test checks the node refuses each and that no client
ever sees a 777.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import SimpleITK
import zarr

SECRET = np.full((4, 8, 8), 777.0, dtype=np.float32)
INSIDE = np.arange(SECRET.size, dtype=np.float32).reshape(SECRET.shape)

# name -> (file under the data root, key); the medical header is only a job input.
ESCAPES = {
    "hdf5-external-link": ("extlink.h5", "image"),
    "hdf5-virtual-dataset": ("virtual.h5", "image"),
    "hdf5-external-storage": ("extraw.h5", "image"),
    "zarr-array-dir-symlink": ("arraylink.zarr", "image"),
    "zarr-chunk-symlink": ("chunklink.zarr", "image"),
}
MHD_ABSOLUTE = "absolute.mhd"


def write_outside(outside: Path) -> None:
    """The secret, in every form an escape reaches for."""
    outside.mkdir(parents=True, exist_ok=True)
    with h5py.File(outside / "secret.h5", "w") as file:
        file["image"] = SECRET
    SECRET.tofile(outside / "secret.raw")
    group = zarr.open_group(str(outside / "secret.zarr"), mode="w")
    group.create_array("image", data=SECRET, chunks=(2, 8, 8))


def write_escapes(data: Path, outside: Path) -> None:
    """Every escape of ``ESCAPES`` (and ``MHD_ABSOLUTE``) under ``data``, to ``outside``."""
    write_outside(outside)
    data.mkdir(parents=True, exist_ok=True)
    secret_h5 = str(outside / "secret.h5")
    with h5py.File(data / "extlink.h5", "w") as file:
        file["image"] = h5py.ExternalLink(secret_h5, "image")
    with h5py.File(data / "virtual.h5", "w") as file:
        layout = h5py.VirtualLayout(SECRET.shape, SECRET.dtype)
        layout[:] = h5py.VirtualSource(secret_h5, "image", SECRET.shape)
        file.create_virtual_dataset("image", layout)
    with h5py.File(data / "extraw.h5", "w") as file:
        external = [(str(outside / "secret.raw"), 0, SECRET.nbytes)]
        file.create_dataset("image", SECRET.shape, SECRET.dtype, external=external)
    zarr.open_group(str(data / "arraylink.zarr"), mode="w")
    (data / "arraylink.zarr" / "image").symlink_to(outside / "secret.zarr" / "image")
    write_inside_zarr(data / "chunklink.zarr")
    chunk = data / "chunklink.zarr" / "image" / "c" / "0" / "0" / "0"
    chunk.unlink()
    chunk.symlink_to(outside / "secret.zarr" / "image" / "c" / "0" / "0" / "0")
    write_mhd(data / MHD_ABSOLUTE, str(outside / "secret.raw"))


def write_inside_zarr(path: Path) -> None:
    """A zarr group with array ``image`` (``INSIDE``), laid out as the secret's."""
    group = zarr.open_group(str(path), mode="w")
    group.create_array("image", data=INSIDE, chunks=(2, 8, 8))


def write_mhd(header: Path, data_file: str) -> None:
    """A MetaImage header of a SECRET-shaped float image whose data is ``data_file``."""
    header.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 8 8 4\nElementType = MET_FLOAT\n"
        f"ElementByteOrderMSB = False\nElementDataFile = {data_file}\n"
    )


def write_image(path: Path, array: np.ndarray) -> None:
    SimpleITK.WriteImage(SimpleITK.GetImageFromArray(array), str(path))


def swap_for_symlink(path: Path, target: Path) -> None:
    """Replace ``path`` by a symlink to ``target``: a file in one step (renamed over), a
    directory in two (moved aside to ``<name>.old``, then the symlink renamed in)."""
    link = path.with_name(path.name + ".swap")
    link.symlink_to(target)
    if path.is_dir():
        path.rename(path.with_name(path.name + ".old"))
    os.replace(link, path)
