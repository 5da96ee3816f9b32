"""Preview grids end to end: a real node, the client's preview, the PNG decoded by SimpleITK.

Matrix: encode_png round-trips random images through an independent decoder (ITK's libpng);
a preview of an augmented, shuffled stream with a two-class mask: every original tile is the
sample's grey window with each class's overlay colour exactly where its mask is set and
plain grey elsewhere, every augmented tile likewise for the augmented sample and mask the
trainer's stream yields (same seed, epoch, augmentation, case selection), the background
between tiles; epoch and cases pick the trainer's samples; a dataset without a mask has no
colour anywhere; bad arguments are named; the CLI writes the file and prints its path, and
refuses a malformed --augmentation; no temporary file is left.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from data_client import DataNodeClient, FileArray, InvalidArgumentError
from data_client._png import encode_png
from data_client.cli import main as client_main
from data_client.preview import BACKGROUND, CLASS_COLOURS, MASK_ALPHA

SIDE = 16
CASE = np.repeat(np.arange(6), 4)
N = len(CASE)
AUGMENT = {
    "x_array": "image",
    "y_array": "mask",
    "rotation_range": 40.0,
    "horizontal_flip": True,
    "zoom_range": 0.2,
}


def decode(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def segmented(node_dir, node):
    """Register "segmented": image (N, 1, 16, 16), mask (N, 16, 16) of classes 1 and 2, case."""
    root, _ = node_dir
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:SIDE, :SIDE]
    image = (rows + cols)[np.newaxis, np.newaxis].astype(np.float32) + rng.random(
        (N, 1, SIDE, SIDE), np.float32
    )
    mask = np.zeros((N, SIDE, SIDE), np.uint8)
    for k in range(N):
        top, left = rng.integers(0, SIDE - 6, 2)
        mask[k, top : top + 5, left : left + 4] = 1
        mask[k, SIDE - 3 :, : 3 + k % 5] = 2
    with h5py.File(root / "data" / "segmented.h5", "w") as f:
        f["image"], f["mask"], f["case"] = image, mask, CASE
    with DataNodeClient(f"127.0.0.1:{node[1]}") as client:
        arrays = {key: FileArray("segmented.h5", key) for key in ("image", "mask", "case")}
        client.register_dataset("segmented", arrays, replace=True)
    return image, mask


def expected_tile(image, mask, low, high):
    grey = np.rint(np.clip((image[0].astype(np.float64) - low) / (high - low), 0, 1) * 255)
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=2)
    for value in (1, 2):
        where = np.rint(mask).astype(int) == value
        colour = np.array(CLASS_COLOURS[value - 1], np.float64)
        rgb[where] = np.rint((1 - MASK_ALPHA) * rgb[where] + MASK_ALPHA * colour)
    return rgb.astype(np.uint8)


def tile_at(png, corner, scale):
    row, column = corner
    return png[row : row + SIDE * scale, column : column + SIDE * scale]


def test_encode_png_round_trips_through_an_independent_decoder(tmp_path):
    rng = np.random.default_rng(1)
    for shape in ((1, 1, 3), (7, 13, 3), (64, 33, 3)):
        rgb = rng.integers(0, 256, shape, dtype=np.uint8)
        (tmp_path / "x.png").write_bytes(encode_png(rgb))
        np.testing.assert_array_equal(decode(tmp_path / "x.png").reshape(shape), rgb)
    with pytest.raises(ValueError, match=r"Expected a non-empty \(H, W, 3\) uint8 image"):
        encode_png(np.zeros((4, 4), np.uint8))


def test_tiles_show_the_original_and_the_trainers_sample_with_the_mask_in_colour(
    client, segmented, tmp_path
):
    image, mask = segmented
    request = {"sample_random": True, "seed": 4, "augmentation": AUGMENT, "cases": "1-4"}
    shown = client.preview("segmented", tmp_path / "grid.png", 6, epoch=1, columns=4, **request)
    png = decode(shown.path)
    with client.stream("segmented", 6, epochs=2, **request) as stream:
        trainer = [(stream.epoch, stream.indices.copy(), [np.array(a) for a in b]) for b in stream]
    epoch_one = [(indices, arrays) for epoch, indices, arrays in trainer if epoch == 1]
    indices, (augmented, augmented_mask, _) = epoch_one[0]
    assert shown.indices == tuple(indices.tolist())
    assert (shown.epoch, shown.seed, shown.scale) == (1, 4, 128 // SIDE)
    assert set(CASE[indices].tolist()) <= {1, 2, 3, 4}
    scale = shown.scale
    coloured = 0
    for k, index in enumerate(indices):
        low, high = float(image[index, 0].min()), float(image[index, 0].max())
        original_corner, augmented_corner = shown.boxes[k]
        want = expected_tile(image[index], mask[index], low, high)
        got = tile_at(png, original_corner, scale)
        np.testing.assert_array_equal(got[::scale, ::scale], want)
        np.testing.assert_array_equal(got, np.repeat(np.repeat(want, scale, 0), scale, 1))
        want = expected_tile(augmented[k], augmented_mask[k], low, high)
        got = tile_at(png, augmented_corner, scale)[::scale, ::scale]
        np.testing.assert_array_equal(got, want)
        grey = (got[..., 0] == got[..., 1]) & (got[..., 1] == got[..., 2])
        np.testing.assert_array_equal(~grey, augmented_mask[k] != 0)  # colour only on the mask
        coloured += int((~grey).sum())
    assert coloured > 0
    # Between the tiles: the background colour.
    np.testing.assert_array_equal(png[0, 0], BACKGROUND)
    row, column = shown.boxes[0][1]
    np.testing.assert_array_equal(png[row, column - 1], BACKGROUND)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_a_dataset_without_a_mask_has_no_colour(client, segmented, tmp_path):
    shown = client.preview(
        "classes",  # image and label: no mask
        tmp_path / "classes.png",
        3,
        augmentation={"x_array": "image", "rotation_range": 10.0},
        seed=0,
        scale=2,
    )
    png = decode(shown.path)
    for corners in shown.boxes:
        for corner in corners:
            tile = tile_at(png, corner, 2)
            assert (tile[..., 0] == tile[..., 1]).all()
            assert (tile[..., 1] == tile[..., 2]).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"image_array": "nope"}, ValueError, r"image_array to name an array of 'segmented'"),
        ({"mask_array": "nope"}, ValueError, "mask_array"),
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"columns": 0}, ValueError, "columns"),
        ({"scale": 0}, ValueError, "scale"),
    ],
)
def test_bad_arguments_are_named(client, segmented, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        client.preview("segmented", tmp_path / "x.png", **kwargs)
    assert not (tmp_path / "x.png").exists()


def test_the_cli_writes_a_preview_and_prints_its_path(node, segmented, tmp_path, capsys):
    out = tmp_path / "cli.png"
    argv = ["preview", "--address", f"127.0.0.1:{node[1]}", "--dataset", "segmented"]
    augment = '{"x_array": "image", "y_array": "mask", "vertical_flip": true}'
    code = client_main(
        [
            *argv,
            "--out",
            str(out),
            "--num-samples",
            "5",
            "--seed",
            "2",
            "--cases",
            "0-1",
            "--augmentation",
            augment,
            "--columns",
            "2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip().endswith(f"to {out}")
    png = decode(out)
    scale = 128 // SIDE
    pair = 2 * SIDE * scale + 3 * 4
    assert png.shape == (4 + 3 * (SIDE * scale + 4), 4 + 2 * pair, 3)  # 5 pairs, 2 per row
    with pytest.raises(SystemExit, match="2"):
        client_main([*argv, "--out", str(out), "--augmentation", "[1]"])
    assert "Expected a JSON object" in capsys.readouterr().err


def test_start_epoch_is_where_a_cursor_at_that_epoch_resumes(client, segmented):
    request = {"sample_random": True, "seed": 8, "augmentation": AUGMENT, "epochs": 3}
    with client.stream("segmented", 5, **request) as stream:
        full = [(stream.epoch, stream.indices.copy(), np.array(b[0])) for b in stream]
    with client.stream("segmented", 5, start_epoch=2, **request) as stream:
        late = [(stream.epoch, stream.indices.copy(), np.array(b[0])) for b in stream]
    assert len(late) == len([item for item in full if item[0] == 2])
    for (epoch, indices, image), (want_epoch, want_indices, want_image) in zip(
        late, full[-len(late) :], strict=True
    ):
        assert epoch == want_epoch == 2
        np.testing.assert_array_equal(indices, want_indices)
        np.testing.assert_array_equal(image, want_image)
    with pytest.raises(InvalidArgumentError, match=r"start_epoch: Expected an epoch below epochs"):
        next(iter(client.stream("segmented", 5, start_epoch=3, **request)))
    with client.stream("segmented", 5, **request) as stream:
        next(stream)
        cursor = stream.cursor_bytes()
    with pytest.raises(InvalidArgumentError, match=r"start_epoch: Expected 0 with resume"):
        next(iter(client.stream("segmented", 5, start_epoch=1, resume=cursor, **request)))
