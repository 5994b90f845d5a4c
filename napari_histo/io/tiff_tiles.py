"""Direct tile decoding for tiled-TIFF slide levels (the fast path of Slide).

OpenSlide decodes a tile, converts it to premultiplied ARGB and paints it
through cairo; for the common case of a TIFF-based slide (Aperio SVS, generic
tiled TIFF) whose level is a tiled page, decoding the tile's bytes directly
with imagecodecs is about 4× faster and gives the same pixels. Each level's
fast path is verified against OpenSlide on first use and switched off for
that level if a single pixel differs, so the output is always OpenSlide's.

Only IFD tag tables are parsed here, never pixel data, so building a
:class:`TiffLevelTiles` is cheap even for gigapixel files.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

__all__ = [
    "TIFF_ERRORS",
    "TiffLevelTiles",
    "TileCache",
    "find_level_tiles",
    "open_tiff",
    "paste",
    "tiff_truncation",
]

# Compressions imagecodecs decodes: none, LZW, JPEG, deflate, JPEG 2000 (Aperio), WebP, zstd.
_DECODABLE = {1, 5, 7, 8, 32946, 33003, 33004, 33005, 34712, 50000, 50001}

#: What tifffile raises on a corrupt or truncated TIFF structure.
TIFF_ERRORS = (tifffile.TiffFileError, ValueError, OSError, struct.error, IndexError, KeyError)

_quiet = threading.local()


class _QuietFilter(logging.Filter):
    """Drops tifffile's records on a thread inside :func:`open_tiff`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "depth", 0)


logging.getLogger("tifffile").addFilter(_QuietFilter())


@contextlib.contextmanager
def open_tiff(path: str | os.PathLike[str]):
    """``tifffile.TiffFile(path)`` without tifffile's log lines on this thread.

    tifffile logs what it finds wrong in a damaged file (``invalid offset to
    first page``) and goes on; the callers here say it once, naming the file.
    """
    _quiet.depth = getattr(_quiet, "depth", 0) + 1
    try:
        with tifffile.TiffFile(path) as tif:
            yield tif
    finally:
        _quiet.depth -= 1


#: Decoded tiles kept per slide, bytes: what OpenSlide keeps by default (its own
#: tile cache is 32 MiB of ARGB), so panning back over a region decodes nothing.
TILE_CACHE_BYTES = 64 << 20


def _entry_bytes(tile: np.ndarray | None) -> int:
    """Bytes a cache entry counts for; an absent tile (None) counts its key's ~64."""
    return 64 if tile is None else tile.nbytes


class TileCache:
    """Thread-safe LRU cache of decoded tiles, bounded in bytes, that keeps small levels.

    Keys are tuples whose last two items are the tile's row and column and whose
    first ones name its level: ``(page, row, col)`` for directly decoded tiles,
    ``("openslide", level, row, col)`` for tiles OpenSlide read. When full, the least
    recently used tile goes — except tiles of a level holding less than a quarter of
    the cache: pans over level 0 do not push out the coarse overview levels a viewer
    keeps returning to (levels shrink 4× each, so those kept stay under a third).

    Parameters
    ----------
    max_bytes : int
        Upper bound of the cached tiles' sizes; 0 turns caching off.
    """

    def __init__(self, max_bytes: int = TILE_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"`max_bytes` must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._tiles: OrderedDict[tuple, np.ndarray | None] = OrderedDict()
        self._level_bytes: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> tuple[bool, np.ndarray | None]:
        """``(found, tile)``; a found tile may be None (absent from the file)."""
        with self._lock:
            if key not in self._tiles:
                return False, None
            self._tiles.move_to_end(key)
            return True, self._tiles[key]

    def put(self, key: tuple, tile: np.ndarray | None) -> None:
        size = _entry_bytes(tile)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._tiles:
                self._add(key, -_entry_bytes(self._tiles.pop(key)))
            self._tiles[key] = tile
            self._add(key, size)
            while self.bytes > self.max_bytes:
                self._evict_one()

    def _evict_one(self) -> None:
        small = self.max_bytes // 4
        victim = next(
            (k for k in self._tiles if self._level_bytes[k[:-2]] >= small),
            next(iter(self._tiles)),  # only small levels left: plain LRU
        )
        self._add(victim, -_entry_bytes(self._tiles.pop(victim)))

    def _add(self, key: tuple, size: int) -> None:
        self.bytes += size
        level = key[:-2]
        self._level_bytes[level] = self._level_bytes.get(level, 0) + size

    def clear(self) -> None:
        with self._lock:
            self._tiles.clear()
            self._level_bytes.clear()
            self.bytes = 0


@dataclass(frozen=True, eq=False)
class TiffLevelTiles:
    """Tile table of one tiled TIFF page that backs one slide level.

    Attributes
    ----------
    width, height : int
        Level size in px.
    tile_w, tile_h : int
        Tile size in px.
    offsets, bytecounts : ndarray of int64
        Byte offset and length of each tile, row-major.
    across : int
        Tile columns of the page's grid (0: the level's width in tiles).
    jpegheader : bytes or None
        NDPI: the JPEG header each tile (a restart interval) is decoded behind.
    scale : int
        1, or NDPI's levels that OpenSlide makes itself: 2, 4 or 8, the page decoded
        at that fraction by the JPEG decoder's DCT scaling (``tile_w``, ``tile_h``
        and the level's size are the page's divided by it, rounded down).
    """

    path: Path
    page_index: int
    width: int
    height: int
    tile_w: int
    tile_h: int
    offsets: np.ndarray
    bytecounts: np.ndarray
    jpegtables: bytes | None
    decode: Any
    across: int = 0
    jpegheader: bytes | None = None
    scale: int = 1

    @property
    def tiles_across(self) -> int:
        """Number of tile columns of the page's grid (``across``; by default the
        level's width in tiles)."""
        return self.across or -(-self.width // self.tile_w)

    def _tile_bytes(self, fd: int, index: int) -> bytes | None:
        """The stored bytes of tile `index` (row-major); None if absent from the file."""
        count = int(self.bytecounts[index])
        if count == 0:
            return None
        data = os.pread(fd, count, int(self.offsets[index]))
        if len(data) != count:
            raise OSError(f"tile {index} of page {self.page_index} is truncated")
        return data

    def decode_tile(self, fd: int, row: int, col: int) -> np.ndarray | None:
        """Decode tile (`row`, `col`) to ``(tile_h, tile_w, 3)`` uint8; None if absent."""
        index = row * self.tiles_across + col
        data = self._tile_bytes(fd, index)
        if data is None:
            return None
        # NDPI: tiles are restart intervals of one JPEG, each decoded behind the
        # header tifffile rewrote for the tile's size (as OpenSlide decodes them).
        if self.scale > 1:
            jpeg = self.jpegheader + _without_marker(data) + b"\xff\xd9"
            return _decode_scaled(jpeg, self.tile_h, self.tile_w, self.scale)
        header = {} if self.jpegheader is None else {"jpegheader": self.jpegheader}
        tile, _, _ = self.decode(data, index, jpegtables=self.jpegtables, **header)
        return tile.reshape(self.tile_h, self.tile_w, -1)[..., :3]

    @cached_property
    def stack(self) -> int:
        """Tile rows decoded as one image: 1, or for NDPI's thin tiles (restart
        intervals of one MCU row) enough for cells about 256 px high."""
        if self.jpegheader is None or b"\xff\xc0" not in self.jpegheader:
            return 1
        return max(1, -(-256 // self.tile_h))

    def decode_stack(self, fd: int, cell_row: int, col: int) -> np.ndarray:
        """Decode tile rows ``cell_row * stack ...`` of column `col`: as one JPEG
        (:meth:`decode_cells` of this one cell), or tile by tile where intervals are
        absent (white, as OpenSlide shows them) or lack their own restart marker."""
        cells = self.decode_cells(fd, cell_row, col, col)
        if cells is not None:
            return cells[0]
        down = len(self.offsets) // self.tiles_across
        rows = range(cell_row * self.stack, min((cell_row + 1) * self.stack, down))
        cell = np.full((len(rows) * self.tile_h, self.tile_w, 3), 255, np.uint8)
        for k, row in enumerate(rows):
            tile = self.decode_tile(fd, row, col)
            if tile is not None:
                cell[k * self.tile_h : (k + 1) * self.tile_h] = tile
        return cell

    @property
    def _cache_page(self) -> int | tuple[int, int]:
        """The page's part of this level's tile-cache keys (a scaled level's own)."""
        return self.page_index if self.scale == 1 else (self.page_index, self.scale)

    def cached_tile(
        self, fd: int, row: int, col: int, cache: TileCache | None
    ) -> np.ndarray | None:
        """:meth:`decode_tile` (of a cell row of :attr:`stack` tile rows: :meth:`decode_stack`)
        through `cache` (read-only tiles: never write into them)."""
        stacked = self.stack > 1
        decode = self.decode_stack if stacked else self.decode_tile
        if cache is None:
            return decode(fd, row, col)
        page = self._cache_page
        key = (page, "stack", row, col) if stacked else (page, row, col)
        found, tile = cache.get(key)
        if not found:
            tile = decode(fd, row, col)
            if tile is not None:
                tile = np.ascontiguousarray(tile)
                tile.flags.writeable = False
            cache.put(key, tile)
        return tile

    def read(
        self, fd: int, lvl_x: int, lvl_y: int, w: int, h: int, cache: TileCache | None = None
    ) -> np.ndarray:
        """Read a region given in this level's pixel frame (must lie inside it).

        Missing tiles (byte count 0) come back white, as OpenSlide shows them.
        Decoded tiles are looked up in and added to `cache` when given.
        """
        out = np.empty((h, w, 3), dtype=np.uint8)
        cell_h = self.tile_h * self.stack
        cols = range(lvl_x // self.tile_w, (lvl_x + w - 1) // self.tile_w + 1)
        for row in range(lvl_y // cell_h, (lvl_y + h - 1) // cell_h + 1):
            decoded = {}
            if self.stack > 1 and cache is not None:
                decoded = self._decode_missing_cells(fd, row, cols, cache)
            for col in cols:
                tile = decoded.get(col)
                if tile is None:
                    tile = self.cached_tile(fd, row, col, cache)
                paste(
                    out, lvl_x, lvl_y, tile, col * self.tile_w, row * cell_h, (cell_h, self.tile_w)
                )
        return out

    def _decode_missing_cells(
        self, fd: int, cell_row: int, cols: range, cache: TileCache
    ) -> dict[int, np.ndarray]:
        """Decode the cells of `cols` in `cell_row` that `cache` lacks, reading each run
        of adjacent ones at once (:meth:`decode_cells`); put them in `cache` and
        return them by column.

        Runs that cannot be read so (absent or non-adjacent intervals) are left to
        :meth:`cached_tile`, cell by cell.
        """
        page = self._cache_page
        missing = [c for c in cols if not cache.get((page, "stack", cell_row, c))[0]]
        runs: list[list[int]] = []
        for col in missing:
            if runs and runs[-1][-1] == col - 1:
                runs[-1].append(col)
            else:
                runs.append([col])
        decoded = {}
        for run in runs:
            cells = self.decode_cells(fd, cell_row, run[0], run[-1])
            for col, cell in zip(run, cells or (), strict=False):
                cell.flags.writeable = False
                cache.put((page, "stack", cell_row, col), cell)
                decoded[col] = cell
        return decoded

    def decode_cells(self, fd: int, cell_row: int, col0: int, col1: int) -> list[np.ndarray] | None:
        """Decode the cells ``col0 ... col1`` of `cell_row`, each as one JPEG, with one
        read per tile row; None if their intervals are absent, not adjacent or
        without their own restart markers.

        A cell's restart intervals, each decodable on its own, are joined with
        renumbered restart markers behind the tile header whose frame height is
        patched to the rows joined: one decode instead of one per 8-px tile, and
        the same pixels (each interval restarts its predictions). NDPI stores a
        level's intervals in raster order, so a tile row of adjacent cells is one
        byte run; the join is done in numpy (no Python loop over the intervals).
        Each cell is decoded on its own: joining cells side by side would smooth
        chroma across their edges, which OpenSlide does not.
        """
        import imagecodecs

        down = len(self.offsets) // self.tiles_across
        rows = np.arange(cell_row * self.stack, min((cell_row + 1) * self.stack, down))
        index = rows[:, None] * self.tiles_across + np.arange(col0, col1 + 1)[None, :]
        offsets, counts = self.offsets[index], self.bytecounts[index]
        if (counts < 2).any() or (offsets[:, 1:] != offsets[:, :-1] + counts[:, :-1]).any():
            return None
        starts, stops = offsets[:, 0], offsets[:, -1] + counts[:, -1]
        chunks = [os.pread(fd, int(b - a), int(a)) for a, b in zip(starts, stops, strict=True)]
        if any(len(c) != b - a for c, a, b in zip(chunks, starts, stops, strict=True)):
            raise OSError(f"a tile row of page {self.page_index} is truncated")
        data = np.frombuffer(b"".join(chunks), np.uint8)
        # Where each interval starts in `data`: its offset within its row's run.
        row_base = np.concatenate([[0], np.cumsum(stops - starts)[:-1]])
        begins = row_base[:, None] + offsets - starts[:, None]
        marker = data[begins + counts - 1]
        if not ((data[begins + counts - 2] == 0xFF) & (marker >= 0xD0) & (marker <= 0xD9)).all():
            return None  # an interval without its own marker: cell by cell
        height = len(rows) * self.tile_h
        header = bytearray(self.jpegheader)
        sof = header.index(b"\xff\xc0")
        header[sof + 5 : sof + 7] = (height * self.scale).to_bytes(2, "big")
        # All cells' bytes at once, cell after cell: each cell's intervals in row
        # order, their markers renumbered in that order (the last one ends the image).
        lengths, first = counts.T.ravel(), begins.T.ravel()
        ends = np.cumsum(lengths)
        joined = data[np.repeat(first - (ends - lengths), lengths) + np.arange(ends[-1])]
        numbers = (0xD0 + np.arange(len(rows)) % 8).astype(np.uint8)
        numbers[-1] = 0xD9
        joined[ends - 1] = np.tile(numbers, index.shape[1])
        head = np.frombuffer(bytes(header), np.uint8)
        bounds = np.concatenate([[0], ends[len(rows) - 1 :: len(rows)]])
        cells = []
        for start, stop in itertools.pairwise(bounds):
            jpeg = np.concatenate([head, joined[start:stop]]).tobytes()
            if self.scale > 1:
                cells.append(_decode_scaled(jpeg, height, self.tile_w, self.scale))
                continue
            pixels = imagecodecs.jpeg8_decode(jpeg)
            cells.append(np.ascontiguousarray(pixels.reshape(height, self.tile_w, -1)[..., :3]))
        return cells


def _without_marker(data: bytes) -> bytes:
    """A restart interval's bytes without its own trailing restart marker (or image end)."""
    if len(data) >= 2 and data[-2] == 0xFF and 0xD0 <= data[-1] <= 0xD9:
        return data[:-2]
    return data


def _decode_scaled(jpeg: bytes, height: int, width: int, scale: int) -> np.ndarray:
    """Decode `jpeg` at 1/`scale` with libjpeg's DCT scaling (Pillow's draft mode),
    as OpenSlide makes NDPI's extra levels; ``(height, width, 3)`` uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        image.draft("RGB", (image.width // scale, image.height // scale))
        if image.size != (width, height):
            raise ValueError(f"scaled JPEG decode gave {image.size}, wanted {(width, height)}")
        return np.asarray(image.convert("RGB"))


def paste(
    out: np.ndarray,
    x: int,
    y: int,
    tile: np.ndarray | None,
    tile_x: int,
    tile_y: int,
    tile_shape: tuple[int, int],
) -> None:
    """Copy into window `out` (corner `x`, `y`) the part of `tile` (corner `tile_x`,
    `tile_y`, ``(h, w)`` `tile_shape`) that lies inside it; an absent tile (None)
    is white, as OpenSlide shows it."""
    h, w = out.shape[:2]
    x0, x1 = max(x, tile_x), min(x + w, tile_x + tile_shape[1])
    y0, y1 = max(y, tile_y), min(y + h, tile_y + tile_shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    dst = out[y0 - y : y1 - y, x0 - x : x1 - x]
    if tile is None:
        dst[...] = 255
    else:
        dst[...] = tile[y0 - tile_y : y1 - tile_y, x0 - tile_x : x1 - tile_x]


def _page_fits(
    page: tifffile.TiffPage, width: int, height: int, tile: tuple[int, int], padded: bool = False
) -> bool:
    """Whether `page` can back a level of `width` × `height` px tiled `tile`: same
    size, or with `padded` a size in whole tiles less than one tile larger (Philips
    TIFF pads every level to whole tiles; OpenSlide crops levels after the first)."""
    if padded:
        size_ok = all(
            n % t == 0 and 0 <= n - want < t
            for n, want, t in (
                (page.imagewidth, width, tile[0]),
                (page.imagelength, height, tile[1]),
            )
        )
    else:
        size_ok = page.imagewidth == width and page.imagelength == height
    return (
        page.is_tiled
        and size_ok
        and (page.tilewidth, page.tilelength) == tile
        and page.imagedepth == 1
        and page.bitspersample == 8
        and page.samplesperpixel in (3, 4)
        and page.planarconfig == 1
        and int(page.compression) in _DECODABLE
    )


def find_level_tiles(
    path: Path,
    level_dimensions: tuple[tuple[int, int], ...],
    tile_sizes: tuple[tuple[int, int] | None, ...],
) -> tuple[TiffLevelTiles | None, ...]:
    """Match each slide level to a tiled TIFF page with its size and tiling.

    Parameters
    ----------
    path : Path
        TIFF-based slide file.
    level_dimensions : tuple of (int, int)
        ``(width, height)`` of each level, as OpenSlide reports.
    tile_sizes : tuple of (int, int) or None
        ``(tile_w, tile_h)`` of each level as OpenSlide reports, None if untiled.

    Returns
    -------
    tuple
        One :class:`TiffLevelTiles` per level, or None where no page matches
        unambiguously (OpenSlide is used for those levels).
    """
    if not hasattr(os, "pread"):
        return (None,) * len(level_dimensions)
    try:
        with open_tiff(path) as tif:
            pages = list(tif.pages)
            found: list[TiffLevelTiles | None] = []
            for (width, height), tile in zip(level_dimensions, tile_sizes, strict=True):
                matches = []
                for padded in (False, True):  # a page of the same size first
                    matches = matches or [
                        (i, p)
                        for i, p in enumerate(pages)
                        if tile is not None and _page_fits(p, width, height, tile, padded)
                    ]
                if not matches:
                    found.append(_scaled_level(path, pages, width, height, tile))
                    continue
                if len(matches) != 1:
                    found.append(None)
                    continue
                index, page = matches[0]
                found.append(
                    TiffLevelTiles(
                        path=path,
                        page_index=index,
                        # Reads stay inside both the level and the page.
                        width=min(width, page.imagewidth),
                        height=min(height, page.imagelength),
                        tile_w=page.tilewidth,
                        tile_h=page.tilelength,
                        offsets=np.asarray(page.dataoffsets, dtype=np.int64),
                        bytecounts=np.asarray(page.databytecounts, dtype=np.int64),
                        jpegtables=page.jpegtables,
                        decode=page.decode,
                        across=-(-page.imagewidth // page.tilewidth),
                        jpegheader=getattr(page, "jpegheader", None),
                    )
                )
            return tuple(found)
    except TIFF_ERRORS:
        return (None,) * len(level_dimensions)


def _scaled_level(
    path: Path,
    pages: list[tifffile.TiffPage],
    width: int,
    height: int,
    tile: tuple[int, int] | None,
) -> TiffLevelTiles | None:
    """An NDPI level OpenSlide makes by decoding a page at 1/2, 1/4 or 1/8 (libjpeg's
    DCT scaling, sizes rounded down), whose tiles are the page's restart intervals
    scaled: the one page that gives the level's size and tiles at the smallest such
    scale; None if none or several do (OpenSlide reads it then)."""
    if tile is None:
        return None
    for scale in (2, 4, 8):
        candidates = [
            (index, page)
            for index, page in enumerate(pages)
            if getattr(page, "jpegheader", None) is not None
            and page.is_tiled
            and int(page.compression) == 7
            and page.imagedepth == 1
            and page.samplesperpixel == 3
            and (page.tilewidth, page.tilelength) == (tile[0] * scale, tile[1] * scale)
            and (page.imagewidth // scale, page.imagelength // scale) == (width, height)
        ]
        if len(candidates) > 1:
            return None  # e.g. focal planes of one size: which one OpenSlide scales is unknown
        if candidates:
            index, page = candidates[0]
            return TiffLevelTiles(
                path=path,
                page_index=index,
                width=width,
                height=height,
                tile_w=tile[0],
                tile_h=tile[1],
                offsets=np.asarray(page.dataoffsets, dtype=np.int64),
                bytecounts=np.asarray(page.databytecounts, dtype=np.int64),
                jpegtables=page.jpegtables,
                decode=page.decode,
                across=-(-page.imagewidth // page.tilewidth),
                jpegheader=page.jpegheader,
                scale=scale,
            )
    return None


def tiff_truncation(path: Path) -> str | None:
    """Say why a TIFF-based file is truncated or corrupt, or None if it looks whole.

    Parses only the IFDs (tag tables), never pixel data.
    """
    size = path.stat().st_size
    first = _first_ifd_offset(path)
    if first is not None and first >= size:
        return f"is truncated: its first page starts at byte {first}, file has {size}"
    try:
        with open_tiff(path) as tif:
            if not tif.pages:
                return "is a corrupt or truncated TIFF (no readable page)"
            for index, page in enumerate(tif.pages):
                offsets = np.asarray(page.dataoffsets, dtype=np.int64)
                counts = np.asarray(page.databytecounts, dtype=np.int64)
                if offsets.size and int((offsets + counts).max()) > size:
                    end = int((offsets + counts).max())
                    return f"is truncated: page {index} needs {end} bytes, file has {size}"
    except TIFF_ERRORS as err:
        return f"is a corrupt or truncated TIFF ({err})"
    return None


def _first_ifd_offset(path: Path) -> int | None:
    """Byte offset of a TIFF's (or BigTIFF's) first page, from its header; None if unreadable."""
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        return None
    order = "<" if head[:2] == b"II" else ">"
    (version,) = struct.unpack(order + "H", head[2:4])
    if version == 42:
        return struct.unpack(order + "I", head[4:8])[0]
    if version == 43 and len(head) == 16:
        return struct.unpack(order + "Q", head[8:16])[0]
    return None
