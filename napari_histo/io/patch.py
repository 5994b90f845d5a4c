"""A square of a slide at a chosen resolution: the one patch reader."""

from __future__ import annotations

import numpy as np

from napari_histo.io.slide import Slide

__all__ = ["area_resize", "read_patch"]


def read_patch(slide: Slide, l0_x: int, l0_y: int, size_l0: int, patch_px: int) -> np.ndarray:
    """Read a ``size_l0``² level-0 square as a ``patch_px``² RGB patch (area average).

    Reads the coarsest level that is still at least as fine as the patch.
    """
    level = slide.best_level_for_downsample(size_l0 / patch_px)
    ds = slide.level_downsamples[level]
    side = max(patch_px, round(size_l0 / ds))
    region = slide.read_region(level, l0_x, l0_y, side, side)
    if side == patch_px:
        return region
    if side % patch_px == 0:
        f = side // patch_px
        return (
            region.reshape(patch_px, f, patch_px, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        )
    return np.clip(np.round(area_resize(region, patch_px)), 0, 255).astype(np.uint8)


def _area_bounds(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input index ranges ``[start, end)`` averaged into each output index."""
    i = np.arange(n_out)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def area_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Area average of an ``(h, w, ...)`` image to ``size``² (float64).

    Same windows as torch's ``interpolate(mode="area")`` (adaptive average
    pooling), in numpy: reading a patch must not import torch into the viewer.
    """
    out = np.asarray(image, dtype=np.float64)
    for axis in (0, 1):
        start, end = _area_bounds(out.shape[axis], size)
        sums = np.cumsum(out, axis=axis)
        sums = np.concatenate([np.zeros_like(sums.take([0], axis=axis)), sums], axis=axis)
        shape = [1] * out.ndim
        shape[axis] = size
        counts = (end - start).reshape(shape)
        out = (sums.take(end, axis=axis) - sums.take(start, axis=axis)) / counts
    return out
