"""data_flow throughput: process workers, pass-through overhead, and torch's DataLoader.

1. A CPU-heavy preprocessor (scipy.ndimage.gaussian_filter, sigma 3, on shuffled batches of
   64x1x256x256 float32): nb_proc_workers=2 against nb_proc_workers=0 (the one io thread
   preprocesses). Goal: >= 1.6x on 2 cores.
2. No preprocessor, shuffled batches of 64x3x64x64 float32 from an in-memory array: data_flow
   (default nb_io_workers=1, and 2) against plain fancy indexing ``X[indices]`` of the same
   batches in the consumer. Goal: >= 0.8.
3. Workload 1 through torch.utils.data.DataLoader(num_workers=2) with a BatchSampler over a
   RandomSampler (each worker reads and filters whole batches, like data_flow's workers),
   against data_flow with nb_proc_workers=2. Reported as data_flow / DataLoader throughput.
   Goal: >= 1.0. DataLoader runs with its default start method (fork on Linux, no pickling
   of the dataset), data_flow with spawn.
4. The cost of shared reads: a gaussian-noise preprocessor (float32 noise added in place) on
   shuffled batches of 64x3x64x64 float32 from an in-memory array, nb_proc_workers=2, with
   shared_reads=True (this process reads each batch and passes its rows through shared
   memory) against shared_reads=False (each process reads from the array, shared once).
   Reported as shared / separate throughput. Goal: >= 0.8.

Throughput is measured in steady state: the clock starts after the first batch, so worker
start-up (paid once per flow) is printed separately. Each figure is the best of ROUNDS
interleaved rounds (a shared machine's load comes and goes). Every library's own thread pool
is limited to one thread, so the worker counts are the only parallelism.
"""

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import itertools
import time

import numpy as np
import scipy.ndimage as ndi

from data_tools.io import data_flow

HEAVY_SHAPE = (1, 256, 256)
HEAVY_ELEMENTS = 512
HEAVY_BATCH = 64
HEAVY_BATCHES = 16
LIGHT_SHAPE = (3, 64, 64)
LIGHT_ELEMENTS = 4096
LIGHT_BATCH = 64
LIGHT_BATCHES = 400
NOISE_BATCHES = 200
ROUNDS = 5


def blur(batch):
    """The CPU-heavy preprocessor: a gaussian filter over each image of the batch."""
    (x,) = batch
    return (ndi.gaussian_filter(x, sigma=(0, 0, 3, 3)),)


def add_noise(batch, rng):
    """The shared-reads preprocessor: gaussian noise added in place."""
    (x,) = batch
    x += rng.standard_normal(size=x.shape, dtype=np.float32)
    return (x,)


class BlurredBatches:
    """torch Dataset: ``dataset[list_of_indices]`` reads and filters a whole batch."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, indices):
        return blur([self.data[np.sort(indices)]])[0]


def timed(batches, count):
    """Return (seconds to the first batch, batches per second over the next ``count``)."""
    start = time.perf_counter()
    next(batches)
    first = time.perf_counter()
    for _ in itertools.islice(batches, count):
        pass
    return first - start, count / (time.perf_counter() - first)


def run_flow(data, batch_size, count, **kwargs):
    with data_flow([data], batch_size, sample_random=True, seed=0, **kwargs) as flow:
        batches = flow.flow()
        try:
            return timed(batches, count)
        finally:
            batches.close()


def fancy_indexing(data, batch_size, count):
    order = np.random.default_rng(0).permutation(len(data))
    starts = itertools.cycle(range(0, len(data) - batch_size + 1, batch_size))
    return timed((data[order[s : s + batch_size]] for s in starts), count)


def run_dataloader(data, batch_size, count):
    import torch
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler

    torch.set_num_threads(1)
    sampler = BatchSampler(
        RandomSampler(range(len(data)), replacement=False), batch_size, drop_last=False
    )
    loader = DataLoader(
        BlurredBatches(data),
        batch_size=None,
        sampler=sampler,
        num_workers=2,
        prefetch_factor=2,
        persistent_workers=False,
    )

    def forever():
        while True:
            yield from loader

    batches = forever()
    try:
        return timed(batches, count)
    finally:
        batches.close()


def report(name, startup, rate, baseline_rate=None, goal=None):
    line = f"{name:<50} start {startup:5.2f} s {rate:8.1f} batches/s"
    if baseline_rate is not None:
        line += f"  ratio {rate / baseline_rate:5.2f}"
        if goal is not None:
            line += f" (goal >= {goal})"
    print(line, flush=True)


def main():
    rng = np.random.default_rng(0)
    heavy = rng.random((HEAVY_ELEMENTS, *HEAVY_SHAPE), dtype=np.float32)
    light = rng.random((LIGHT_ELEMENTS, *LIGHT_SHAPE), dtype=np.float32)
    measures = {
        "heavy procs 0": lambda: run_flow(
            heavy, HEAVY_BATCH, HEAVY_BATCHES, preprocessor=blur, nb_proc_workers=0
        ),
        "heavy procs 2": lambda: run_flow(
            heavy, HEAVY_BATCH, HEAVY_BATCHES, preprocessor=blur, nb_proc_workers=2
        ),
        "heavy DataLoader": lambda: run_dataloader(heavy, HEAVY_BATCH, HEAVY_BATCHES),
        "light fancy": lambda: fancy_indexing(light, LIGHT_BATCH, LIGHT_BATCHES),
        "light io 1": lambda: run_flow(light, LIGHT_BATCH, LIGHT_BATCHES, nb_io_workers=1),
        "light io 2": lambda: run_flow(light, LIGHT_BATCH, LIGHT_BATCHES, nb_io_workers=2),
        "noise separate": lambda: run_flow(
            light, LIGHT_BATCH, NOISE_BATCHES, preprocessor=add_noise, nb_proc_workers=2
        ),
        "noise shared": lambda: run_flow(
            light,
            LIGHT_BATCH,
            NOISE_BATCHES,
            preprocessor=add_noise,
            nb_proc_workers=2,
            shared_reads=True,
        ),
    }
    print(f"cores available: {len(os.sched_getaffinity(0))}; best of {ROUNDS} interleaved rounds")
    rounds = [{name: measure() for name, measure in measures.items()} for _ in range(ROUNDS)]
    best = {name: max((r[name] for r in rounds), key=lambda result: result[1]) for name in measures}

    print("1. CPU-heavy preprocessor (gaussian filter, 64x1x256x256 float32)")
    report("   data_flow nb_proc_workers=0 (baseline)", *best["heavy procs 0"])
    report("   data_flow nb_proc_workers=2", *best["heavy procs 2"], best["heavy procs 0"][1], 1.6)
    print("2. No preprocessor, shuffled, in memory (64x3x64x64 float32)")
    report("   X[indices] in the consumer (baseline)", *best["light fancy"])
    for io_workers in (1, 2):
        report(
            f"   data_flow nb_io_workers={io_workers}",
            *best[f"light io {io_workers}"],
            best["light fancy"][1],
            0.8,
        )
    print("3. Workload 1 through torch DataLoader(num_workers=2, BatchSampler)")
    report("   DataLoader num_workers=2 (baseline)", *best["heavy DataLoader"])
    report(
        "   data_flow nb_proc_workers=2 (as in 1.)",
        *best["heavy procs 2"],
        best["heavy DataLoader"][1],
        1.0,
    )
    print("4. Gaussian noise in 2 processes, in memory (64x3x64x64 float32)")
    report("   shared_reads=False (baseline)", *best["noise separate"])
    report("   shared_reads=True", *best["noise shared"], best["noise separate"][1], 0.8)


if __name__ == "__main__":
    main()
