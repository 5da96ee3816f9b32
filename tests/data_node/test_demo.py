"""`make demo` (python -m data_node.demo) runs end to end on a small generated dataset."""

from __future__ import annotations

import h5py
import numpy as np
from leak_check import assert_no_leaks

from data_node.demo import main, make_disks


def test_demo_streams_one_epoch_and_cleans_up(capsys):
    with assert_no_leaks():
        assert main(["--images", "40", "--size", "32", "--batch-size", "8", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "serves 'disks': 40 samples" in out
    assert "streamed 5 augmented batches" in out


def test_make_disks_writes_images_and_matching_masks(tmp_path):
    make_disks(tmp_path / "d.h5", 4, 24)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        image, mask = f["image"][:], f["mask"][:]
    assert image.shape == mask.shape == (4, 1, 24, 24)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert image[mask == 1].mean() > image[mask == 0].mean() + 0.5
