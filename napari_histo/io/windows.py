"""What the viewer reads: each slide level as an array whose slices are exact window reads.

napari reads a multiscale image one visible window at a time (``level[y0:y1, x0:x1]``).
Through a dask array that window becomes one task per chunk, each a separate
decode call, plus assembling the pieces: on levels that only OpenSlide can read
this cost as much again as the decoding (``napari-histo bench read``). A
:class:`LevelWindows` answers the same slice with one read of exactly the window
(:meth:`Slide.read_level_region <napari_histo.io.slide.Slide.read_level_region>`:
direct tile decoding where verified, else whole tiles of the level's grid read by
OpenSlide once and then kept in the slide's tile cache), split into bands
on the level's tile rows that a small thread pool reads in parallel, so no tile
is decoded by two bands.

The dask pyramid (:func:`~napari_histo.io.pyramid.open_pyramid`) stays what
computations use; :func:`viewer_levels` gives the viewer's list.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from napari_histo.io.pyramid import Pyramid
from napari_histo.io.slide import Slide

__all__ = ["LevelWindows", "hold_during_reads", "viewer_levels", "window_threads"]

#: Windows smaller than this (px) are read on the calling thread in one piece:
#: below it a second thread costs more than it saves.
MIN_PARALLEL_PX = 1 << 18
#: About the smallest side of the chunks napari widens views to (px): smaller cells
#: (a TIFF tiled in 64 or 128 px) are grouped, so short pans do not re-read at every step.
MIN_CHUNK_PX = 256
#: Larger windows, and strided ones, are answered lazily by the dask level instead
#: (napari's "Split RGB" takes ``level[..., i]`` of a whole gigapixel level).
MAX_DIRECT_PX = 1 << 26

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


class _Holds:
    """Background work paused while the viewer reads windows (:func:`hold_during_reads`).

    Pauses, resumes and releases happen under one lock, so a hold released during a
    read is resumed after its pause, never before.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds: dict[int, tuple[Callable[[], None], Callable[[], None]]] = {}
        self._next = 0
        self._reading = 0

    def add(self, pause: Callable[[], None], resume: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            key, self._next = self._next, self._next + 1
            self._holds[key] = (pause, resume)

        def release() -> None:
            with self._lock:
                hold = self._holds.pop(key, None)
                if hold is not None:
                    _quietly(hold[1])  # paused or not: a resume is harmless

        return release

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._lock:
            self._reading += 1
            try:
                if self._reading == 1:
                    for pause, _ in self._holds.values():
                        _quietly(pause)
            except BaseException:
                self._end_read()
                raise
        try:
            yield
        finally:
            with self._lock:
                self._end_read()

    def _end_read(self) -> None:
        """One read less (under the lock); the last one resumes every hold."""
        self._reading -= 1
        if self._reading == 0:
            for _, resume in self._holds.values():
                _quietly(resume)


def _quietly(call: Callable[[], None]) -> None:
    try:
        call()
    except Exception:  # a hold that fails must not fail the viewer's read
        pass


_HOLDS = _Holds()


def hold_during_reads(pause: Callable[[], None], resume: Callable[[], None]) -> Callable[[], None]:
    """Call `pause` when the viewer starts reading windows and `resume` when it is done.

    For background work on the same cores (a whole-slide job's worker process):
    a window the Qt thread waits for is decoded at full speed. Nested and
    concurrent reads pause once. Returns a function that ends the hold (and
    calls `resume`, in case a read is under way). Errors of `pause` and `resume`
    are ignored.
    """
    return _HOLDS.add(pause, resume)


def window_threads() -> int:
    """Threads that read the bands of one window: the cores, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(window_threads(), thread_name_prefix="napari-histo-window")
        return _POOL


def _axis(index: Any, length: int, name: str) -> tuple[int, int, Any]:
    """``(start, stop, rest)``: the span of `index` on an axis of `length`, and the
    index that still applies to the span read (numpy semantics: clipped slices,
    negative integers); `rest` is None for a strided slice (answered lazily)."""
    if isinstance(index, slice):
        start, stop, step = index.indices(length)
        if step != 1:
            return start, stop, None
        return start, max(start, stop), slice(None)
    if isinstance(index, int | np.integer) and not isinstance(index, bool):
        i = int(index) + length if index < 0 else int(index)
        if not 0 <= i < length:
            raise IndexError(f"index {int(index)} is out of bounds for {name} of size {length}")
        return i, i + 1, 0
    raise TypeError(f"LevelWindows takes int or slice indices, got {type(index).__name__}")


class LevelWindows:
    """One file level of a slide as an ``(H, W, 3)`` uint8 array read window by window.

    Slicing returns a NumPy array read from the file at once (no pixels are kept);
    integer and slice indices are taken with numpy semantics. Strided slices and
    windows over :data:`MAX_DIRECT_PX` return the lazy dask level's slice instead.
    :attr:`chunks` (zarr-style) lets napari widen each view to chunk boundaries and
    re-read only when a pan leaves them. The slide must stay open while it is used.

    Parameters
    ----------
    slide : Slide
        The open slide.
    level : int
        File level.
    lazy : dask.array.Array
        The same level as a dask array (:func:`~napari_histo.io.pyramid.open_pyramid`).
    threads : int, optional
        Bands a large window is read in, in parallel (default :func:`window_threads`).
    """

    def __init__(self, slide: Slide, level: int, lazy, threads: int | None = None) -> None:
        width, height = slide.level_dimensions[level]
        if tuple(lazy.shape) != (height, width, 3):
            raise ValueError(f"`lazy` has shape {lazy.shape}, level {level} is {height}×{width}")
        self.slide = slide
        self.level = level
        self.lazy = lazy
        self.threads = window_threads() if threads is None else max(1, int(threads))
        self.shape = (height, width, 3)

    @property
    def chunks(self) -> tuple[int, int, int]:
        """``(h, w, 3)``: the cells a read decodes as one (:meth:`Slide.cell_size
        <napari_histo.io.slide.Slide.cell_size>`), whole cells grouped to about
        :data:`MIN_CHUNK_PX` a side where smaller; napari widens each view to these.

        Not the dask level's chunks (about 512 px): a view widened to 512 px read
        about 40 % more pixels than it shows, and on a jump or zoom all of them are
        decoded while the Qt thread waits (``bench read``: NDPI windows 0.22 → 0.16 s;
        napari jumps over an SVS: slowest read 80-90 → 50-60 ms). Drags re-read
        twice as often, mostly from the tile cache, for the same total time and
        gaps (measured under Xvfb). Asked each time: a level's direct decoding,
        hence its cell, is settled by its first read.
        """
        cell_w, cell_h = self.slide.cell_size(self.level)
        return (
            cell_h * max(1, round(MIN_CHUNK_PX / cell_h)),
            cell_w * max(1, round(MIN_CHUNK_PX / cell_w)),
            3,
        )

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __copy__(self) -> LevelWindows:
        return self  # a view of the file: nothing to copy (napari's Duplicate Layer)

    def __deepcopy__(self, memo) -> LevelWindows:
        return self

    @property
    def size(self) -> int:
        """Number of elements, as numpy's ``size``."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LevelWindows({self.slide!r}, level={self.level}, shape={self.shape})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy is False:
            raise ValueError("a slide level cannot be viewed as an array without reading it")
        whole = np.asarray(self[:, :])
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = (slice(None),) * (3 - len(key) + 1)
            key = key[:at] + fill + key[at + 1 :]
        if len(key) > 3:
            raise IndexError(f"too many indices for a 3-D level: {len(key)}")
        key = key + (slice(None),) * (3 - len(key))
        y0, y1, rest_y = _axis(key[0], self.shape[0], "rows")
        x0, x1, rest_x = _axis(key[1], self.shape[1], "columns")
        if rest_y is None or rest_x is None or (y1 - y0) * (x1 - x0) > MAX_DIRECT_PX:
            return self.lazy[key]
        window = self.read(y0, y1, x0, x1)[:, rest_x]  # columns first: an int row
        return window[rest_y][..., key[2]]  # index would shift the column axis

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of the level (inside it), RGB uint8."""
        h, w = y1 - y0, x1 - x0
        if h <= 0 or w <= 0:
            return np.empty((max(h, 0), max(w, 0), 3), np.uint8)
        with _HOLDS.reading():
            return self._read(y0, y1, x0, x1)

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        h, w = y1 - y0, x1 - x0
        cuts = self._bands(y0, y1) if h * w >= MIN_PARALLEL_PX else [y0, y1]
        if len(cuts) == 2:
            return self.slide.read_level_region(self.level, x0, y0, w, h)
        out = np.empty((h, w, 3), np.uint8)

        def band(i: int) -> None:
            top, bottom = cuts[i], cuts[i + 1]
            out[top - y0 : bottom - y0] = self.slide.read_level_region(
                self.level, x0, top, w, bottom - top
            )

        # list() re-raises the first band's error here, on the caller's thread.
        list(_pool().map(band, range(len(cuts) - 1)))
        return out

    @property
    def band_px(self) -> int:
        """Rows the bands are cut on: the slide's cells (a cell split between two bands
        would be decoded twice); asked each time, as a level's direct decoding is
        settled by its first read."""
        return self.slide.cell_size(self.level)[1]

    def _bands(self, y0: int, y1: int) -> list[int]:
        """Cut rows of ``[y0, y1)`` into at most `threads` bands on cell boundaries."""
        band = self.band_px
        first, last = y0 // band + 1, -(-y1 // band) - 1
        inner = [r * band for r in range(first, last + 1)]  # boundaries inside
        bands = min(self.threads, len(inner) + 1)
        if bands < 2:
            return [y0, y1]
        # Pick the boundaries nearest to equal shares of the rows.
        picks = []
        for k in range(1, bands):
            target = y0 + (y1 - y0) * k / bands
            best = min(inner, key=lambda r: abs(r - target))
            if best not in picks:
                picks.append(best)
        return [y0, *sorted(picks), y1]


def viewer_levels(slide: Slide, pyramid: Pyramid) -> list[Any]:
    """The list napari shows: file levels as :class:`LevelWindows`, synthetic ones as dask.

    Parameters
    ----------
    slide : Slide
        The open slide `pyramid` was built from (8-bit RGB levels).
    pyramid : Pyramid
        From :func:`~napari_histo.io.pyramid.open_pyramid`.

    Returns
    -------
    list
        One array-like per pyramid level, largest first.
    """
    files = pyramid.file_level_count
    windows = [LevelWindows(slide, level, pyramid.levels[level]) for level in range(files)]
    return windows + list(pyramid.levels[files:])
