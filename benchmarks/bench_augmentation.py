"""Augmentation speed on one core: ours (OpenCV, one resampling) against the reference approach.

The reference approach is re-created here as the original data_tools did it: an affine by
scipy.ndimage.affine_transform per channel with order 0, then, for the spline warp, a SimpleITK
BSplineTransform turned into a displacement field and applied by WarpImageFilter per channel.
Both sides get the same drawn parameters; ours interpolates x bilinearly, y by nearest.

The per-sample map (``SampleAugmentation``, what a data node runs for a stream: options parsed
once, each sample drawn and applied straight into the output batch) is compared with what the
node did before it: ``image_random_transform`` per sample (options parsed each time), then
``np.stack``; on 256x256 and on 32x32 images, where the per-sample overhead shows.
"""

import os

# One core for every library (set before numpy and OpenCV load their thread pools).
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import statistics
import time

import cv2
import numpy as np
import scipy.ndimage as ndi
import SimpleITK as sitk  # noqa: N813

from data_tools.data_augmentation import (
    SampleAugmentation,
    image_random_transform,
    image_stack_random_transform,
    parse_augmentation_spec,
)
from data_tools.data_augmentation._bspline import coefficient_matrix
from data_tools.data_augmentation._functional import inverse_affine
from data_tools.data_augmentation._params import draw, parse_spec

SIZE = 256
NUM_IMAGES = 100
BATCH = 64
AFFINE = {
    "rotation_range": 25.0,
    "width_shift_range": 0.1,
    "height_shift_range": 0.1,
    "shear_range": 10.0,
    "zoom_range": 0.2,
    "horizontal_flip": True,
    "vertical_flip": True,
    "fill_mode": "reflect",
}
WARP = {**AFFINE, "spline_warp": True, "warp_sigma": 3.0, "warp_grid_size": 5}
SPEC_DEFAULTS = {
    "intensity_shift_range": 0.0,
    "cval_x": 0.0,
    "cval_y": 0.0,
    "spline_warp": False,
    "warp_sigma": 0.1,
    "warp_grid_size": 3,
    "crop_size": None,
    "order_x": 1,
    "order_y": 0,
}


def reference_transform(x, y, params, warp):
    """The reference approach: scipy affine per channel (order 0), then a SimpleITK warp."""
    matrix = inverse_affine(params, x.shape[1:])
    # scipy works in (row, col): swap the axes of our (col, row) matrix.
    linear = matrix[::-1, 1::-1]
    offset = matrix[::-1, 2]
    x = np.stack([ndi.affine_transform(c, linear, offset, order=0, mode="reflect") for c in x])
    y = np.stack([ndi.affine_transform(c, linear, offset, order=0, mode="reflect") for c in y])
    if warp:
        field = _sitk_field(params, x.shape[1:])
        x = _sitk_warp(x, field, sitk.sitkLinear)
        y = _sitk_warp(y, field, sitk.sitkNearestNeighbor)
    return x, y


def _sitk_field(params, shape):
    rows, cols = shape
    grid = params.warp_grid_size
    interior = grid - 2
    jitter = np.asarray(params.warp).reshape(2, interior, interior)
    q = coefficient_matrix(grid)
    transform = sitk.BSplineTransform(2, 3)
    transform.SetTransformDomainOrigin((0.0, 0.0))
    transform.SetTransformDomainPhysicalDimensions((cols - 1.0, rows - 1.0))
    transform.SetTransformDomainMeshSize((grid - 1, grid - 1))
    transform.SetParameters(np.concatenate([(q @ j @ q.T).ravel() for j in jitter[::-1]]).tolist())
    field_filter = sitk.TransformToDisplacementFieldFilter()
    field_filter.SetReferenceImage(sitk.Image(cols, rows, sitk.sitkFloat32))
    return sitk.GetArrayFromImage(field_filter.Execute(transform))


def _sitk_warp(images, field, interpolator):
    # Pad by the largest displacement so the fill mode applies, as the original code did.
    pad = int(np.ceil(np.abs(field).max()))
    padded_field = np.pad(field, [(pad, pad), (pad, pad), (0, 0)])
    field_image = sitk.GetImageFromArray(padded_field.astype(np.float64), isVector=True)
    warp_filter = sitk.WarpImageFilter()
    warp_filter.SetInterpolator(interpolator)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        padded = sitk.GetImageFromArray(np.pad(image, pad, mode="symmetric"))
        warp_filter.SetOutputParameteresFromImage(padded)
        warped = sitk.GetArrayFromImage(warp_filter.Execute(padded, field_image))
        out[i] = warped[pad : pad + image.shape[0], pad : pad + image.shape[1]]
    return out


def _round_ms(run):
    """Mean time per call of ``run`` over NUM_IMAGES draws (ms)."""
    start = time.perf_counter()
    for i in range(NUM_IMAGES):
        run(i)
    return (time.perf_counter() - start) / NUM_IMAGES * 1e3


def compare(name, options, rounds=5):
    rng = np.random.default_rng(0)
    x = rng.random((1, SIZE, SIZE), dtype=np.float32)
    y = (x > 0.5).astype(np.uint8)
    spec = parse_spec(**{**SPEC_DEFAULTS, **options})
    params = [draw(np.random.default_rng(i), spec, 1, (SIZE, SIZE)) for i in range(NUM_IMAGES)]
    warp = bool(options.get("spline_warp"))

    def ours(i):
        image_random_transform(x, y, rng=i, **options)

    def reference(i):
        reference_transform(x, y, params[i], warp)

    ours(0), reference(0)
    # Interleaved rounds, so that a load change on the machine hits both sides alike.
    timings = [(_round_ms(ours), _round_ms(reference)) for _ in range(rounds)]
    ours_ms = statistics.median(t[0] for t in timings)
    reference_ms = statistics.median(t[1] for t in timings)
    ratio = statistics.median(t[1] / t[0] for t in timings)
    megapixels = SIZE * SIZE / 1e6
    print(
        f"{name:<22} ours {ours_ms:6.3f} ms ({ours_ms / megapixels:6.2f} ms/MP)   "
        f"reference {reference_ms:6.3f} ms   ratio {ratio:5.1f}x"
    )


def stack(name, options):
    rng = np.random.default_rng(1)
    x = rng.random((BATCH, 1, SIZE, SIZE), dtype=np.float32)
    y = (x > 0.5).astype(np.uint8)
    image_stack_random_transform(x, y, rng=0, **options)
    rounds = []
    for seed in range(5):
        start = time.perf_counter()
        image_stack_random_transform(x, y, rng=seed, **options)
        rounds.append(time.perf_counter() - start)
    seconds = statistics.median(rounds)
    megapixels = BATCH * SIZE * SIZE / 1e6
    print(
        f"{name:<22} {seconds * 1e3:7.2f} ms per batch of {BATCH}   "
        f"{seconds * 1e3 / megapixels:6.2f} ms/MP   {BATCH / seconds:7.0f} images/s"
    )


def per_sample_map(name, options, size, rounds=5):
    rng = np.random.default_rng(2)
    image = rng.random((BATCH, 1, size, size), dtype=np.float32)
    batch = [image, (image > 0.5).astype(np.uint8)]
    indices = np.arange(BATCH)
    augment = SampleAugmentation(parse_augmentation_spec(**options), 7, 0, 1)

    def ours():
        augment(batch, epoch=0, indices=indices)

    def before():
        xs, ys = [], []
        for row, index in enumerate(indices):
            sample_rng = np.random.default_rng([7, 0, int(index)])
            x, y = image_random_transform(batch[0][row], batch[1][row], rng=sample_rng, **options)
            xs.append(x)
            ys.append(y)
        np.stack(xs), np.stack(ys)

    def seconds(run):
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    ours(), before()
    timings = [(seconds(ours), seconds(before)) for _ in range(rounds)]
    ours_ms = statistics.median(t[0] for t in timings) * 1e3
    before_ms = statistics.median(t[1] for t in timings) * 1e3
    ratio = statistics.median(t[1] / t[0] for t in timings)
    print(
        f"{name:<22} map {ours_ms:7.2f} ms   per-sample calls + stack {before_ms:7.2f} ms   "
        f"ratio {ratio:5.2f}x  ({BATCH}x1x{size}x{size})"
    )


def main():
    cv2.setNumThreads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    print(f"1x{SIZE}x{SIZE} float32 image + uint8 mask, one core, mean of {NUM_IMAGES} draws")
    compare("affine", AFFINE)
    compare("affine + spline warp", WARP)
    print(f"image_stack_random_transform, {BATCH}x1x{SIZE}x{SIZE} float32 + uint8 mask")
    stack("stack affine", AFFINE)
    stack("stack affine + warp", WARP)
    print(f"SampleAugmentation on a batch of {BATCH} against per-sample calls and np.stack")
    for size in (SIZE, 32):
        per_sample_map("map affine", AFFINE, size)


if __name__ == "__main__":
    main()
