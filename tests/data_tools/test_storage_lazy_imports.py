"""Storage backends load lazily: a process reading HDF5, and its data_flow worker, import
neither zarr nor bcolz (each checked in a fresh interpreter, since this one imported both).

Matrix: importing the library (data_tools.io, wrap, patches, medical, chunk_cache, storage)
imports no format library at all x a data_flow over an HDF5 source with one worker process:
zarr and bcolz absent from sys.modules in the worker (reported per batch by the preprocessor)
and in the reading process after the flow ends x opening a zarr array imports zarr (the check
can fail).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

FLOW = """
import json, sys
import h5py, numpy as np
from data_tools.io import data_flow
from data_tools.storage import open_source
from storage_support import format_libraries_loaded

with h5py.File(sys.argv[1], "w") as file:
    file.create_dataset("x", data=np.arange(40, dtype=np.float32).reshape(20, 2), chunks=(5, 2))
source = open_source("hdf5", sys.argv[1], "x", None)
flow = data_flow([source], 5, nb_proc_workers=1, loop_forever=False,
                 preprocessor=format_libraries_loaded)
with flow:
    worker = [batch[1].tolist() for batch in flow.flow()]
here = [name in sys.modules for name in ("zarr", "bcolz")]
print(json.dumps({"worker": worker, "here": here}))
"""


def _run(code, *args):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_the_library_imports_no_format_library():
    loaded = _run(
        "import json, sys\n"
        "import data_tools.io, data_tools.wrap, data_tools.patches, data_tools.medical\n"
        "import data_tools.chunk_cache, data_tools.storage\n"
        "print(json.dumps([m for m in ('h5py', 'zarr', 'bcolz', 'SimpleITK') if m in sys.modules]))"
    )
    assert loaded == []


def test_an_hdf5_worker_imports_neither_zarr_nor_bcolz(tmp_path):
    seen = _run(FLOW, str(tmp_path / "x.h5"))
    assert len(seen["worker"]) == 4  # 20 rows, batches of 5
    assert all(flags == [0, 0] for batch in seen["worker"] for flags in batch)
    assert seen["here"] == [False, False]


def test_opening_a_zarr_array_imports_zarr(tmp_path):
    import zarr

    zarr.create_array(store=str(tmp_path / "y.zarr"), shape=(4,), dtype="i8")
    loaded = _run(
        "import json, sys\n"
        "from data_tools.storage import open_source\n"
        "open_source('zarr', sys.argv[1], '', None)\n"
        "print(json.dumps([m for m in ('zarr', 'bcolz') if m in sys.modules]))",
        str(tmp_path / "y.zarr"),
    )
    assert loaded == ["zarr"]
