"""Blocks of a nuclei run: which to segment, what each reads, how ids meet at seams.

Helpers of :mod:`napari_histo.nuclei.store` (see its docstring for the layout and
the block scheme). A block is read with a margin clipped to the region; labels
on disk count only inside blocks already done, so a block never sees pixels of
unfinished blocks; a nucleus keeps the id most of its pixels already carry
there, and its measurements belong to the block holding its centroid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from napari_histo.io.slide import Slide
from napari_histo.io.store import ResultGeometry

if TYPE_CHECKING:
    from napari_histo.nuclei.run import NucleiRun


def tissue_blocks(
    slide: Slide,
    geometry: ResultGeometry,
    pad_px: int,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Blocks whose area (grown by `pad_px`) meets tissue, bool ``cell_shape``.

    `progress` is passed to :func:`~napari_histo.tissue.slide_tissue_mask`.
    """
    from napari_histo.tissue import slide_tissue_mask

    mask, ds = slide_tissue_mask(slide, progress=progress)
    rows, cols = geometry.cell_shape
    ox, oy = geometry.origin_l0
    out = np.zeros((rows, cols), bool)
    for r in range(rows):
        for c in range(cols):
            y0, y1, x0, x1 = geometry.cell_bounds(r, c)
            my0 = max(0, math.floor((oy + y0 - pad_px) / ds))
            mx0 = max(0, math.floor((ox + x0 - pad_px) / ds))
            my1 = math.ceil((oy + y1 + pad_px) / ds)
            mx1 = math.ceil((ox + x1 + pad_px) / ds)
            out[r, c] = bool(mask[my0:my1, mx0:mx1].any())
    return out


def read_block(
    slide: Slide, geometry: ResultGeometry, row: int, col: int, pad: int
) -> tuple[np.ndarray, tuple[slice, slice]]:
    """RGB of block (`row`, `col`) grown by `pad` px (clipped to the region) and its core slices."""
    y0, y1, x0, x1 = geometry.cell_bounds(row, col)
    ey0, ex0 = max(0, y0 - pad), max(0, x0 - pad)
    ey1, ex1 = min(geometry.shape[0], y1 + pad), min(geometry.shape[1], x1 + pad)
    ox, oy = geometry.origin_l0
    rgb = np.ascontiguousarray(slide.read_region(0, ox + ex0, oy + ey0, ex1 - ex0, ey1 - ey0))
    return rgb, (slice(y0 - ey0, y1 - ey0), slice(x0 - ex0, x1 - ex0))


def finished_pixels(run: NucleiRun, ey0: int, ey1: int, ex0: int, ex1: int) -> np.ndarray:
    """Labels on disk over ``[ey0, ey1) x [ex0, ex1)``, 0 outside finished blocks."""
    prior = np.asarray(run.labels(0)[ey0:ey1, ex0:ex1], np.uint32)
    cell = run.geometry.cell_px
    rows = np.arange(ey0, ey1) // cell
    cols = np.arange(ex0, ex1) // cell
    return np.where(run._done[rows[:, None], cols[None, :]], prior, 0)


def touched(run: NucleiRun, row: int, col: int) -> bool:
    """True when finished blocks have nucleus pixels on the 1 px frame around block (row, col)."""
    y0, y1, x0, x1 = run.geometry.cell_bounds(row, col)
    height, width = run.geometry.shape
    fy0, fy1, fx0, fx1 = max(0, y0 - 1), min(height, y1 + 1), max(0, x0 - 1), min(width, x1 + 1)
    strips = [(y, y + 1, fx0, fx1) for y in (y0 - 1, y1) if fy0 <= y < fy1]
    strips += [(fy0, fy1, x, x + 1) for x in (x0 - 1, x1) if fx0 <= x < fx1]
    return any(finished_pixels(run, *strip).any() for strip in strips)


def prior_ids(local: np.ndarray, prior: np.ndarray, n: int) -> np.ndarray:
    """For each local id 0..n, the id most of its pixels already carry on disk (0: none)."""
    both = (local > 0) & (prior > 0)
    out = np.zeros(n + 1, np.int64)
    if not both.any():
        return out
    pairs, counts = np.unique(
        np.stack([local[both].astype(np.int64), prior[both].astype(np.int64)]),
        axis=1,
        return_counts=True,
    )
    order = np.lexsort((counts, pairs[0]))  # by local id, then count: last one wins
    out[pairs[0, order]] = pairs[1, order]
    return out


def centroid_in(local: np.ndarray, n: int, core: tuple[slice, slice]) -> np.ndarray:
    flat = local.ravel()
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    rows, cols = np.indices(local.shape, dtype=np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        cy = np.bincount(flat, rows.ravel(), minlength=n + 1) / area
        cx = np.bincount(flat, cols.ravel(), minlength=n + 1) / area
    inside = (cy >= core[0].start) & (cy < core[0].stop) & (cx >= core[1].start)
    return inside & (cx < core[1].stop)
