"""In-memory result pyramids for live overlays, updated one changed region at a time.

Plain numpy (no Qt, no napari). The inference widget shows each result array as a
*multiscale* napari layer over an :class:`OverlayPyramid`: napari then slices
only the visible part of one level per refresh, so a refresh costs about a
screenful whatever the size of the result, and a finished cell rewrites only its
own pixels on every level (:meth:`OverlayPyramid.write`).

Levels follow the result store's display pyramid
(:meth:`napari_histo.io.store.ResultRun.finish`): each level is the 2 × 2 mean of
the one above, ``(h // 2, w // 2)``, down to :data:`MIN_LEVEL_PX`.

Boxes are ``(y0, y1, x0, x1)`` in level-0 result px, half-open.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "MIN_LEVEL_PX",
    "OverlayPyramid",
    "box_intersects",
    "box_union",
    "level_box",
    "level_shapes",
    "threshold_levels",
]

#: The coarsest level is the first whose longer side is at most this many px.
MIN_LEVEL_PX = 256

Box = tuple[int, int, int, int]


def level_shapes(shape: Sequence[int], min_px: int = MIN_LEVEL_PX) -> list[tuple[int, int]]:
    """``(h, w)`` of every level, largest first (the store's display pyramid rule).

    Examples
    --------
    >>> level_shapes((1000, 600))
    [(1000, 600), (500, 300), (250, 150)]
    """
    h, w = (int(v) for v in shape)
    if h < 1 or w < 1:
        raise ValueError(f"`shape` must be two sizes >= 1, got {tuple(shape)!r}")
    out = [(h, w)]
    while max(h, w) > min_px and h >= 2 and w >= 2:
        h, w = h // 2, w // 2
        out.append((h, w))
    return out


def box_union(a: Box | None, b: Box | None) -> Box | None:
    """Smallest box holding `a` and `b` (None is empty)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def box_intersects(a: Box | None, b: Box | None) -> bool:
    """True when the half-open boxes `a` and `b` share a pixel."""
    if a is None or b is None:
        return False
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


class OverlayPyramid:
    """A 2× mean pyramid of one 2-D array, kept consistent region by region.

    Parameters
    ----------
    shape : (int, int)
        Level-0 ``(h, w)``.
    dtype : numpy dtype
        float32 for results, uint8 for the outline labels.
    min_px : int
        See :func:`level_shapes`.

    Examples
    --------
    >>> p = OverlayPyramid((8, 8), min_px=2)
    >>> [lv.shape for lv in p.levels]
    [(8, 8), (4, 4), (2, 2)]
    >>> p.write(slice(0, 4), slice(0, 4), np.ones((4, 4), np.float32))
    (0, 4, 0, 4)
    >>> float(p.levels[2][0, 0]), float(p.levels[2][1, 1])
    (1.0, 0.0)
    """

    def __init__(self, shape: Sequence[int], dtype=np.float32, *, min_px: int = MIN_LEVEL_PX):
        self.dtype = np.dtype(dtype)
        self.levels: list[np.ndarray] = [
            np.zeros(s, self.dtype) for s in level_shapes(shape, min_px)
        ]

    def __repr__(self) -> str:
        return f"OverlayPyramid({self.shape}, {self.dtype.name}, levels={len(self.levels)})"

    @property
    def shape(self) -> tuple[int, int]:
        return self.levels[0].shape

    def write(self, rows: slice, cols: slice, values: np.ndarray) -> Box:
        """Put `values` at level-0 ``[rows, cols]`` and update the levels below; returns the box.

        Only the pixels of each level that depend on the written box are rewritten.
        """
        y0, y1, _ = rows.indices(self.shape[0])
        x0, x1, _ = cols.indices(self.shape[1])
        self.levels[0][y0:y1, x0:x1] = values
        box = (y0, y1, x0, x1)
        self._propagate(box)
        return box

    def fill(self, values: np.ndarray | float) -> None:
        """Set all of level 0 (an array of its shape, or one value) and rebuild the pyramid."""
        if np.ndim(values) == 0:
            for level in self.levels:
                level[...] = values
            return
        np.copyto(self.levels[0], values, casting="unsafe")
        self._propagate((0, self.shape[0], 0, self.shape[1]))

    def _propagate(self, box: Box) -> None:
        y0, y1, x0, x1 = box
        for k in range(1, len(self.levels)):
            finer, coarser = self.levels[k - 1], self.levels[k]
            h, w = coarser.shape
            # Coarse pixel i averages finer pixels 2i, 2i + 1.
            y0, y1 = y0 // 2, min(h, -(-y1 // 2))
            x0, x1 = x0 // 2, min(w, -(-x1 // 2))
            if y1 <= y0 or x1 <= x0:
                return
            block = finer[2 * y0 : 2 * y1, 2 * x0 : 2 * x1]
            mean = block.reshape(y1 - y0, 2, x1 - x0, 2).mean(axis=(1, 3), dtype=np.float32)
            if coarser.dtype.kind in "ui":
                mean = np.rint(mean)
            coarser[y0:y1, x0:x1] = mean


def level_box(box: Box, level: int, shape: Sequence[int]) -> Box:
    """The part of level `level` (shape `shape`) that level-0 `box` affects."""
    y0, y1, x0, x1 = box
    f = 2**level
    return y0 // f, min(int(shape[0]), -(-y1 // f)), x0 // f, min(int(shape[1]), -(-x1 // f))


def threshold_levels(
    out: Sequence[np.ndarray], probability: Sequence[np.ndarray], threshold: float, box: Box | None
) -> None:
    """``out[k] = probability[k] >= threshold`` on every level, within level-0 `box` (None: all).

    The outline of each level is drawn from that level's probability, so the
    outline napari shows when zoomed out is the coarse probability's contour.
    """
    for k, (dst, src) in enumerate(zip(out, probability, strict=True)):
        if box is None:
            np.greater_equal(src, threshold, out=dst, casting="unsafe")
            continue
        y0, y1, x0, x1 = level_box(box, k, src.shape)
        dst[y0:y1, x0:x1] = src[y0:y1, x0:x1] >= threshold
