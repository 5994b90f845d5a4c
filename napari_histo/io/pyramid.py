"""Lazy multiresolution pyramids over a :class:`~napari_histo.io.slide.Slide`.

A pyramid is a tuple of dask arrays, largest first, each ``(H, W, 3)`` uint8,
chunked on the file's native tiles so that one chunk is one tile decode.
Building it reads no pixels. When the file's smallest level is still larger
than ``max_top_px``, coarser levels are added by lazy 2×2 area averaging so
napari never has to render a gigapixel level when zoomed out.

Physical scale: napari layers get ``scale = (mpp_y, mpp_x)`` in µm per level-0
pixel, so every overlay (probability maps, masks, annotations) added later
with its own µm scale lines up with the slide.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from napari_histo.io.slide import DEFAULT_TILE_PX, Slide

__all__ = ["Pyramid", "chunk_size_for", "open_pyramid"]

#: Stop adding synthetic levels once the top level's longer side is at most this.
MAX_TOP_PX = 4096

#: Smallest chunk side worth a dask task; smaller native tiles are grouped.
#: 512 measured fastest for 1920×1080 viewport reads of 256 px JPEG tiles
#: (`napari-histo bench read`): fewer tasks outweigh the extra edge decoding.
MIN_CHUNK_PX = 512
#: Levels read through OpenSlide are chunked one native tile per chunk when the
#: tiles are at least this big (smaller ones are grouped like the others).
MIN_OPENSLIDE_CHUNK_PX = 200


@dataclass(frozen=True)
class Pyramid:
    """Dask arrays of one slide, largest first, with their geometry.

    Attributes
    ----------
    levels : tuple of dask.array.Array
        ``(H, W, 3)`` uint8 arrays, level 0 first (from :func:`open_pyramid`;
        :func:`napari_histo.io.native_tiff.native_pyramid` gives the file's own
        dtype, ``(H, W)`` for a single channel).
    downsamples : tuple of float
        Downsample of each level relative to level 0 (file levels as OpenSlide
        reports them; synthetic levels as exact factors of the file's last).
    file_level_count : int
        How many of `levels` are stored in the file; the rest are synthetic.
    mpp : tuple of (float, float) or None
        ``(mpp_y, mpp_x)`` of level 0 in µm/px, or None when unknown.
    chunk_px : tuple of (int, int)
        ``(chunk_h, chunk_w)`` in px of each level.
    """

    levels: tuple[da.Array, ...]
    downsamples: tuple[float, ...]
    file_level_count: int
    mpp: tuple[float, float] | None
    chunk_px: tuple[tuple[int, int], ...]

    @property
    def scale_um(self) -> tuple[float, float]:
        """napari ``scale`` for level 0: ``(mpp_y, mpp_x)``, or (1, 1) without mpp."""
        return self.mpp if self.mpp is not None else (1.0, 1.0)

    @property
    def units(self) -> str:
        """Units of :attr:`scale_um`: "µm", or "px" when the slide has no mpp."""
        return "µm" if self.mpp is not None else "px"

    def level_scale_um(self, level: int) -> tuple[float, float]:
        """``(sy, sx)`` size of one pixel of `level` in µm (px without mpp)."""
        sy, sx = self.scale_um
        ds = self.downsamples[level]
        return sy * ds, sx * ds

    def __len__(self) -> int:
        return len(self.levels)


def chunk_size_for(slide: Slide, level: int = 0) -> tuple[int, int]:
    """Chunk ``(h, w)`` in px for `level`: whole native tiles, grouped to about 512.

    Levels without direct tile decoding (read through OpenSlide) get one native
    tile per chunk instead, when tiles are at least :data:`MIN_OPENSLIDE_CHUNK_PX`.

    Parameters
    ----------
    slide : Slide
        The slide.
    level : int
        File level whose tiling is used.

    Returns
    -------
    tuple of int
        ``(chunk_h, chunk_w)``; 512 × 512 when the level is not tiled.
    """
    tile = slide.tile_size(level)
    if tile is None:
        return DEFAULT_TILE_PX, DEFAULT_TILE_PX
    tile_w, tile_h = tile
    if slide.fast_levels[level] is False and min(tile) >= MIN_OPENSLIDE_CHUNK_PX:
        # OpenSlide decodes whole tiles whatever the chunk: one tile per chunk wastes
        # least at a window's edges (measured 1.6x faster than 512 px chunks).
        return tile_h, tile_w
    # Whole tiles per chunk, so a chunk never decodes a tile another chunk also needs.
    return (
        tile_h * max(1, round(MIN_CHUNK_PX / tile_h)),
        tile_w * max(1, round(MIN_CHUNK_PX / tile_w)),
    )


def _axis_chunks(length: int, chunk: int) -> tuple[int, ...]:
    full, rest = divmod(length, chunk)
    return (chunk,) * full + ((rest,) if rest else ())


def _read_chunk(slide: Slide, level: int, lvl_x: int, lvl_y: int, w: int, h: int) -> np.ndarray:
    return slide.read_level_region(level, lvl_x, lvl_y, w, h)


def file_level_array(slide: Slide, level: int, chunk_px: tuple[int, int]) -> da.Array:
    """Dask array of one file level; building it reads no pixels.

    Parameters
    ----------
    slide : Slide
        Open slide; it must stay open while the array is computed.
    level : int
        File level.
    chunk_px : tuple of int
        ``(chunk_h, chunk_w)`` in px.

    Returns
    -------
    dask.array.Array
        ``(H, W, 3)`` uint8, exact edge chunks.
    """
    width, height = slide.level_dimensions[level]
    chunk_h, chunk_w = chunk_px
    rows = _axis_chunks(height, chunk_h)
    cols = _axis_chunks(width, chunk_w)
    stat = slide.path.stat()
    name = "slide-" + tokenize(str(slide.path), stat.st_mtime_ns, stat.st_size, level, chunk_px)
    graph = {}
    for (i, h), (j, w) in product(enumerate(rows), enumerate(cols)):
        graph[(name, i, j, 0)] = (_read_chunk, slide, level, j * chunk_w, i * chunk_h, w, h)
    hlg = HighLevelGraph.from_collections(name, graph, dependencies=())
    meta = np.empty((0, 0, 0), dtype=np.uint8)
    return da.Array(hlg, name, chunks=(rows, cols, (3,)), dtype=np.uint8, meta=meta)


def _mean_2x2(block: np.ndarray) -> np.ndarray:
    """Area-average 2×2 pixel blocks of an even-sized (h, w, 3) uint8 block."""
    h, w = block.shape[0] // 2, block.shape[1] // 2
    summed = block.reshape(h, 2, w, 2, block.shape[2]).sum(axis=(1, 3), dtype=np.uint16)
    return ((summed + 2) // 4).astype(np.uint8)


def halve(level: da.Array, chunk_px: tuple[int, int]) -> da.Array:
    """Lazy 2× area-averaged downsample of an ``(H, W, 3)`` uint8 dask array.

    An odd last row or column is dropped, like OpenSlide's own level sizes.
    """
    height, width = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
    even = level[:height, :width]
    if any(c % 2 for axis in even.chunks[:2] for c in axis):
        even = even.rechunk((chunk_px[0], chunk_px[1], 3))
    out_chunks = tuple(tuple(c // 2 for c in axis) for axis in even.chunks[:2])
    smaller = even.map_blocks(_mean_2x2, chunks=(*out_chunks, (3,)), dtype=np.uint8)
    return smaller.rechunk((chunk_px[0], chunk_px[1], 3))


def open_pyramid(
    slide: Slide,
    *,
    chunk_px: int | tuple[int, int] | None = None,
    max_top_px: int = MAX_TOP_PX,
) -> Pyramid:
    """Build the lazy pyramid of `slide` without reading pixels.

    Parameters
    ----------
    slide : Slide
        Open slide; keep it open while the arrays are in use.
    chunk_px : int or (int, int), optional
        Chunk size in px; default: the native tile size (whole tiles grouped to about 512 px),
        512 when the file is not tiled.
    max_top_px : int
        Add 2× synthetic levels until the smallest level's longer side is at
        most this many px.

    Returns
    -------
    Pyramid
    """
    if chunk_px is None:
        chunks = None
    elif isinstance(chunk_px, int | np.integer):
        chunks = (int(chunk_px), int(chunk_px))
    else:
        chunks = tuple(int(c) for c in chunk_px)
    if chunks is not None and (len(chunks) != 2 or min(chunks) < 16):
        raise ValueError(f"`chunk_px` must be an int or (h, w) pair >= 16, got {chunk_px!r}")
    if max_top_px < 64:
        raise ValueError(f"`max_top_px` must be >= 64, got {max_top_px}")
    level_chunks = [chunks or chunk_size_for(slide, level) for level in range(slide.level_count)]
    levels = [
        file_level_array(slide, level, level_chunks[level]) for level in range(slide.level_count)
    ]
    downsamples = list(slide.level_downsamples)
    while max(levels[-1].shape[:2]) > max_top_px:
        levels.append(halve(levels[-1], level_chunks[-1]))
        level_chunks.append(level_chunks[-1])
        downsamples.append(downsamples[-1] * 2)
    mpp = None
    if slide.mpp_x is not None and slide.mpp_y is not None:
        mpp = (slide.mpp_y, slide.mpp_x)
    return Pyramid(
        levels=tuple(levels),
        downsamples=tuple(downsamples),
        file_level_count=slide.level_count,
        mpp=mpp,
        chunk_px=tuple(level_chunks),
    )
