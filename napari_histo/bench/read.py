"""``bench read``: viewport-sized reads, raw OpenSlide vs what the viewer reads.

The viewer's work: M windows of 1920 × 1080 px at random, non tile-aligned
positions on random levels. Each method reads the same windows in one run,
each with fresh handles and caches, after the file is in the OS page cache:

* raw: openslide-python ``read_region`` of exactly each window (one thread);
* viewer: the levels napari gets (:func:`napari_histo.io.windows.viewer_levels`:
  one exact read per window, split in tile-row bands over 1 or 2 threads) — the
  ratios ``ratio_1t`` / ``ratio_parallel`` are raw time over these;
* dask: the computational pyramid (:func:`napari_histo.io.pyramid.open_pyramid`,
  a task per chunk), for comparison (``dask_ratio_1t`` / ``dask_ratio_parallel``).

``direct=False`` reads every level through OpenSlide, the path formats without a
direct tile decoder take.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import openslide

from napari_histo.io.pyramid import open_pyramid
from napari_histo.io.slide import Slide
from napari_histo.io.windows import viewer_levels

Window = tuple[int, int, int, int, int]  # level, lvl_x, lvl_y, w, h


def viewport_windows(slide: Slide, count: int, seed: int = 0) -> list[Window]:
    """`count` random 1920 × 1080 windows (clipped to small levels), level frame."""
    rng = np.random.default_rng(seed)
    windows = []
    for _ in range(count):
        level = int(rng.integers(0, slide.level_count))
        width, height = slide.level_dimensions[level]
        w, h = min(1920, width), min(1080, height)
        x = int(rng.integers(0, width - w + 1))
        y = int(rng.integers(0, height - h + 1))
        windows.append((level, x, y, w, h))
    return windows


def _warm_page_cache(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(16 << 20):
            pass


def time_raw(path: Path, windows: list[Window], to_rgb: bool = False) -> float:
    """openslide-python ``read_region`` of exactly each window (PIL RGBA)."""
    with openslide.OpenSlide(path) as osr:
        start = time.perf_counter()
        for level, x, y, w, h in windows:
            ds = osr.level_downsamples[level]
            image = osr.read_region((round(x * ds), round(y * ds)), level, (w, h))
            if to_rgb:
                np.asarray(image.convert("RGB"))
        return time.perf_counter() - start


def _to_chunk_grid(window: Window, chunks: tuple[int, ...], shape: tuple[int, ...]) -> Window:
    """`window` widened to whole chunks, as napari widens a view before slicing."""
    level, x, y, w, h = window
    ch, cw = chunks[0], chunks[1]
    x0, y0 = x // cw * cw, y // ch * ch
    x1, y1 = min(shape[1], -(-(x + w) // cw) * cw), min(shape[0], -(-(y + h) // ch) * ch)
    return level, x0, y0, x1 - x0, y1 - y0


def time_viewer(path: Path, windows: list[Window], threads: int, direct: bool = True) -> float:
    """Slice the levels napari gets, as napari does: each window widened to whole
    chunks, read in up to `threads` bands."""
    with Slide(path, direct=direct) as slide:
        pyramid = open_pyramid(slide)
        levels = viewer_levels(slide, pyramid)
        for level in levels[: pyramid.file_level_count]:
            level.threads = threads
        wide = [_to_chunk_grid(w, levels[w[0]].chunks, levels[w[0]].shape) for w in windows]
        last = levels[pyramid.file_level_count - 1]
        np.asarray(last[:1024, :1024])  # the pool's threads and handles, as in a viewer
        start = time.perf_counter()
        for level, x, y, w, h in wide:
            np.asarray(levels[level][y : y + h, x : x + w])
        return time.perf_counter() - start


def time_dask(path: Path, windows: list[Window], threads: int, direct: bool = True) -> float:
    """Slice the dask pyramid as napari would and compute with `threads` threads."""
    with Slide(path, direct=direct) as slide:
        levels = open_pyramid(slide).levels
        if threads == 1:
            config = {"scheduler": "synchronous"}
        else:
            config = {"scheduler": "threads", "num_workers": threads}
        with dask.config.set(config):
            np.asarray(levels[-1][:64, :64])  # dask's one-time imports, as in a viewer
            start = time.perf_counter()
            for level, x, y, w, h in windows:
                np.asarray(levels[level][y : y + h, x : x + w])
            return time.perf_counter() - start


def bench_read(
    *, quick: bool = False, slide: str | None = None, direct: bool = True
) -> dict[str, Any]:
    """Run the read benchmark; see the module docstring.

    Returns
    -------
    dict
        ``raw_windows_s``, ``viewer_1t_windows_s``, ``viewer_windows_s`` (2 threads),
        ``ratio_1t`` = raw / viewer_1t and ``ratio_parallel`` = raw / viewer (higher
        is better); the same for the dask pyramid (``dask_1t_windows_s``,
        ``dask_windows_s``, ``dask_ratio_1t``, ``dask_ratio_parallel``); the slide,
        window count, whether direct decoding served the reads and the raw time
        including the conversion to an RGB array (``raw_rgb_windows_s``).
    """
    from napari_histo.bench import bench_slide

    path = Path(slide) if slide else bench_slide(16384 if quick else 32768)
    count = 40 if quick else 200
    repeats = 1 if quick else 2
    with Slide(path) as opened:
        windows = viewport_windows(opened, count)
    _warm_page_cache(path)
    raw = min(time_raw(path, windows) for _ in range(repeats))
    raw_rgb = min(time_raw(path, windows, to_rgb=True) for _ in range(repeats))
    one = min(time_viewer(path, windows, 1, direct) for _ in range(repeats))
    two = min(time_viewer(path, windows, 2, direct) for _ in range(repeats))
    dask_one = min(time_dask(path, windows, 1, direct) for _ in range(repeats))
    dask_two = min(time_dask(path, windows, 2, direct) for _ in range(repeats))
    # Each level's direct decoding is settled by its first read.
    with Slide(path, direct=direct) as opened:
        for level, (width, height) in enumerate(opened.level_dimensions):
            opened.read_level_region(level, 0, 0, min(width, 64), min(height, 64))
        fast = opened.fast_levels
    return {
        "slide": str(path),
        "windows": count,
        "direct_tile_decoding": all(fast),
        "raw_windows_s": round(raw, 4),
        "raw_rgb_windows_s": round(raw_rgb, 4),
        "viewer_1t_windows_s": round(one, 4),
        "viewer_windows_s": round(two, 4),
        "ratio_1t": round(raw / one, 3),
        "ratio_parallel": round(raw / two, 3),
        "dask_1t_windows_s": round(dask_one, 4),
        "dask_windows_s": round(dask_two, 4),
        "dask_ratio_1t": round(raw / dask_one, 3),
        "dask_ratio_parallel": round(raw / dask_two, 3),
    }
