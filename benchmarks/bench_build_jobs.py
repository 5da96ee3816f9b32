"""Patch-dataset build throughput: the local executor against Dask and the writer's ceiling.

A 64-slice 256x256 float32 volume with a mask whose class 1 is a 40x80 box in every slice;
the job extracts the 204,800 class-1 patches of 16x16 (200 MiB of float32) into zarr
(batchsize 32, the writers' default blosc lz4), in slice order and in random order, through
the code a job process runs (data_node.jobs._build.build):

- local: create_dataset in one process (the "local" executor);
- dask: tasks of 16 MiB of patches on a distributed.LocalCluster of 2 single-threaded
  worker processes (the "dask" executor; cluster start-up not timed, connecting is);
- ceiling: zarr_array_writer writing the same number of ready-made patches (same bytes,
  same chunks and compressor) in blocks of 4096: what the writer alone sustains.

Each is timed once per order (best of ROUNDS for the ceiling); patches per second and the
ratio to the local executor are printed.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
from distributed import LocalCluster

from data_node.jobs._build import ArraySpec, BuildSpec, build
from data_tools.io import zarr_array_writer

SLICES, SIDE, PATCHSIZE = 64, 256, 16
BOX = (slice(100, 140), slice(80, 160))
ROUNDS = 2


def spec(volume, mask, *, random_order: bool, executor: str, address: str | None) -> BuildSpec:
    return BuildSpec(
        volume=ArraySpec(array=volume),
        mask=ArraySpec(array=mask),
        patchsize=PATCHSIZE,
        class_list=(1,),
        random_order=random_order,
        batchsize=32,
        max_patches_per_class=None,
        file_format="zarr",
        writer_options={},
        slice_axis=0,
        seed=0,
        executor=executor,
        scheduler_address=address,
    )


def timed_build(build_spec: BuildSpec, directory: Path) -> tuple[float, int]:
    start = time.perf_counter()
    counts = build(build_spec, directory, lambda totals: None, lambda written: None)
    return time.perf_counter() - start, counts[1]


def ceiling(count: int, directory: Path) -> float:
    patches = np.random.default_rng(1).random((4096, 1, PATCHSIZE, PATCHSIZE), dtype=np.float32)
    best = float("inf")
    for round_number in range(ROUNDS):
        path = directory / f"ceiling-{round_number}.zarr"
        start = time.perf_counter()
        with zarr_array_writer((1, PATCHSIZE, PATCHSIZE), np.float32, 32, path, "class_1") as out:
            for first in range(0, count, len(patches)):
                out.buffered_write(patches[: min(len(patches), count - first)])
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    volume = rng.random((SLICES, SIDE, SIDE), dtype=np.float32)
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[:, BOX[0], BOX[1]] = 1
    with (
        tempfile.TemporaryDirectory() as tmp,
        dask.config.set({"temporary-directory": tmp}),
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
    ):
        directory = Path(tmp)
        count = int(mask.sum())
        print(f"{count} patches of {PATCHSIZE}x{PATCHSIZE} ({count * PATCHSIZE**2 * 4 >> 20} MiB)")
        ceiling_rate = count / ceiling(count, directory)
        for random_order in (False, True):
            order = "random" if random_order else "ordered"
            local_time, written = timed_build(
                spec(volume, mask, random_order=random_order, executor="local", address=None),
                directory / f"local-{order}",
            )
            assert written == count
            dask_time, written = timed_build(
                spec(
                    volume,
                    mask,
                    random_order=random_order,
                    executor="dask",
                    address=cluster.scheduler_address,
                ),
                directory / f"dask-{order}",
            )
            assert written == count
            local_rate, dask_rate = count / local_time, count / dask_time
            print(f"{order:>7} local executor : {local_rate:10,.0f} patches/s  (1.00)")
            print(
                f"{order:>7} dask, 2 workers: {dask_rate:10,.0f} patches/s  "
                f"({dask_rate / local_rate:.2f} x local)"
            )
            print(
                f"{order:>7} writer ceiling : {ceiling_rate:10,.0f} patches/s  "
                f"({ceiling_rate / local_rate:.2f} x local)"
            )


if __name__ == "__main__":
    main()
