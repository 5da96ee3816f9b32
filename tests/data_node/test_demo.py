"""`make demo` (python -m data_node.demo) runs end to end on a small generated dataset."""

from __future__ import annotations

import h5py
import numpy as np
import SimpleITK as sitk  # noqa: N813
from leak_check import assert_no_leaks

from data_node.demo import main, make_disks


def test_demo_streams_one_epoch_writes_a_preview_and_cleans_up(capsys, tmp_path):
    preview = tmp_path / "preview.png"
    argv = ["--images", "40", "--size", "32", "--batch-size", "8", "--workers", "1"]
    with assert_no_leaks():
        assert main([*argv, "--preview", str(preview)]) == 0
    out = capsys.readouterr().out
    assert "serves 'disks': 40 samples" in out
    assert "streamed 5 augmented batches" in out
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
