"""OpenSlide-backed whole-slide image access.

Coordinates follow OpenSlide: ``(x, y)`` in the level-0 reference frame,
sizes ``(w, h)`` in pixels of the level being read. Pixels come back as
``(h, w, 3)`` uint8 RGB, with transparent (outside the scanned area) pixels
composited over white, as glass looks.

One OpenSlide handle is opened per thread that reads, because an OpenSlide
handle is not meant to be hammered from many threads at once and because a
handle that failed once stays failed: after a read error that thread's handle
is thrown away and reopened.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import openslide
import tifffile
from openslide import lowlevel

from napari_histo.errors import SlideError
from napari_histo.frames import MPP_RANGE, plausible_mpp
from napari_histo.io.dicom import has_dicom_magic, series_file, wsi_problem
from napari_histo.io.dicom_tiles import find_dicom_level_tiles
from napari_histo.io.mpp_choice import read_mpp_choice
from napari_histo.io.tiff_tiles import (
    TiffLevelTiles,
    TileCache,
    find_level_tiles,
    paste,
    tiff_truncation,
)

__all__ = ["MPP_RANGE", "Slide", "open_slide"]

#: Tile size used for chunking when the file is not tiled (strips, or unknown).
DEFAULT_TILE_PX = 512

#: Smallest side (px) of the cells OpenSlide-read levels are cached in: tiles as
#: thin as NDPI's (256 × 8) are grouped, so a window is not thousands of cells.
MIN_CELL_PX = 256

#: Per-slide OpenSlide tile cache shared by all of its handles (bytes). Same as
#: OpenSlide's own default, so a shared cache does not flatter benchmarks.
CACHE_BYTES = 32 * 1024 * 1024

# TIFF magic numbers and other signatures, used to give a precise reason when
# OpenSlide says only "unsupported format".
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "a PNG image, not a whole-slide image",
    b"\xff\xd8\xff": "a plain JPEG image, not a whole-slide image",
    b"PK\x03\x04": "a ZIP archive, not a whole-slide image",
    b"%PDF": "a PDF document, not a whole-slide image",
}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _as_path(path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _check_file(path: Path) -> None:
    """Raise SlideError unless `path` is a non-empty readable regular file."""
    if path.is_dir() and path.suffix.lower() != ".mrxs":
        raise SlideError(path, "is a directory, not a slide file")
    if not path.is_file():
        raise SlideError(path, "is not a regular file")
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as err:
        raise SlideError(path, f"cannot be read ({err.strerror or err})") from err
    if size == 0:
        raise SlideError(path, "is empty (0 bytes)")
    for magic, what in _SIGNATURES.items():
        if head.startswith(magic):
            raise SlideError(path, f"is {what}")


def _resolve_source(path: Path) -> Path:
    """The file OpenSlide opens for `path`: itself, or a folder's DICOM WSI series file.

    Raises SlideError (naming `path`) for missing, empty or unreadable files,
    DICOM files that hold no slide, and folders without one DICOM WSI series.
    """
    if not path.exists():
        raise SlideError(path, "no such file")
    if path.is_dir() and path.suffix.lower() != ".mrxs":
        return series_file(path)
    _check_file(path)
    if has_dicom_magic(path):
        reason = wsi_problem(path)
        if reason is not None:
            raise SlideError(path, reason)
    return path


def _describe_open_failure(path: Path, err: Exception) -> str:
    """Turn an OpenSlide open error into a short human reason."""
    if has_dicom_magic(path):
        if isinstance(err, openslide.OpenSlideUnsupportedFormatError):
            return "is a corrupt or truncated DICOM file (OpenSlide cannot parse its header)"
        msg = str(err).strip() or type(err).__name__
        return f"is a DICOM WSI file that OpenSlide cannot open: {msg}"
    with path.open("rb") as f:
        head = f.read(4)
    if head in _TIFF_MAGIC:
        reason = tiff_truncation(path)
        if reason is not None:
            return reason
    if isinstance(err, openslide.OpenSlideUnsupportedFormatError):
        if head in _TIFF_MAGIC:
            return "is a TIFF file that OpenSlide cannot read as a slide (not tiled or pyramidal?)"
        return "is not a slide format OpenSlide recognises (corrupt, or not a slide)"
    msg = str(err).strip() or type(err).__name__
    compression = _unsupported_compression(msg)
    if compression is not None:
        return f"uses {compression} TIFF compression, which OpenSlide cannot decode"
    return f"is corrupt or truncated: {msg}"


def _unsupported_compression(msg: str) -> str | None:
    """``"WEBP (50001)"`` from OpenSlide's "Unsupported TIFF compression: 50001", else None."""
    match = re.search(r"Unsupported TIFF compression: (\d+)", msg)
    if match is None:
        return None
    code = int(match.group(1))
    try:
        name = tifffile.COMPRESSION(code).name
    except ValueError:
        name = "unknown"
    return f"{name} ({code})"


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in _TIFF_MAGIC


def _parse_positive_float(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def argb_to_rgb(argb: np.ndarray) -> np.ndarray:
    """Convert OpenSlide's premultiplied ARGB pixels to RGB over white.

    Parameters
    ----------
    argb : ndarray of uint32, shape (h, w)
        Native-endian premultiplied ARGB, as ``openslide_read_region`` writes.

    Returns
    -------
    ndarray of uint8, shape (h, w, 3)
        RGB; transparent pixels become white (255, 255, 255).
    """
    if argb.dtype != np.uint32 or argb.ndim != 2:
        raise ValueError(f"`argb` must be a 2-D uint32 array, got {argb.dtype} {argb.shape}")
    channels = argb.view(np.uint8).reshape(*argb.shape, 4)
    # Fancy indexing copies channel by channel: ~3x faster than copying a
    # reversed-stride view, and faster than PIL's own conversion.
    order, alpha_index = ([2, 1, 0], 3) if np.little_endian else ([1, 2, 3], 0)
    rgb = channels[..., order]
    alpha = channels[..., alpha_index]
    if alpha.min() < 255:
        # Premultiplied colour over white: c + (255 - a) never exceeds 255.
        rgb += (255 - alpha)[..., None]
    return rgb


class Slide:
    """A whole-slide image read through OpenSlide.

    Parameters
    ----------
    path : str or PathLike
        Slide file (anything OpenSlide reads: .svs, .ndpi, .mrxs, tiled .tif,
        DICOM WSI .dcm, ...), or a folder holding one DICOM WSI series (its
        largest pyramid level is opened; OpenSlide finds the other files).
    mpp : float, optional
        Microns per pixel at level 0, overriding the saved choice and the file's value.
    direct : bool
        Decode tiles directly where that is verified to give OpenSlide's pixels
        (default). False reads every level through OpenSlide: to rule the fast path
        out, or to measure the path formats without a direct decoder take.

    Notes
    -----
    Where the µm/px comes from (:attr:`mpp_source`), first match wins:

    1. ``"argument"``: `mpp` given here (``--mpp`` on the command line);
    2. ``"saved"``: the choice saved beside the slide, ``<slide>.mpp.json``
       (:mod:`napari_histo.io.mpp_choice`; ``napari-histo info --set-mpp`` or a
       dock's µm/px field). It beats the file, so that a person who corrects a
       wrong but plausible file value wins;
    3. ``"file"``: the file's own metadata, when inside 0.05–50 µm/px (outside,
       e.g. a 72-dpi TIFF default, it is treated as missing with one warning,
       given only when no saved choice fills the gap);
    4. None: unknown; :meth:`require_mpp` raises.

    Raises
    ------
    SlideError
        If the file is missing, empty, not a slide, or corrupt. The message
        names the path and the reason.

    Examples
    --------
    >>> with Slide("tests/data/cmu_small_region.svs") as slide:
    ...     tile = slide.read_region(0, 0, 0, 256, 256)
    >>> tile.shape, tile.dtype
    ((256, 256, 3), dtype('uint8'))
    """

    def __init__(
        self, path: str | os.PathLike[str], *, mpp: float | None = None, direct: bool = True
    ) -> None:
        self._source = _as_path(path)
        valid_mpp = isinstance(mpp, int | float) and math.isfinite(mpp) and mpp > 0
        if mpp is not None and not valid_mpp:
            raise ValueError(f"`mpp` must be a finite number > 0, got {mpp!r}")
        self._path = _resolve_source(self._source)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._handles: list[openslide.OpenSlide] = []
        self._closed = False
        self._cache = openslide.OpenSlideCache(CACHE_BYTES)
        first = self._open_handle()
        props = dict(first.properties)
        self._properties = MappingProxyType(props)
        self._level_dimensions = tuple(tuple(int(v) for v in d) for d in first.level_dimensions)
        self._level_downsamples = tuple(float(d) for d in first.level_downsamples)
        self._associated_names = tuple(first.associated_images.keys())
        saved = read_mpp_choice(self._path) if mpp is None else None
        file_mpp_x, file_mpp_y = _plausible_mpp(
            self._path, props, warn=mpp is None and saved is None
        )
        file_mpp_y = file_mpp_y or file_mpp_x
        self._file_mpp = None if file_mpp_x is None else (file_mpp_x + file_mpp_y) / 2
        self._mpp_source: str | None
        if mpp is not None:
            self._mpp_x = self._mpp_y = float(mpp)
            self._mpp_source = "argument"
        elif saved is not None:
            self._mpp_x = self._mpp_y = saved.mpp
            self._mpp_source = "saved"
        else:
            self._mpp_x, self._mpp_y = file_mpp_x, file_mpp_y
            self._mpp_source = None if file_mpp_x is None else "file"
        if self._level_dimensions[0][0] <= 0 or self._level_dimensions[0][1] <= 0:
            self.close()
            raise SlideError(self._path, f"has an empty level 0 {self._level_dimensions[0]}")
        self._level_tiles: tuple[TiffLevelTiles | None, ...] = (None,) * self.level_count
        self._fast_ok: list[bool | None] = [None if direct else False] * self.level_count
        # One descriptor per file holding directly decoded tiles (DICOM: one per level).
        self._fds: dict[Path, int] = {}
        self._tile_cache = TileCache()
        if self._path.is_file() and _is_tiff(self._path):
            reason = tiff_truncation(self._path)
            if reason is not None:
                self.close()
                raise SlideError(self._path, reason)
            self._level_tiles = find_level_tiles(
                self._path,
                self._level_dimensions,
                tuple(self.tile_size(level) for level in range(self.level_count)),
            )
        elif self._path.is_file() and has_dicom_magic(self._path):
            self._level_tiles = find_dicom_level_tiles(
                self._path,
                self._level_dimensions,
                tuple(self.tile_size(level) for level in range(self.level_count)),
            )
        try:
            for tiles in self._level_tiles:
                if tiles is not None and tiles.path not in self._fds:
                    self._fds[tiles.path] = os.open(
                        tiles.path, os.O_RDONLY | getattr(os, "O_BINARY", 0)
                    )
        except OSError as err:
            self.close()
            raise SlideError(self._path, f"cannot be opened ({err.strerror or err})") from err
        self._check_readable()

    # -- handles -------------------------------------------------------------
    def _open_handle(self) -> openslide.OpenSlide:
        try:
            handle = openslide.OpenSlide(self._path)
        except (openslide.OpenSlideError, OSError, ValueError) as err:
            raise SlideError(self._path, _describe_open_failure(self._path, err)) from err
        handle.set_cache(self._cache)
        with self._lock:
            if self._closed:
                handle.close()
                raise SlideError(self._path, "slide is closed")
            self._handles.append(handle)
        self._local.handle = handle
        return handle

    def _handle(self) -> openslide.OpenSlide:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            if self._closed:
                raise SlideError(self._path, "slide is closed")
            handle = self._open_handle()
        return handle

    def _discard_handle(self) -> None:
        handle = getattr(self._local, "handle", None)
        self._local.handle = None
        if handle is not None:
            with self._lock:
                if handle in self._handles:
                    self._handles.remove(handle)
            handle.close()

    def _check_readable(self) -> None:
        """Decode one pixel of the smallest level and of level 0's last tile.

        OpenSlide opens some truncated files happily and only fails on the
        first read; failing here gives the error at open time, where the user
        looks for it, at the cost of decoding at most two tiles.
        """
        last = self.level_count - 1
        w0, h0 = self._level_dimensions[0]
        try:
            self.read_region(last, 0, 0, 1, 1)
            self.read_region(0, w0 - 1, h0 - 1, 1, 1)
        except SlideError as err:
            self.close()
            raise SlideError(self._path, f"is corrupt or truncated ({err.reason})") from err

    # -- metadata ------------------------------------------------------------
    @property
    def path(self) -> Path:
        """Path of the slide file OpenSlide opened (a folder's DICOM level-0 file)."""
        return self._path

    @property
    def source(self) -> Path:
        """The path given: the slide file, or the folder holding a DICOM WSI series."""
        return self._source

    @property
    def name(self) -> str:
        """Name of what was opened (file or folder), for layer names and messages."""
        return self._source.name

    @property
    def properties(self) -> Mapping[str, str]:
        """All OpenSlide properties (read-only)."""
        return self._properties

    @property
    def vendor(self) -> str | None:
        """Vendor OpenSlide detected ("aperio", "hamamatsu", "generic-tiff", ...)."""
        return self._properties.get(openslide.PROPERTY_NAME_VENDOR)

    @property
    def level_count(self) -> int:
        """Number of pyramid levels stored in the file."""
        return len(self._level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(width, height)`` of each level in px."""
        return self._level_dimensions

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0 in px."""
        return self._level_dimensions[0]

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of each level relative to level 0 (may be non-integer)."""
        return self._level_downsamples

    @property
    def mpp_x(self) -> float | None:
        """Microns per pixel along x at level 0, or None when unknown."""
        return self._mpp_x

    @property
    def mpp_y(self) -> float | None:
        """Microns per pixel along y at level 0, or None when unknown."""
        return self._mpp_y

    @property
    def mpp(self) -> float | None:
        """Mean microns per pixel at level 0, or None when unknown."""
        if self._mpp_x is None or self._mpp_y is None:
            return None
        return (self._mpp_x + self._mpp_y) / 2

    @property
    def mpp_source(self) -> str | None:
        """Where :attr:`mpp` came from: "argument", "saved", "file", or None when unknown.

        See the class Notes for the order.
        """
        return self._mpp_source

    @property
    def file_mpp(self) -> float | None:
        """The file's own mean µm/px when plausible (whatever :attr:`mpp` is), else None."""
        return self._file_mpp

    @property
    def objective_power(self) -> float | None:
        """Scanning objective magnification (e.g. 40.0), or None when unknown."""
        return _parse_positive_float(self._properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER))

    def tile_size(self, level: int = 0) -> tuple[int, int] | None:
        """Native ``(width, height)`` tile size of `level` in px, None if untiled."""
        self._check_level(level)
        w = self._properties.get(f"openslide.level[{level}].tile-width")
        h = self._properties.get(f"openslide.level[{level}].tile-height")
        if w is None or h is None:
            return None
        return int(w), int(h)

    def cell_size(self, level: int = 0) -> tuple[int, int]:
        """``(width, height)`` in px of the cells reads of `level` decode and cache as
        one: the native tile where it is decoded directly (NDPI: a column of its
        8-px restart intervals about 256 px high), else whole native tiles at least
        256 px a side (what OpenSlide reads are cached in). Reads split on cell
        edges decode nothing twice."""
        tiles = self._level_tiles[level] if level < len(self._level_tiles) else None
        if tiles is not None and self._fast_ok[level] is not False:
            return tiles.tile_w, tiles.tile_h * tiles.stack
        return self._openslide_cell(level)

    def _openslide_cell(self, level: int) -> tuple[int, int]:
        """``(width, height)`` of the cells OpenSlide reads of `level` are cached in:
        whole native tiles, at least 256 px a side (NDPI's are 256 × 8 px)."""
        native_w, native_h = self.tile_size(level) or (DEFAULT_TILE_PX, DEFAULT_TILE_PX)
        return native_w * -(-MIN_CELL_PX // native_w), native_h * -(-MIN_CELL_PX // native_h)

    def require_mpp(self) -> float:
        """Return :attr:`mpp`, or raise SlideError when the slide has none."""
        if self.mpp is None:
            raise SlideError(
                self._path,
                "has no microns-per-pixel (mpp) metadata; pass --mpp (mpp=) or save one "
                "with `napari-histo info SLIDE --set-mpp F`",
            )
        return self.mpp

    @property
    def associated_names(self) -> tuple[str, ...]:
        """Names of associated images ("label", "macro", "thumbnail", ...)."""
        return self._associated_names

    def associated_image(self, name: str) -> np.ndarray:
        """Associated image `name` as ``(h, w, 3)`` uint8 RGB over white."""
        if name not in self._associated_names:
            raise KeyError(
                f"{self._path}: no associated image {name!r}; has {self._associated_names}"
            )
        image = self._handle().associated_images[name]
        rgba = np.asarray(image.convert("RGBA"))
        return _rgba_over_white(rgba)

    def best_level_for_downsample(self, downsample: float) -> int:
        """Index of the finest level whose downsample is <= `downsample`."""
        if not downsample > 0:
            raise ValueError(f"`downsample` must be > 0, got {downsample!r}")
        best = 0
        for level, ds in enumerate(self._level_downsamples):
            if ds <= downsample * (1 + 1e-6):
                best = level
        return best

    # -- pixels --------------------------------------------------------------
    def _check_level(self, level: int) -> None:
        if not isinstance(level, int | np.integer) or isinstance(level, bool):
            raise TypeError(f"`level` must be an int, got {type(level).__name__}")
        if not 0 <= level < self.level_count:
            raise ValueError(f"`level` must be in [0, {self.level_count - 1}], got {level}")

    def read_region_argb(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read raw premultiplied ARGB (native-endian uint32, shape (h, w))."""
        self._check_level(level)
        if w < 0 or h < 0:
            raise ValueError(f"region size must be >= 0, got w={w}, h={h}")
        buf = np.empty((h, w), dtype=np.uint32)
        if w == 0 or h == 0:
            return buf
        pointer = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32))
        for attempt in (1, 2):
            handle = self._handle()
            try:
                # The low-level call fills our buffer directly, skipping the
                # PIL image that OpenSlide.read_region builds (a full copy).
                lowlevel._read_region(handle._osr, pointer, int(x), int(y), int(level), w, h)
                return buf
            except openslide.OpenSlideError as err:
                # A failed handle stays failed: drop it; retry once on a new one.
                self._discard_handle()
                if attempt == 2:
                    raise SlideError(
                        self._path,
                        f"cannot read level {level} region x={x} y={y} w={w} h={h}: {err}",
                    ) from err
        raise AssertionError("unreachable")

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read a region as RGB.

        Parameters
        ----------
        level : int
            Pyramid level to read from.
        x, y : int
            Top-left corner in the **level-0** frame, px.
        w, h : int
            Size in pixels **of `level`**.

        Returns
        -------
        ndarray of uint8, shape (h, w, 3)
            RGB; pixels outside the scanned area are white.
        """
        self._check_level(level)
        ds = self._level_downsamples[level]
        if x % ds == 0 and y % ds == 0:
            lvl_x, lvl_y = int(x // ds), int(y // ds)
            fast = self._read_tiles(level, lvl_x, lvl_y, w, h)
            if fast is None:
                fast = self._read_openslide_tiles(level, lvl_x, lvl_y, w, h)
            if fast is not None:
                return fast
        return argb_to_rgb(self.read_region_argb(level, x, y, w, h))

    def read_level_region(self, level: int, lvl_x: int, lvl_y: int, w: int, h: int) -> np.ndarray:
        """Like :meth:`read_region`, with the corner given in `level`'s own frame.

        On tiled TIFF levels this reads the level's own pixel grid exactly,
        also when the level's downsample is not an integer (where OpenSlide's
        level-0 addressing implies a sub-pixel shift).
        """
        self._check_level(level)
        fast = self._read_tiles(level, lvl_x, lvl_y, w, h)
        if fast is None:
            fast = self._read_openslide_tiles(level, lvl_x, lvl_y, w, h)
        if fast is not None:
            return fast
        ds = self._level_downsamples[level]
        return argb_to_rgb(self.read_region_argb(level, round(lvl_x * ds), round(lvl_y * ds), w, h))

    def _read_openslide_tiles(
        self, level: int, lvl_x: int, lvl_y: int, w: int, h: int
    ) -> np.ndarray | None:
        """OpenSlide's pixels of a region, as whole tiles of the level's grid kept in
        the tile cache; None when that does not apply.

        Most of an OpenSlide read is compositing, not decoding (its own cache keeps
        decoded tiles, yet reading the same window again costs ~80 % as much), so a
        tile already composited and converted is served from the cache by a copy.
        Missing tiles are read in one call: the bounding box of the missing ones.
        """
        if self._closed:
            raise SlideError(self._path, "slide is closed")
        ds = self._level_downsamples[level]
        width, height = self._level_dimensions[level]
        cache = self._tile_cache
        if not ds.is_integer() or w <= 0 or h <= 0 or cache.max_bytes == 0:
            return None  # a fractional downsample reads at sub-pixel level-0 corners
        if lvl_x < 0 or lvl_y < 0 or lvl_x + w > width or lvl_y + h > height:
            return None  # outside the level: OpenSlide knows what to paint there
        tile_w, tile_h = self._openslide_cell(level)
        rows = range(lvl_y // tile_h, (lvl_y + h - 1) // tile_h + 1)
        cols = range(lvl_x // tile_w, (lvl_x + w - 1) // tile_w + 1)
        if len(rows) * len(cols) * tile_w * tile_h * 3 > cache.max_bytes // 2:
            return None  # more than the cache keeps: a plain read
        tiles: dict[tuple[int, int], np.ndarray] = {}
        missing = []
        for row in rows:
            for col in cols:
                found, tile = cache.get(("openslide", level, row, col))
                if found and tile is not None:
                    tiles[row, col] = tile
                else:
                    missing.append((row, col))
        if missing:
            r0, r1 = min(r for r, _ in missing), max(r for r, _ in missing)
            c0, c1 = min(c for _, c in missing), max(c for _, c in missing)
            bx, by = c0 * tile_w, r0 * tile_h
            bw, bh = min(width, (c1 + 1) * tile_w) - bx, min(height, (r1 + 1) * tile_h) - by
            block = argb_to_rgb(self.read_region_argb(level, int(bx * ds), int(by * ds), bw, bh))
            for row in range(r0, r1 + 1):
                for col in range(c0, c1 + 1):
                    y0, x0 = row * tile_h - by, col * tile_w - bx
                    # A copy, always: a 1 × 1 block is contiguous, and the block may
                    # be returned to the caller below.
                    tile = np.array(block[y0 : y0 + tile_h, x0 : x0 + tile_w], copy=True)
                    tile.flags.writeable = False
                    cache.put(("openslide", level, row, col), tile)
                    tiles[row, col] = tile
            if (bx, by, bw, bh) == (lvl_x, lvl_y, w, h):
                return block  # the window is the block: no assembly
        out = np.empty((h, w, 3), dtype=np.uint8)
        for (row, col), tile in tiles.items():
            paste(out, lvl_x, lvl_y, tile, col * tile_w, row * tile_h, (tile_h, tile_w))
        return out

    def _read_tiles(self, level: int, lvl_x: int, lvl_y: int, w: int, h: int) -> np.ndarray | None:
        """Decode tiles directly; None when the fast path does not apply."""
        tiles = self._level_tiles[level]
        if tiles is None or self._fast_ok[level] is False or w <= 0 or h <= 0:
            return None
        if lvl_x < 0 or lvl_y < 0 or lvl_x + w > tiles.width or lvl_y + h > tiles.height:
            return None  # outside the level: OpenSlide knows what to paint there
        if self._fast_ok[level] is None:
            self._verify_fast_path(level, tiles)
            if not self._fast_ok[level]:
                return None
        fd = self._fds.get(tiles.path)
        if fd is None or self._closed:
            raise SlideError(self._path, "slide is closed")
        try:
            return tiles.read(fd, int(lvl_x), int(lvl_y), int(w), int(h), self._tile_cache)
        except (OSError, RuntimeError, ValueError) as err:
            raise SlideError(
                self._path,
                f"cannot decode level {level} region x={lvl_x} y={lvl_y} w={w} h={h}: {err}",
            ) from err

    def _verify_fast_path(self, level: int, tiles: TiffLevelTiles) -> None:
        """Compare one decoded tile with OpenSlide's pixels; enable the fast path if equal."""
        ds = self._level_downsamples[level]
        rows = -(-tiles.height // tiles.tile_h)
        # Where the downsample is not an integer only the origin maps exactly.
        row, col = (rows // 2, tiles.tiles_across // 2) if ds.is_integer() else (0, 0)
        lvl_x, lvl_y = col * tiles.tile_w, row * tiles.tile_h
        w = min(tiles.tile_w, tiles.width - lvl_x)
        h = min(tiles.tile_h, tiles.height - lvl_y)
        expected = argb_to_rgb(
            self.read_region_argb(level, round(lvl_x * ds), round(lvl_y * ds), w, h)
        )
        try:
            got = tiles.read(self._fds[tiles.path], lvl_x, lvl_y, w, h)
            same = bool(np.array_equal(got, expected))
        except (OSError, RuntimeError, ValueError):
            same = False
        self._fast_ok[level] = same

    @property
    def tile_cache(self) -> TileCache:
        """Tiles kept for later reads (64 MiB at most): decoded by the direct path, or
        read whole from OpenSlide (composited RGB) on levels it alone reads."""
        return self._tile_cache

    @property
    def fast_levels(self) -> tuple[bool | None, ...]:
        """Per level: tiles decoded directly (True), by OpenSlide (False), not yet known (None).

        A level's direct decoding is checked against OpenSlide on its first read.
        """
        return tuple(
            False if tiles is None else ok
            for tiles, ok in zip(self._level_tiles, self._fast_ok, strict=True)
        )

    def thumbnail(self, max_px: int = 1024) -> np.ndarray:
        """Whole slide at most `max_px` on its longer side, RGB uint8."""
        if max_px < 1:
            raise ValueError(f"`max_px` must be >= 1, got {max_px}")
        image = self._handle().get_thumbnail((max_px, max_px))
        return _rgba_over_white(np.asarray(image.convert("RGBA")))

    # -- lifetime ------------------------------------------------------------
    def close(self) -> None:
        """Close every handle this slide opened (idempotent)."""
        cache = getattr(self, "_tile_cache", None)  # None when __init__ failed early
        if cache is not None:
            cache.clear()
        with self._lock:
            self._closed = True
            handles, self._handles = self._handles, []
        for handle in handles:
            handle.close()
        self._local = threading.local()
        fds, self._fds = getattr(self, "_fds", {}), {}
        for fd in fds.values():
            os.close(fd)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self._source)!r})"

    def iter_levels(self) -> Iterator[tuple[int, tuple[int, int], float]]:
        """Yield ``(level, (width, height), downsample)`` for every level."""
        yield from zip(
            range(self.level_count), self._level_dimensions, self._level_downsamples, strict=True
        )


def _rgba_over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied RGBA (as PIL gives) over white."""
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return np.round(rgb * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def _plausible_mpp(
    path: Path, props: Mapping[str, str], *, warn: bool
) -> tuple[float | None, float | None]:
    """The file's ``(mpp_x, mpp_y)``; both None (one warning) when either is implausible."""
    keys = (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y)
    values = [_parse_positive_float(props.get(key)) for key in keys]
    bad = [(k, v) for k, v in zip(keys, values, strict=True)
           if v is not None and not plausible_mpp(v)]  # fmt: skip
    if not bad:
        return values[0], values[1]
    if warn:
        key, value = bad[0]
        source = "TIFF resolution tags" if props.get("tiff.XResolution") else "file metadata"
        warnings.warn(
            f"{path}: {value:.4g} µm/px ({key}, from the {source}) is outside "
            f"{MPP_RANGE[0]:g}–{MPP_RANGE[1]:g} µm/px, so it is treated as missing; "
            "give the scale with --mpp (or mpp=), or save it with "
            "`napari-histo info SLIDE --set-mpp F`",
            UserWarning,
            stacklevel=3,
        )
    return None, None


def open_slide(path: str | os.PathLike[str], *, mpp: float | None = None) -> Slide:
    """Open a slide; the same as ``Slide(path, mpp=mpp)``."""
    return Slide(path, mpp=mpp)
