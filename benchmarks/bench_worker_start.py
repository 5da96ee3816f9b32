"""Worker start cost: importing the library, and a one-process data_flow over HDF5 to its first batch.

Each measurement runs in a fresh interpreter (``sys.executable``, so running this file with
another checkout's Python measures that checkout): the wall time of ``import data_tools.io``,
and, in a script that has already imported what it needs, the seconds from constructing a
``data_flow([hdf5 source], nb_proc_workers=1)`` to its first batch (the worker process
starts, imports the library, opens the file, reads and sends the batch). It also prints
which of h5py, zarr and bcolz the worker imported. Median of ROUNDS runs each.
Goal: the figures after the storage backends (lazy imports) <= the figures before.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROUNDS = 7

FIRST_BATCH = """
import json, sys, time
import h5py, numpy as np
from data_tools.io import data_flow

def loaded(batch):
    return (batch[0], np.array([[m in sys.modules for m in ("h5py", "zarr", "bcolz")]] * len(batch[0])))

if __name__ == "__main__":
    with h5py.File(sys.argv[1], "r") as file:
        flow = data_flow([file["x"]], 8, nb_proc_workers=1, loop_forever=False, preprocessor=loaded)
        start = time.perf_counter()
        with flow:
            batch = next(iter(flow.flow()))
            seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "worker_imports": batch[1][0].tolist()}))
"""


def import_seconds() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import data_tools.io"], check=True)
    return time.perf_counter() - start


def first_batch(script: Path, data: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(script), str(data)], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def main() -> None:
    import h5py
    import numpy as np

    with tempfile.TemporaryDirectory() as directory:
        data, script = Path(directory) / "x.h5", Path(directory) / "first_batch.py"
        with h5py.File(data, "w") as file:
            file.create_dataset("x", data=np.zeros((64, 32, 32), np.float32), chunks=(8, 32, 32))
        script.write_text(FIRST_BATCH)
        imports = [import_seconds() for _ in range(ROUNDS)]
        runs = [first_batch(script, data) for _ in range(ROUNDS)]
    import data_tools

    print(f"data_tools: {Path(data_tools.__file__).parent}")
    print(f"import data_tools.io: median {statistics.median(imports):.3f} s over {ROUNDS} runs")
    seconds = [float(run["seconds"]) for run in runs]
    print(f"data_flow(nb_proc_workers=1) to first batch: median {statistics.median(seconds):.3f} s")
    flags = dict(zip(("h5py", "zarr", "bcolz"), runs[0]["worker_imports"], strict=True))
    print(f"imported by the worker: {[name for name, loaded in flags.items() if loaded]}")


if __name__ == "__main__":
    main()
