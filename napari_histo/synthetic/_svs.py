"""Write a synthetic slide as an Aperio-style pyramidal SVS plus its ground truth.

Level 0 is rendered in blocks of 4 x 4 tiles (in worker processes when asked), each block
returning its 16 JPEG-encoded tiles and its 4x area average, which is one tile of level 1.
Level-1 tiles go to a scratch file on disk; every further level is the 4x area average of
the one above, built band by band from that file, so no whole level is ever in memory.
Blocks that hold nothing but glass are not rendered: one pre-encoded glass tile per level
stands in for them.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np

from napari_histo.synthetic._associated import fit, label_image, macro_image
from napari_histo.synthetic._layout import (
    EDGE_UM,
    RAGGED_UM,
    F,
    SlideModel,
    grid_range,
)
from napari_histo.synthetic._render import HALO, MAX_R_UM, glass_rgb, render_rect
from napari_histo.synthetic._truth import TruthWriter

TOP_LEVEL_MAX_PX = 2048  # the pyramid stops once a level's longer side is <= this
RENDER_PX = 1024  # largest rectangle rendered at once (bounds worker memory)


@dataclass(frozen=True)
class Job:
    model: SlideModel
    tile_px: int
    quality: int


_WORKER_JOB: list[Job] = []  # set once per worker process by _init_worker


def _init_worker(job: Job) -> None:
    _WORKER_JOB[:] = [job]


def _block_task(bx: int, by: int, labels: bool):
    return _render_block(_WORKER_JOB[0], bx, by, labels)


def _encode(tile: np.ndarray, quality: int) -> bytes:
    return imagecodecs.jpeg8_encode(
        np.ascontiguousarray(tile),
        level=quality,
        colorspace="RGB",
        outcolorspace="YCBCR",
        subsampling=(2, 2),
    )


def _avg4(a: np.ndarray) -> np.ndarray:
    """4x4 area average (rounded) of a uint8 RGB array whose sides are multiples of 4."""
    h, w = a.shape[0] // 4, a.shape[1] // 4
    s = a.reshape(h, 4, w, 4, 3).sum(axis=(1, 3), dtype=np.uint32)
    return ((s + 8) // 16).astype(np.uint8)


def _render_block(job: Job, bx: int, by: int, labels: bool):
    """Render block (bx, by) of 4 x 4 tiles: encoded tiles, level-1 tile, labels, classes."""
    m, t = job.model, job.tile_px
    b = 4 * t
    x0, y0 = bx * b, by * b
    rgb = np.empty((b, b, 3), np.uint8)
    lab = np.zeros((b, b), np.uint32) if labels else None
    classes = []
    step = max(t, RENDER_PX // t * t)
    for sy in range(0, b, step):
        for sx in range(0, b, step):
            hh, ww = min(step, b - sy), min(step, b - sx)
            part, plab, cls = render_rect(m, x0 + sx, y0 + sy, ww, hh, labels)
            rgb[sy : sy + hh, sx : sx + ww] = part
            if labels:
                lab[sy : sy + hh, sx : sx + ww] = plab
                classes.append(cls)
    rgb[max(0, m.height - y0) :] = 255  # pad past the slide edge with white
    rgb[:, max(0, m.width - x0) :] = 255
    tiles = [
        _encode(rgb[r * t : (r + 1) * t, c * t : (c + 1) * t], job.quality)
        for r in range(4)
        for c in range(4)
    ]
    cls = np.concatenate(classes) if classes else np.zeros((0, 2), np.uint32)
    return tiles, _avg4(rgb), lab, cls


class _TileScratch:
    """Append-only scratch file of uint8 tiles keyed by (level, tx, ty); absent = glass."""

    def __init__(self, path: Path, tile_px: int) -> None:
        self.path = path
        self._shape = (tile_px, tile_px, 3)
        self._nbytes = tile_px * tile_px * 3
        self._file = open(path, "w+b")
        self._index: dict[tuple[int, int, int], int] = {}

    def put(self, key: tuple[int, int, int], tile: np.ndarray) -> None:
        self._index[key] = self._file.seek(0, os.SEEK_END)
        self._file.write(np.ascontiguousarray(tile, np.uint8).tobytes())

    def get(self, key: tuple[int, int, int]) -> np.ndarray | None:
        off = self._index.get(key)
        if off is None:
            return None
        buf = os.pread(self._file.fileno(), self._nbytes, off)
        return np.frombuffer(buf, np.uint8).reshape(self._shape)

    def close(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """Level sizes (w, h): downsample 4x each until the longer side is <= 2048 px."""
    sizes = [(width, height)]
    while max(sizes[-1]) > TOP_LEVEL_MAX_PX:
        w, h = sizes[-1]
        sizes.append((max(1, w // 4), max(1, h // 4)))
    return sizes


def glass_blocks(model: SlideModel, block_px: int, nbx: int, nby: int) -> np.ndarray:
    """Boolean (nby, nbx): blocks that certainly render as bare glass."""
    g, (_, ny, nx) = model.grid_px, model.fields.shape
    reach_um = MAX_R_UM * HALO + RAGGED_UM + EDGE_UM + model.um(16) + 2
    out = np.zeros((nby, nbx), bool)
    td, pen = model.fields[F["tissue_d"]], model.fields[F["pen"]]
    for by in range(nby):
        ylo, yhi = grid_range(g, by * block_px, (by + 1) * block_px, ny)
        for bx in range(nbx):
            xlo, xhi = grid_range(g, bx * block_px, (bx + 1) * block_px, nx)
            out[by, bx] = (td[ylo:yhi, xlo:xhi].max() < -reach_um) and not pen[
                ylo:yhi, xlo:xhi
            ].any()
    return out


class _BlockSource:
    """Rendered blocks in row-major order, from a process pool or in-process."""

    def __init__(
        self, job: Job, todo: list[tuple[int, int, bool]], pool: Executor | None, window: int
    ) -> None:
        self._job, self._todo, self._pool, self._window = job, todo, pool, window
        self._pos = {(bx, by): k for k, (bx, by, _) in enumerate(todo)}
        self._futures: dict[tuple[int, int], Future] = {}
        self._next = 0

    def get(self, bx: int, by: int):
        key = (bx, by)
        k = self._pos.get(key)
        if k is None:
            return None
        if self._pool is None:
            return _render_block(self._job, *self._todo[k])
        while self._next < len(self._todo) and self._next <= k + self._window:
            tbx, tby, lab = self._todo[self._next]
            self._futures[(tbx, tby)] = self._pool.submit(_block_task, tbx, tby, lab)
            self._next += 1
        return self._futures.pop(key).result()


def write_pyramid(
    path: Path,
    job: Job,
    truth: TruthWriter,
    workers: int,
    progress: Callable[[int, int], None] | None,
    label_text: str,
) -> None:
    """Write the SVS at ``path`` (level 0, thumbnail, reduced levels, label, macro)."""
    import tifffile

    m, t = job.model, job.tile_px
    b = 4 * t
    sizes = level_sizes(m.width, m.height)
    grids = [(-(-w // t), -(-h // t)) for w, h in sizes]
    total = sum(nx * ny for nx, ny in grids)
    nbx, nby = -(-m.width // b), -(-m.height // b)
    glass = glass_blocks(m, b, nbx, nby)
    todo = [
        (bx, by, truth.wants(bx * b, by * b, b, b))
        for by in range(nby)
        for bx in range(nbx)
        if not glass[by, bx]
    ]
    glass_tiles = [glass_rgb(m, t)]
    for _ in sizes[1:]:
        glass_tiles.append(_avg4(np.tile(glass_tiles[-1], (4, 4, 1))))
    glass_bytes = [_encode(a, job.quality) for a in glass_tiles]
    thumb_ds = 4
    while max(m.width, m.height) / thumb_ds > 4096:
        thumb_ds *= 4
    f = thumb_ds // 4
    overview = np.empty((nby * b // thumb_ds, nbx * b // thumb_ds, 3), np.uint8)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if n and progress is not None:
            progress(done[0], total)

    def level_done(k: int) -> None:  # tifffile stops pulling before a level's last tick
        tick(sum(nx * ny for nx, ny in grids[: k + 1]) - done[0])

    scratch = _TileScratch(path.with_name(path.name + ".scratch"), t)
    pool = None
    if workers > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context(_start_method())
        pool = ProcessPoolExecutor(
            min(workers, len(todo)), mp_context=ctx, initializer=_init_worker, initargs=(job,)
        )
        pool.submit(int).result()  # start the workers now, before this call adds threads
    source = _BlockSource(job, todo, pool, window=2 * nbx + 4 * workers)

    def level0() -> Iterator[bytes]:
        ntx, nty = grids[0]
        for by in range(nby):
            row = [source.get(bx, by) for bx in range(nbx)]
            for bx, res in enumerate(row):
                ov = overview[
                    by * b // thumb_ds : (by + 1) * b // thumb_ds,
                    bx * b // thumb_ds : (bx + 1) * b // thumb_ds,
                ]
                if res is None:
                    ov[...] = _reduce(glass_tiles[1], f)
                    continue
                scratch.put((1, bx, by), res[1])
                ov[...] = _reduce(res[1], f)
                if res[2] is not None:
                    truth.put(bx * b, by * b, res[2], res[3])
            for r in range(4):
                ty = by * 4 + r
                if ty >= nty:
                    break
                for tx in range(ntx):
                    res = row[tx // 4]
                    yield glass_bytes[0] if res is None else res[0][r * 4 + tx % 4]
                tick(ntx)

    def reduced(k: int) -> Iterator[bytes]:
        ntx, nty = grids[k]
        for band in range(0, nty, 4):
            rows = range(band, min(nty, band + 4))
            kept = {(tx, ty): scratch.get((k, tx, ty)) for ty in rows for tx in range(ntx)}
            kept = {key: a for key, a in kept.items() if a is not None}
            if k + 1 < len(sizes):  # before yielding: tifffile may not resume us after
                _reduce_band(scratch, kept, glass_tiles[k], k, band, ntx, t)
            for ty in rows:
                for tx in range(ntx):
                    a = kept.get((tx, ty))
                    yield glass_bytes[k] if a is None else _encode(a, job.quality)
                tick(ntx)

    desc = "Aperio Image Library v12.0.0\n"
    w0, h0 = sizes[0]
    common = dict(dtype=np.uint8, photometric="rgb", metadata=None)
    try:
        big = max(w0, h0) > 40_000
        with tifffile.TiffWriter(path, bigtiff=big) as tw:
            tw.write(
                level0(),
                shape=(h0, w0, 3),
                tile=(t, t),
                compression="jpeg",
                subfiletype=0,
                description=f"{desc}{w0}x{h0} [0,0 {w0}x{h0}] ({t}x{t}) JPEG/RGB "
                f"Q={job.quality}|AppMag = 40|MPP = {m.mpp:g}|Seed = {m.seed}",
                **common,
            )
            level_done(0)
            ov = overview[: m.height // thumb_ds, : m.width // thumb_ds]
            thumb = fit(ov, 1024)
            tw.write(
                thumb,
                compression="jpeg",
                compressionargs={"level": 90},
                rowsperstrip=16,
                subfiletype=0,
                description=f"{desc}{w0}x{h0} -> {thumb.shape[1]}x{thumb.shape[0]} - ",
                **common,
            )
            for k in range(1, len(sizes)):
                w, h = sizes[k]
                tw.write(
                    reduced(k),
                    shape=(h, w, 3),
                    tile=(t, t),
                    compression="jpeg",
                    subfiletype=1,
                    description=f"{desc}{w0}x{h0} -> {w}x{h}",
                    **common,
                )
                level_done(k)
            label = label_image(m.seed, label_text)
            tw.write(
                label,
                compression="lzw",
                rowsperstrip=64,
                subfiletype=1,
                description=f"{desc}label {label.shape[1]}x{label.shape[0]}",
                **common,
            )
            macro = macro_image(ov, label)
            tw.write(
                macro,
                compression="jpeg",
                compressionargs={"level": 90},
                rowsperstrip=16,
                subfiletype=9,
                description=f"{desc}macro {macro.shape[1]}x{macro.shape[0]}",
                **common,
            )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        scratch.close()


def _start_method() -> str:
    """How to start workers.

    ``fork`` (fast, and scripts need no ``if __name__ == "__main__"`` guard) while the only
    other threads are zarr's I/O loop and its executor, idle between zarr calls and never
    used by the workers; otherwise ``forkserver``, since forking a process whose other
    threads may hold locks can deadlock the child.
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if "fork" in multiprocessing.get_all_start_methods() and all(
        t.name == "zarr_io" or t.name.startswith("asyncio_") for t in others
    ):
        return "fork"
    return "forkserver"


def _reduce(tile: np.ndarray, f: int) -> np.ndarray:
    while f > 1:
        tile = _avg4(tile)
        f //= 4
    return tile


def _reduce_band(
    scratch: _TileScratch, kept: dict, glass: np.ndarray, k: int, band: int, ntx: int, t: int
) -> None:
    """Area-average one band of 4 tile rows of level k into one tile row of level k + 1."""
    by = band // 4
    for bx in range(-(-ntx // 4)):
        keys = [(bx * 4 + c, band + r) for r in range(4) for c in range(4)]
        if not any(key in kept for key in keys):
            continue
        block = np.empty((4 * t, 4 * t, 3), np.uint8)
        for r in range(4):
            for c in range(4):
                a = kept.get((bx * 4 + c, band + r))
                block[r * t : (r + 1) * t, c * t : (c + 1) * t] = glass if a is None else a
        scratch.put((k + 1, bx, by), _avg4(block))
