"""`make demo` (python -m data_node.demo) runs end to end on a small generated dataset.

Matrix: one epoch streamed, a preview written, nothing leaked; the output names the time to
the first batch and the steady rate after it apart (and their arithmetic, on given times);
the demo runs with no extra installed (torch and dask made unimportable); make_disks.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import h5py
import numpy as np
import SimpleITK as sitk  # noqa: N813
from leak_check import assert_no_leaks

from data_node.demo import _Timing, main, make_disks


def test_demo_streams_one_epoch_writes_a_preview_and_cleans_up(capsys, tmp_path):
    preview = tmp_path / "preview.png"
    argv = ["--images", "40", "--size", "32", "--batch-size", "8", "--workers", "1"]
    with assert_no_leaks():
        assert main([*argv, "--preview", str(preview)]) == 0
    out = capsys.readouterr().out
    assert "serves 'disks': 40 samples" in out
    assert "streamed 5 augmented batches" in out
    assert re.search(r"^first batch after \d+\.\d\d s \(workers starting\)$", out, re.MULTILINE)
    steady = re.search(
        r"^steady rate after the first batch: (\S+) batches/s, (\S+) MB/s$", out, re.MULTILINE
    )
    assert steady, out
    assert float(steady.group(1)) > 0
    assert float(steady.group(2)) > 0
    assert out.splitlines()[-1] == (
        f"preview of 8 augmented samples beside their originals: {preview}"
    )
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(preview)))
    assert png.shape[2] == 3
    assert (png[..., 0] != png[..., 1]).any()  # the disks' mask drawn in colour


def test_make_disks_writes_images_and_matching_masks(tmp_path):
    make_disks(tmp_path / "d.h5", 4, 24)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        image, mask = f["image"][:], f["mask"][:]
    assert image.shape == mask.shape == (4, 1, 24, 24)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert image[mask == 1].mean() > image[mask == 0].mean() + 0.5


def test_timing_reports_the_first_batch_apart_from_the_steady_rate():
    timing = _Timing(10.0)
    timing.batch(13.0, 1_000_000)  # workers starting: 3 s
    for second in (13.5, 14.0, 14.5, 15.0):
        timing.batch(second, 2_000_000)
    assert timing.report() == [
        "streamed 5 augmented batches in 5.00 s",
        "first batch after 3.00 s (workers starting)",
        "steady rate after the first batch: 2.0 batches/s, 4.0 MB/s",
    ]
    one = _Timing(0.0)
    one.batch(2.0, 10)
    assert one.report() == [
        "streamed 1 augmented batches in 2.00 s",
        "first batch after 2.00 s (workers starting)",
    ]
    assert _Timing(0.0).report() == ["streamed 0 augmented batches in 0.00 s"]


def test_the_demo_needs_no_extra(tmp_path):
    """`make demo` installs no extra: the demo runs with torch and dask unimportable."""
    code = (
        "import sys\n"
        "for name in ('torch', 'dask', 'distributed'):\n"
        "    sys.modules[name] = None\n"
        "from data_node.demo import main\n"
        "sys.exit(main(['--images', '16', '--size', '16', '--batch-size', '8',"
        f" '--workers', '1', '--preview', {str(tmp_path / 'p.png')!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "steady rate after the first batch" in done.stdout
