"""Tile grids over a slide region, blend weights, and bounded-memory stitching.

A model sees ``tile_px`` × ``tile_px`` patches at ``model_mpp`` µm/px of a slide
scanned at ``slide_mpp``. Everything here works in the *model frame*: model
pixels, with ``level-0 coordinate = model coordinate × scale`` where
``scale = model_mpp / slide_mpp`` (level-0 px per model px).

The output region is partitioned into *cells* of ``stride_px`` model px (the last
row and column cut at the region edge). A cell is *final* once every tile that
overlaps it has been added; :class:`Stitcher` keeps accumulators only for cells
that have begun and are not final, so memory does not grow with the region, and
a result store can persist final cells and resume a killed run by recomputing
only the tiles that touch unfinished cells (:meth:`TileGrid.tiles_for_cell`).

Examples
--------
>>> grid = make_grid((0, 0, 1000, 600), slide_mpp=0.25, model_mpp=1.0, tile_px=128)
>>> grid.region, grid.stride_px, len(grid), grid.cell_shape
((0, 0, 250, 150), 64, 6, (3, 4))
>>> stitcher = Stitcher(grid, channels=1)
>>> for i in range(len(grid)):
...     stitcher.add(i, np.full((1, 128, 128), 0.5, np.float32))
>>> out = stitcher.result()
>>> out.shape, float(out.min()), float(out.max())
((1, 150, 250), 0.5, 0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from napari_histo.frames import model_downsample

__all__ = ["Stitcher", "TileGrid", "blend_weights", "make_grid", "order_centre_out"]

#: Smallest blend weight along one axis, so every pixel that any tile covers has
#: weight >= WEIGHT_FLOOR² > 0.
WEIGHT_FLOOR = 1e-3

Rect = tuple[int, int, int, int]


def _check_number(name: str, value: object, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
    return number


def _check_tile_overlap(tile_px: object, overlap: object) -> tuple[int, float]:
    if isinstance(tile_px, bool) or not isinstance(tile_px, int | np.integer):
        raise ValueError(f"`tile_px` must be an int >= 16, got {tile_px!r}")
    if tile_px < 16:
        raise ValueError(f"`tile_px` must be an int >= 16, got {tile_px!r}")
    number = _check_number("overlap", overlap, positive=False)
    if not 0 <= number < 1:
        raise ValueError(f"`overlap` must be in [0, 1), got {overlap!r}")
    return int(tile_px), number


def _stride(tile_px: int, overlap: float) -> int:
    return max(1, round(tile_px * (1 - overlap)))


def _axis_positions(length: int, tile_px: int, stride_px: int) -> np.ndarray:
    """Tile starts along one axis covering [0, length); the last ends at `length`."""
    if length <= tile_px:
        return np.zeros(1, np.int64)
    n = -(-(length - tile_px) // stride_px) + 1
    positions = np.arange(n, dtype=np.int64) * stride_px
    positions[-1] = length - tile_px
    return positions


@dataclass(frozen=True, eq=False)
class TileGrid:
    """Tiles covering an output region, in the model frame (model px).

    Build one with :func:`make_grid`.

    Attributes
    ----------
    region : (x, y, w, h) of int
        The output area, model px; level-0 px = model px × `scale`.
    tile_px : int
        Tile side, model px.
    overlap : float
        Fraction of a tile shared with its neighbour, in [0, 1).
    stride_px : int
        ``round(tile_px * (1 - overlap))``, at least 1: distance between tiles and
        side of the output cells.
    origins : ndarray of int64, shape (N, 2)
        Top-left ``(x, y)`` of each tile, model px (absolute, not region-relative).
    scale : float
        Level-0 px per model px (``model_mpp / slide_mpp``).
    """

    region: Rect
    tile_px: int
    overlap: float
    stride_px: int
    origins: np.ndarray
    scale: float

    def __len__(self) -> int:
        return len(self.origins)

    def tile_region_l0(self, index: int) -> Rect:
        """Level-0 rectangle ``(x, y, w, h)`` to read for tile `index`.

        ``w = h = round(tile_px * scale)``; resample it to ``tile_px`` for the model.
        """
        x, y = self.origins[self._check_index(index)]
        side = round(self.tile_px * self.scale)
        return round(x * self.scale), round(y * self.scale), side, side

    def _check_index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"`index` must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self):
            raise IndexError(f"`index` must be in [0, {len(self) - 1}], got {index}")
        return int(index)

    # -- cells ---------------------------------------------------------------
    @property
    def cell_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of output cells of side `stride_px` over the region."""
        _, _, w, h = self.region
        return -(-h // self.stride_px), -(-w // self.stride_px)

    def cell_slices(self, row: int, col: int) -> tuple[slice, slice]:
        """Rows and columns of cell ``(row, col)`` in the ``(H, W)`` region output."""
        rows, cols = self.cell_shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"cell ({row}, {col}) outside the {rows} x {cols} cell grid")
        s, (_, _, w, h) = self.stride_px, self.region
        return slice(row * s, min((row + 1) * s, h)), slice(col * s, min((col + 1) * s, w))

    @cached_property
    def _tile_cells(self) -> np.ndarray:
        """Per tile, ``(row0, row1, col0, col1)``: the half-open range of cells touched."""
        x0, y0, w, h = self.region
        s, t = self.stride_px, self.tile_px
        rel = self.origins - np.array([x0, y0], np.int64)
        x1, y1 = np.minimum(rel[:, 0] + t, w), np.minimum(rel[:, 1] + t, h)
        cells = np.stack([rel[:, 1] // s, (y1 - 1) // s + 1, rel[:, 0] // s, (x1 - 1) // s + 1], 1)
        cells.setflags(write=False)
        return cells

    @cached_property
    def tile_counts(self) -> np.ndarray:
        """Number of tiles touching each cell, int32 array of shape `cell_shape`."""
        counts = self._count_tiles(np.ones(len(self), bool))
        counts.setflags(write=False)
        return counts

    def _count_tiles(self, which: np.ndarray) -> np.ndarray:
        """Per cell, how many of the tiles where `which` is True touch it."""
        counts = np.zeros((self.cell_shape[0] + 1, self.cell_shape[1] + 1), np.int64)
        r0, r1, c0, c1 = self._tile_cells[which].T  # 2-D difference array, then prefix sums
        for rows, cols, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
            np.add.at(counts, (rows, cols), sign)
        return counts.cumsum(0).cumsum(1)[:-1, :-1].astype(np.int32)

    def covered_cells(self) -> np.ndarray:
        """Bool array of shape `cell_shape`: cells some tile touches (all, without tissue)."""
        return self.tile_counts > 0

    def cells_for_tile(self, index: int) -> list[tuple[int, int]]:
        """Cells ``(row, col)`` that tile `index`'s footprint (clipped to the region) touches."""
        r0, r1, c0, c1 = self._tile_cells[self._check_index(index)]
        return [(r, c) for r in range(r0, r1) for c in range(c0, c1)]

    def tiles_for_cell(self, row: int, col: int) -> np.ndarray:
        """Indices (ascending) of the tiles whose footprint touches cell ``(row, col)``."""
        self.cell_slices(row, col)  # validates
        tc = self._tile_cells
        hit = (tc[:, 0] <= row) & (row < tc[:, 1]) & (tc[:, 2] <= col) & (col < tc[:, 3])
        return np.flatnonzero(hit)

    def tiles_touching(self, cells: np.ndarray) -> np.ndarray:
        """Indices (ascending) of the tiles touching any cell where `cells` is True.

        To resume a run, pass the cells not yet persisted: these tiles are all that
        must be recomputed (with ``Stitcher(..., tiles=these)``).

        Parameters
        ----------
        cells : ndarray of bool, shape `cell_shape`
        """
        cells = np.asarray(cells, bool)
        if cells.shape != self.cell_shape:
            raise ValueError(
                f"`cells` shape {cells.shape} must equal `cell_shape` {self.cell_shape}"
            )
        return np.flatnonzero(_box_sums(cells, *self._tile_cells.T))


def make_grid(
    region_l0: tuple[float, float, float, float],
    *,
    slide_mpp: float,
    model_mpp: float,
    tile_px: int,
    overlap: float = 0.5,
    tissue: np.ndarray | None = None,
    tissue_downsample: float | None = None,
) -> TileGrid:
    """Tiles covering a level-0 region of a slide, optionally only over tissue.

    The region is converted to model px (``floor`` of its start, ``ceil`` of its
    end, so it is covered completely). Along each axis tiles start every
    `stride_px` and the last row/column starts at ``end - tile_px`` so it ends
    exactly at the region edge; a region smaller than a tile gets one tile at its
    origin that extends past it. With `tissue`, only tiles whose footprint within
    the region contains a tissue pixel are kept, so every tissue pixel of the
    region stays covered.

    Parameters
    ----------
    region_l0 : (x, y, w, h)
        Output region, level-0 px.
    slide_mpp, model_mpp : float
        Level-0 resolution of the slide and the model's input resolution (µm/px).
    tile_px : int
        Model input side, model px, >= 16.
    overlap : float
        Fraction of a tile overlapping its neighbour, in [0, 1).
    tissue : ndarray of bool, shape (h, w), optional
        Tissue mask; pixel ``(i, j)`` covers level-0 ``[j*d, (j+1)*d) x [i*d, (i+1)*d)``.
    tissue_downsample : float, optional
        ``d``, the mask's downsample relative to level 0; required with `tissue`.

    Returns
    -------
    TileGrid
        Tiles in row-major order of their origins.

    Raises
    ------
    TypeError, ValueError
        For a bad argument; the message names it and its value.
    """
    slide_mpp = _check_number("slide_mpp", slide_mpp)
    model_mpp = _check_number("model_mpp", model_mpp)
    tile_px, overlap = _check_tile_overlap(tile_px, overlap)
    if not isinstance(region_l0, tuple | list | np.ndarray) or len(region_l0) != 4:
        raise ValueError(f"`region_l0` must be (x, y, w, h), got {region_l0!r}")
    x0, y0, w0, h0 = (_check_number("region_l0", v, positive=False) for v in region_l0)
    if w0 <= 0 or h0 <= 0:
        raise ValueError(f"`region_l0` must have w > 0 and h > 0, got {tuple(region_l0)!r}")
    scale = model_downsample(model_mpp, slide_mpp)
    stride = _stride(tile_px, overlap)
    # 1e-9 guards against float noise pushing an exact multiple across an integer.
    mx0, my0 = math.floor(x0 / scale + 1e-9), math.floor(y0 / scale + 1e-9)
    mw = max(1, math.ceil((x0 + w0) / scale - 1e-9) - mx0)
    mh = max(1, math.ceil((y0 + h0) / scale - 1e-9) - my0)
    xs = _axis_positions(mw, tile_px, stride) + mx0
    ys = _axis_positions(mh, tile_px, stride) + my0
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    origins = np.stack([gx.ravel(), gy.ravel()], axis=1)
    region = (mx0, my0, mw, mh)
    if tissue is not None:
        origins = origins[
            _touches_tissue(origins, region, tile_px, scale, tissue, tissue_downsample)
        ]
    elif tissue_downsample is not None:
        _check_number("tissue_downsample", tissue_downsample)
    origins = np.ascontiguousarray(origins, dtype=np.int64)
    origins.setflags(write=False)
    return TileGrid(region, tile_px, overlap, stride, origins, scale)


def _touches_tissue(
    origins: np.ndarray,
    region: Rect,
    tile_px: int,
    scale: float,
    tissue: np.ndarray,
    tissue_downsample: float | None,
) -> np.ndarray:
    """Whether each tile's footprint within the region holds a tissue pixel."""
    tissue = np.asarray(tissue)
    if tissue.ndim != 2 or tissue.size == 0:
        raise ValueError(f"`tissue` must be a non-empty 2-D mask, got shape {tissue.shape}")
    if tissue_downsample is None:
        raise ValueError("`tissue_downsample` must be given with `tissue`, got None")
    d = _check_number("tissue_downsample", tissue_downsample)
    x0, y0, w, h = region
    # Footprint clipped to the region, in level-0 px, then in mask px (outward).
    fx0 = np.maximum(origins[:, 0], x0) * scale
    fy0 = np.maximum(origins[:, 1], y0) * scale
    fx1 = np.minimum(origins[:, 0] + tile_px, x0 + w) * scale
    fy1 = np.minimum(origins[:, 1] + tile_px, y0 + h) * scale
    mh, mw = tissue.shape
    i0 = np.clip(np.floor(fy0 / d + 1e-9), 0, mh).astype(np.int64)
    i1 = np.clip(np.ceil(fy1 / d - 1e-9), 0, mh).astype(np.int64)
    j0 = np.clip(np.floor(fx0 / d + 1e-9), 0, mw).astype(np.int64)
    j1 = np.clip(np.ceil(fx1 / d - 1e-9), 0, mw).astype(np.int64)
    return _box_sums(tissue != 0, i0, i1, j0, j1) > 0


def _box_sums(mask: np.ndarray, r0, r1, c0, c1) -> np.ndarray:
    """Number of True pixels in ``mask[r0:r1, c0:c1]`` for arrays of boxes."""
    # Summed-area table, in place; int32 while counts fit (a 100k² slide's mask is
    # ~3k², whose int64 table and its cumsum temporaries took ~250 MB).
    dtype = np.int32 if mask.size < 2**31 else np.int64
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype)
    np.cumsum(mask, axis=0, dtype=dtype, out=table[1:, 1:])
    np.cumsum(table[1:, 1:], axis=1, out=table[1:, 1:])
    return table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]


def order_centre_out(grid: TileGrid, centre_xy: tuple[float, float]) -> np.ndarray:
    """Tile indices in the order that finishes the output cells nearest `centre_xy` first.

    Cells are ranked by the distance of their centre to `centre_xy`; a tile comes
    at the rank of the first cell it is needed for, nearer tile centres first
    within a rank. So the first few tiles complete the cell under the point
    (four tiles at 50 % overlap, one batch), and each later one or two tiles
    complete a neighbour: a viewport run shows its first result after one batch.
    (Ordering tiles by their own distance does not: near a row of tile centres
    the four nearest tiles are not the four around any cell.)

    Parameters
    ----------
    grid : TileGrid
    centre_xy : (x, y)
        Point to start from, **level-0** px (e.g. the viewport centre).

    Returns
    -------
    ndarray of int64, shape (N,)
        Every tile index once; ties broken by ascending index.
    """
    cx = _check_number("centre_xy", centre_xy[0], positive=False) / grid.scale
    cy = _check_number("centre_xy", centre_xy[1], positive=False) / grid.scale
    if len(grid) == 0:
        return np.zeros(0, np.int64)
    x0, y0, _, _ = grid.region
    rows, cols = grid.cell_shape
    s = grid.stride_px
    # Doubled model px keep centres integral, so symmetric ties are exact.
    cell_dy = 2 * (y0 + np.arange(rows) * s) + s - 2 * cy
    cell_dx = 2 * (x0 + np.arange(cols) * s) + s - 2 * cx
    cell_rank = np.empty(rows * cols, np.int64)
    cell_rank[
        np.argsort((cell_dy[:, None] ** 2 + cell_dx[None, :] ** 2).ravel(), kind="stable")
    ] = np.arange(rows * cols)
    cell_rank = cell_rank.reshape(rows, cols)
    r0, r1, c0, c1 = grid._tile_cells.T
    first = np.full(len(grid), rows * cols, np.int64)  # rank of each tile's first cell
    for dr in range(int((r1 - r0).max())):
        for dc in range(int((c1 - c0).max())):
            r, c = r0 + dr, c0 + dc
            inside = (r < r1) & (c < c1)
            rank = cell_rank[np.minimum(r, rows - 1), np.minimum(c, cols - 1)]
            first = np.where(inside, np.minimum(first, rank), first)
    dx = 2 * grid.origins[:, 0] + grid.tile_px - 2 * cx
    dy = 2 * grid.origins[:, 1] + grid.tile_px - 2 * cy
    return np.lexsort((np.arange(len(grid)), dx * dx + dy * dy, first)).astype(np.int64)


def blend_weights(tile_px: int, overlap: float) -> np.ndarray:
    """Per-pixel blending weights for a tile: flat centre, squared-sine ramps at the edges.

    Each axis ramps up as ``sin²(π/2 · (i + 0.5) / r)`` over ``r = min(tile_px -
    stride_px, tile_px / 2)`` px from either edge and is 1 in between, floored at
    :data:`WEIGHT_FLOOR`; the 2-D weight is the product of the two axes. Flooring
    each axis rather than the product keeps the ratio of two tiles' weights smooth
    along a region border, where both tiles share the same tiny factor. With
    ``overlap == 0`` every weight is 1.

    Parameters
    ----------
    tile_px : int
        Tile side (px), >= 16.
    overlap : float
        In [0, 1), as given to :func:`make_grid`.

    Returns
    -------
    ndarray of float32, shape (tile_px, tile_px)
        Weights in ``[WEIGHT_FLOOR², 1]``, symmetric under flips and transposition.
    """
    tile_px, overlap = _check_tile_overlap(tile_px, overlap)
    ramp_px = min(tile_px - _stride(tile_px, overlap), tile_px / 2)
    if ramp_px <= 0:
        return np.ones((tile_px, tile_px), np.float32)
    i = np.arange(tile_px, dtype=np.float64)
    edge = np.minimum(i, tile_px - 1 - i)  # distance to the nearest edge, px
    axis = np.where(edge < ramp_px, np.sin(np.pi / 2 * (edge + 0.5) / ramp_px) ** 2, 1.0)
    axis = np.maximum(axis, WEIGHT_FLOOR)
    return np.outer(axis, axis).astype(np.float32)


class Stitcher:
    """Weighted average of overlapping tile outputs over a grid's region, cell by cell.

    Parameters
    ----------
    grid : TileGrid
    channels : int
        Channels of each tile output.
    dtype : numpy float dtype
        Output dtype. Sums are accumulated in it, at least float32 (for live cells
        only): a cell sums a few weighted tiles, well within float32's precision.
    fill : float
        Value of output pixels no tile covers (only possible with a tissue grid).
    tiles : array of int, optional
        The only tiles that will be added (default: all). A cell is produced only
        when all the tiles touching it are among them; the others are ignored.
        To resume an interrupted run, pass ``grid.tiles_touching(~persisted)``.

    Notes
    -----
    Accumulators (weighted sum and weight) exist only for cells some added tile
    has touched and that are not final yet; a final cell is divided, handed out
    by :meth:`pop_final_cells` and forgotten. Adding tiles in row-major order
    keeps about ``(cols) × (tile_px / stride_px + 1)`` cells alive, whatever
    the region's height.
    """

    def __init__(
        self,
        grid: TileGrid,
        channels: int,
        dtype: np.dtype | type = np.float32,
        fill: float = 0.0,
        tiles: np.ndarray | None = None,
    ) -> None:
        if not isinstance(grid, TileGrid):
            raise TypeError(f"`grid` must be a TileGrid, got {type(grid).__name__}")
        if isinstance(channels, bool) or not isinstance(channels, int | np.integer):
            raise TypeError(f"`channels` must be an int, got {type(channels).__name__}")
        if channels < 1:
            raise ValueError(f"`channels` must be >= 1, got {channels}")
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"`dtype` must be a floating dtype, got {self.dtype}")
        self.grid = grid
        self.channels = int(channels)
        self.fill = float(fill)
        self._accumulate = np.promote_types(self.dtype, np.float32)
        self._weights = blend_weights(grid.tile_px, grid.overlap).astype(self._accumulate)
        self._remaining = grid.tile_counts.copy()
        self._expected = np.ones(len(grid), bool)
        if tiles is not None:
            tiles = np.asarray(tiles).ravel()
            if tiles.size and (
                tiles.dtype.kind not in "iu" or tiles.min() < 0 or tiles.max() >= len(grid)
            ):
                raise ValueError(
                    f"`tiles` must be tile indices in [0, {len(grid) - 1}], "
                    f"got {tiles.dtype} values {tiles[:8].tolist()}..."
                )
            self._expected[:] = False
            self._expected[tiles] = True
            # Cells that a tile outside `tiles` touches are never completed: ignore them.
            self._remaining[grid._count_tiles(~self._expected) > 0] = -1
        self._added = np.zeros(len(grid), bool)
        self._live: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._final: dict[tuple[int, int], np.ndarray] = {}
        self._popped = 0

    @property
    def live_cells(self) -> int:
        """Number of cells holding accumulators (begun, not final)."""
        return len(self._live)

    @property
    def done(self) -> bool:
        """Whether every tile (of `tiles`, if given) has been added."""
        return bool(self._added[self._expected].all())

    def add(self, index: int, tile_out: np.ndarray) -> None:
        """Add the model output for tile `index`.

        Parameters
        ----------
        index : int
            Tile index in the grid.
        tile_out : ndarray, shape (channels, tile_px, tile_px)
            Model output over the tile's footprint; parts outside the region are ignored.

        Raises
        ------
        ValueError
            If `tile_out` has the wrong shape, or tile `index` was already added.
        """
        grid = self.grid
        index = grid._check_index(index)
        t = grid.tile_px
        tile_out = np.asarray(tile_out)
        if tile_out.shape != (self.channels, t, t):
            raise ValueError(
                f"`tile_out` must have shape {(self.channels, t, t)}, got {tile_out.shape}"
            )
        if self._added[index]:
            raise ValueError(f"tile `index` {index} was already added")
        if not self._expected[index]:
            raise ValueError(f"tile `index` {index} is not among the Stitcher's `tiles`")
        self._added[index] = True
        s = grid.stride_px
        rx, ry, rw, rh = grid.region
        ox, oy = int(grid.origins[index, 0]) - rx, int(grid.origins[index, 1]) - ry
        weighted = tile_out * self._weights  # (C, t, t), accumulation dtype
        for r, c in grid.cells_for_tile(index):
            if self._remaining[r, c] < 0:
                continue  # ignored cell (see `tiles`)
            ys, xs = r * s, c * s
            ye, xe = min(ys + s, rh), min(xs + s, rw)
            # Intersection of the cell and the tile, in cell and in tile coordinates.
            y0, y1 = max(ys, oy), min(ye, oy + t)
            x0, x1 = max(xs, ox), min(xe, ox + t)
            acc = self._live.get((r, c))
            if acc is None:
                acc = (
                    np.zeros((self.channels, ye - ys, xe - xs), self._accumulate),
                    np.zeros((ye - ys, xe - xs), self._accumulate),
                )
                self._live[(r, c)] = acc
            cell = (slice(y0 - ys, y1 - ys), slice(x0 - xs, x1 - xs))
            tile = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
            acc[0][(slice(None), *cell)] += weighted[(slice(None), *tile)]
            acc[1][cell] += self._weights[tile]
            self._remaining[r, c] -= 1
            if self._remaining[r, c] == 0:
                self._final[(r, c)] = self._divide(*self._live.pop((r, c)))

    def _divide(self, total: np.ndarray, weight: np.ndarray) -> np.ndarray:
        out = np.full(total.shape, self.fill, self._accumulate)
        np.divide(total, weight, out=out, where=(weight > 0)[None])
        return out.astype(self.dtype, copy=False)

    def pop_final_cells(self) -> list[tuple[int, int, np.ndarray]]:
        """Cells that became final since the last call, as ``(row, col, array)``.

        Each array has shape ``(channels, h, w)`` (see :meth:`TileGrid.cell_slices`)
        and is handed out exactly once, then dropped from memory. Cells that no tile
        touches are never returned (they hold `fill`).
        """
        cells = [(r, c, out) for (r, c), out in self._final.items()]
        self._final = {}
        self._popped += len(cells)
        return cells

    def result(self) -> np.ndarray:
        """The whole region ``(channels, H, W)``: for small regions and tests.

        Cells not final yet are divided by the weight gathered so far; pixels no
        added tile covers hold `fill`.

        Raises
        ------
        RuntimeError
            If cells were already handed out by :meth:`pop_final_cells`.
        """
        if self._popped:
            raise RuntimeError(
                f"{self._popped} cells were already handed out by pop_final_cells(); "
                "result() needs them all"
            )
        _, _, w, h = self.grid.region
        out = np.full((self.channels, h, w), self.fill, self.dtype)
        cells = {**self._final, **{k: self._divide(*v) for k, v in self._live.items()}}
        for (r, c), values in cells.items():
            rows, cols = self.grid.cell_slices(r, c)
            out[:, rows, cols] = values
        return out
