"""``python -m data_node.demo``: a node on a generated dataset, streamed to a client.

Generates a small synthetic image-and-mask dataset (bright disks on noise) in a temporary
directory, starts a data node on a free loopback port, streams one augmented, shuffled
epoch to a client with a progress bar, prints the time to the first batch (the node's
workers starting) apart from the steady rate after it (batches/s and MB/s), writes a
preview grid of the first samples (each augmented image beside its original, the mask in
colour; see ``DataNodeClient.preview``) and prints its path, stops the node and removes the
directory. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from data_client import DataNodeClient
from data_node.config import load
from data_node.server import build_server

__all__ = ["main", "make_disks"]

AUGMENT = {
    "x_array": "image",
    "y_array": "mask",
    "rotation_range": 15.0,
    "width_shift_range": 0.1,
    "height_shift_range": 0.1,
    "zoom_range": 0.1,
    "horizontal_flip": True,
    "spline_warp": True,
    "warp_sigma": 2.0,
    "warp_grid_size": 4,
}


def make_disks(path: Path, num_images: int, size: int, seed: int = 0) -> None:
    """Write ``num_images`` noisy (1, size, size) float32 images of disks and their masks."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    images = rng.normal(0.0, 0.2, (num_images, 1, size, size)).astype(np.float32)
    masks = np.zeros((num_images, 1, size, size), dtype=np.uint8)
    for image, mask in zip(images, masks, strict=True):
        for _ in range(3):
            centre = rng.uniform(0.2 * size, 0.8 * size, 2)
            radius = rng.uniform(0.05 * size, 0.2 * size)
            disk = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2
            image[0][disk] += 1.0
            mask[0][disk] = 1
    chunks = (min(16, num_images), 1, size, size)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=images, chunks=chunks)
        f.create_dataset("mask", data=masks, chunks=chunks)


class _Timing:
    """When a stream's batches arrived: the first apart from the steady rate after it.

    The first batch waits for the node's worker processes to start (seconds), so a rate over
    the whole epoch would understate the steady rate of a long training run.
    """

    def __init__(self, start: float) -> None:
        self._start = start
        self._first: float | None = None
        self._last = start
        self._num_batches = 0
        self._steady_bytes = 0

    def batch(self, now: float, nbytes: int) -> None:
        """Count a batch of ``nbytes`` received at ``now`` (``time.perf_counter()``)."""
        if self._first is None:
            self._first = now
        else:
            self._steady_bytes += nbytes
        self._last = now
        self._num_batches += 1

    def report(self) -> list[str]:
        """The lines the demo prints: batches and total time, first batch, steady rate."""
        elapsed = self._last - self._start
        lines = [f"streamed {self._num_batches} augmented batches in {elapsed:.2f} s"]
        if self._first is None:
            return lines
        lines.append(f"first batch after {self._first - self._start:.2f} s (workers starting)")
        steady = self._last - self._first
        if self._num_batches > 1 and steady > 0:
            lines.append(
                f"steady rate after the first batch: {(self._num_batches - 1) / steady:.1f} "
                f"batches/s, {self._steady_bytes / steady / 1e6:.1f} MB/s"
            )
        return lines


def _write_config(root: Path) -> Path:
    config = root / "node.toml"
    config.write_text(
        textwrap.dedent(
            """
            [node]
            listen = "127.0.0.1:0"
            data_root = "data"

            [datasets.disks.arrays]
            image = { path = "disks.h5", key = "image" }
            mask = { path = "disks.h5", key = "mask" }
            """
        )
    )
    return config


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="dataset size (default 512)")
    parser.add_argument("--size", type=int, default=128, help="image edge (default 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32")
    parser.add_argument("--workers", type=int, default=2, help="node processes (default 2)")
    parser.add_argument(
        "--preview",
        type=Path,
        default=Path(tempfile.gettempdir()) / "data_tools-demo-preview.png",
        help="where the preview PNG goes (default: in the temp dir)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="data_tools-demo-") as tmp:
        root = Path(tmp)
        print(f"generating {args.images} images of {args.size}x{args.size} in {root}")
        (root / "data").mkdir()
        make_disks(root / "data" / "disks.h5", args.images, args.size)
        node, port = build_server(load(_write_config(root)), "127.0.0.1:0")
        node.start()
        try:
            with DataNodeClient(f"127.0.0.1:{port}") as client:
                info = client.describe("disks")
                print(
                    f"node on 127.0.0.1:{port} serves {info.name!r}: {info.length} samples, "
                    + ", ".join(f"{a.name} {a.dtype} {a.shape[1:]}" for a in info.arrays)
                )
                stream = client.stream(
                    "disks",
                    args.batch_size,
                    sample_random=True,
                    seed=0,
                    augmentation=AUGMENT,
                    nb_proc_workers=args.workers,
                )
                start = time.perf_counter()
                timing = _Timing(start)
                for batch in tqdm(
                    stream, desc="epoch 0", unit="batch", total=-(-info.length // args.batch_size)
                ):
                    timing.batch(time.perf_counter(), sum(array.nbytes for array in batch))
                shown = client.preview(
                    "disks", args.preview, 8, sample_random=True, seed=0, augmentation=AUGMENT
                )
        finally:
            node.stop(None)
    for line in timing.report():
        print(line)
    print(f"preview of {len(shown.indices)} augmented samples beside their originals: {shown.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
