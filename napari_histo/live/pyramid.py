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

Memory is bounded whatever the size of the result: buffers are float16 (what a
display needs: ~3 significant digits on 0–1) and a pyramid may *start* at a
coarser level (``base``, see :func:`display_base`): a result larger than
:data:`DISPLAY_CAP_PX` on a side keeps no finer levels in memory during a run
(the finished run is then shown from the store's full-resolution pyramid).
Writes still take level-0 boxes and values; they are block-averaged into the
base level.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "DISPLAY_CAP_PX",
    "DISPLAY_DTYPE",
    "MIN_LEVEL_PX",
    "OUTLINE_PX",
    "OverlayPyramid",
    "box_intersects",
    "box_union",
    "display_base",
    "grow_box",
    "level_box",
    "level_shapes",
    "outline_levels",
    "outline_margin",
    "outline_mask",
]

#: The coarsest level is the first whose longer side is at most this many px.
MIN_LEVEL_PX = 256

#: Live buffers keep no level whose longer side is above this (see :func:`display_base`).
DISPLAY_CAP_PX = 4096
#: dtype of live display buffers of float results.
DISPLAY_DTYPE = np.float16

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


def display_base(
    shape: Sequence[int], cap_px: int = DISPLAY_CAP_PX, min_px: int = MIN_LEVEL_PX
) -> int:
    """Index of the first level (of :func:`level_shapes`) whose longer side is <= `cap_px`.

    Examples
    --------
    >>> display_base((4096, 3000)), display_base((12500, 12500))
    (0, 2)
    """
    shapes = level_shapes(shape, min_px)
    for k, (h, w) in enumerate(shapes):
        if max(h, w) <= cap_px:
            return k
    return len(shapes) - 1


def block_mean(
    values: np.ndarray, f: int, y0: int, x0: int, out_shape: Sequence[int]
) -> tuple[Box, np.ndarray]:
    """Not public: ``(box, means)`` of level-0 `values` placed at (`y0`, `x0`), per f × f block.

    The box is in the coarse level (shape `out_shape`); a coarse pixel only partly
    covered by `values` gets the mean of the covered part.
    """
    values = np.asarray(values, dtype=np.float32)
    h, w = values.shape
    cy0, cx0 = y0 // f, x0 // f
    cy1, cx1 = min(int(out_shape[0]), -(-(y0 + h) // f)), min(int(out_shape[1]), -(-(x0 + w) // f))
    if cy1 <= cy0 or cx1 <= cx0:
        return (cy0, cy0, cx0, cx0), np.zeros((0, 0), np.float32)
    oy, ox = y0 - cy0 * f, x0 - cx0 * f
    ph, pw = (cy1 - cy0) * f, (cx1 - cx0) * f
    if oy == 0 and ox == 0 and h >= ph and w >= pw:  # aligned: exact block means
        block = values[:ph, :pw].reshape(cy1 - cy0, f, cx1 - cx0, f)
        return (cy0, cy1, cx0, cx1), block.mean(axis=(1, 3))
    pad = np.zeros((ph, pw), np.float32)
    count = np.zeros((ph, pw), np.float32)
    vh, vw = min(h, ph - oy), min(w, pw - ox)
    pad[oy : oy + vh, ox : ox + vw] = values[:vh, :vw]
    count[oy : oy + vh, ox : ox + vw] = 1
    sums = pad.reshape(cy1 - cy0, f, cx1 - cx0, f).sum(axis=(1, 3))
    n = count.reshape(cy1 - cy0, f, cx1 - cx0, f).sum(axis=(1, 3))
    return (cy0, cy1, cx0, cx1), sums / np.maximum(n, 1)


def box_union(a: Box | None, b: Box | None) -> Box | None:
    """Smallest box holding `a` and `b` (None is empty)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def grow_box(box: Box, margin: int, shape: Sequence[int]) -> Box:
    """`box` grown by `margin` px on every side, clipped to an array of `shape`."""
    y0, y1, x0, x1 = box
    h, w = int(shape[0]), int(shape[1])
    return max(0, y0 - margin), min(h, y1 + margin), max(0, x0 - margin), min(w, x1 + margin)


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
        float32 (or :data:`DISPLAY_DTYPE`) for results, uint8 for the outline labels.
    min_px : int
        See :func:`level_shapes`.
    base : int
        Keep levels from this one on only (:func:`display_base`); :attr:`levels`
        ``[0]`` is then level `base`, ``2**base`` level-0 px per pixel.

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

    def __init__(
        self,
        shape: Sequence[int],
        dtype=np.float32,
        *,
        min_px: int = MIN_LEVEL_PX,
        base: int = 0,
    ):
        self.dtype = np.dtype(dtype)
        shapes = level_shapes(shape, min_px)
        if not 0 <= base < len(shapes):
            raise ValueError(f"`base` must be in [0, {len(shapes)}), got {base}")
        self.base = int(base)
        self.full_shape: tuple[int, int] = shapes[0]
        self.levels: list[np.ndarray] = [np.zeros(s, self.dtype) for s in shapes[base:]]

    def __repr__(self) -> str:
        return (
            f"OverlayPyramid({self.full_shape}, {self.dtype.name}, base={self.base}, "
            f"levels={len(self.levels)})"
        )

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 ``(h, w)`` (kept in memory only when :attr:`base` is 0)."""
        return self.full_shape

    @property
    def nbytes(self) -> int:
        """Bytes of all kept levels."""
        return sum(level.nbytes for level in self.levels)

    def write(self, rows: slice, cols: slice, values: np.ndarray) -> Box:
        """Put `values` at level-0 ``[rows, cols]`` and update the levels below; returns the box.

        Only the pixels of each level that depend on the written box are rewritten.
        """
        y0, y1, _ = rows.indices(self.shape[0])
        x0, x1, _ = cols.indices(self.shape[1])
        box = (y0, y1, x0, x1)
        if self.base == 0:
            self.levels[0][y0:y1, x0:x1] = values
            self._propagate(box)
            return box
        values = np.broadcast_to(np.asarray(values), (y1 - y0, x1 - x0))
        cbox, mean = block_mean(values, 2**self.base, y0, x0, self.levels[0].shape)
        self._put(cbox, mean)
        return box

    def _put(self, cbox: Box, mean: np.ndarray) -> None:
        cy0, cy1, cx0, cx1 = cbox
        if cy1 <= cy0 or cx1 <= cx0:
            return
        if self.dtype.kind in "ui":
            mean = np.rint(mean)
        self.levels[0][cy0:cy1, cx0:cx1] = mean
        self._propagate(cbox)

    def fill(self, values: np.ndarray | float) -> None:
        """Set all of level 0 (an array of its shape, or one value) and rebuild the pyramid."""
        if np.ndim(values) == 0:
            for level in self.levels:
                level[...] = values
            return
        if self.base == 0:
            np.copyto(self.levels[0], np.asarray(values), casting="unsafe")
            self._propagate((0, self.shape[0], 0, self.shape[1]))
            return
        # Row strips of level-0 values (a zarr or dask array reads only the strip).
        f = 2**self.base
        step = f * max(1, 1024 // f)
        for y0 in range(0, self.levels[0].shape[0] * f, step):
            strip = np.asarray(values[y0 : y0 + step], dtype=np.float32)
            cbox, mean = block_mean(strip, f, y0, 0, self.levels[0].shape)
            cy0, cy1, cx0, cx1 = cbox
            if cy1 > cy0 and cx1 > cx0:
                self.levels[0][cy0:cy1, cx0:cx1] = mean
        self._propagate((0, self.levels[0].shape[0], 0, self.levels[0].shape[1]))

    def fill_base(self, values: np.ndarray) -> None:
        """Set all of :attr:`levels` ``[0]`` (level :attr:`base`) and rebuild the coarser ones."""
        np.copyto(self.levels[0], values, casting="unsafe")
        self._propagate((0, self.levels[0].shape[0], 0, self.levels[0].shape[1]))

    def _propagate(self, box: Box) -> None:
        """Rebuild the coarser levels under `box` (in :attr:`levels` ``[0]`` px)."""
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


#: Width of the drawn tumor outline, px of the level shown (napari's ``contour=2``
#: drew the same, but recomputed it on the Qt thread at every slice: ~30 ms a screen).
OUTLINE_PX = 2


def outline_mask(mask: np.ndarray, width: int = OUTLINE_PX) -> np.ndarray:
    """Pixels of boolean `mask` within `width` 4-connected steps of its edge.

    The array's own border is not an edge (as napari's contour of a slice).

    Examples
    --------
    >>> square = np.zeros((7, 7), bool)
    >>> square[1:6, 1:6] = True
    >>> outline_mask(square, 1).astype(int)[3]
    array([0, 1, 0, 0, 0, 1, 0])
    """
    from scipy import ndimage as ndi

    cross = ndi.iterate_structure(ndi.generate_binary_structure(2, 1), width)
    return mask & ~ndi.binary_erosion(mask, cross, border_value=1)


def outline_levels(
    out: Sequence[np.ndarray],
    probability: Sequence[np.ndarray],
    threshold: float,
    box: Box | None,
    base: int = 0,
    width: int = OUTLINE_PX,
) -> None:
    """``out[k]`` = outline of ``probability[k] >= threshold`` on every level, where
    level-0 `box` changed (None: everywhere).

    ``probability[k]`` is level ``base + k`` (:attr:`OverlayPyramid.base`). The
    outline of each level is drawn from that level's probability (so zoomed out it
    is the coarse probability's contour), `width` px of that level wide, and is
    stored ready to show: napari draws it as plain labels.
    """
    for k, (dst, src) in enumerate(zip(out, probability, strict=True)):
        if box is None:
            dst[...] = outline_mask(src >= threshold, width)
            continue
        changed = level_box(box, base + k, src.shape)
        # A changed pixel moves the outline up to `width` px away, which needs
        # `width` px more of context to decide.
        redrawn = grow_box(changed, width, src.shape)
        oy0, oy1, ox0, ox1 = redrawn
        cy0, cy1, cx0, cx1 = grow_box(redrawn, width, src.shape)
        ring = outline_mask(src[cy0:cy1, cx0:cx1] >= threshold, width)
        dst[oy0:oy1, ox0:ox1] = ring[oy0 - cy0 : oy1 - cy0, ox0 - cx0 : ox1 - cx0]


def outline_margin(levels: int, base: int = 0, width: int = OUTLINE_PX) -> int:
    """Level-0 px around a changed box within which the outline of any level may change."""
    return 2 * width * 2 ** (base + max(0, levels - 1))
