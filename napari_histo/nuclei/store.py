"""Whole-slide (or region) nuclei into the slide's result store, block by block.

Layout, beside the tumour runs of :mod:`napari_histo.io.store`::

    <slide>.histo.zarr/
      nuclei/<run_id>/              attrs: settings, geometry, status, threshold, columns
        labels/0, /1, ...           uint32 instance labels, OME-NGFF multiscales (nearest 2x)
        done                        uint8 (block_rows, block_cols): 1 = block final on disk
        next_id                     int64 (block_rows, block_cols): first free id after it
        parts/<row>_<col>           float64 (n, C) measurements of the block's own nuclei
        features                    float64 (N, C), written at the end, rows sorted by id

A run is keyed by method, classical parameters, region and block size. The
region is cut into ``block_px`` squares (whole chunks). Each block is segmented
with a margin wide enough that every nucleus touching the block is seen whole
together with all it depends on (:attr:`ClassicalParams.context_um`), with one
region-wide threshold, so neighbours see the same nucleus the same way. A block
writes only its own pixels; a nucleus that already has pixels in a finished
block keeps that block's id, any other gets the next free id, so no nucleus is
cut or duplicated at a block border and ids are unique slide-wide. Its
measurements are kept by the one block holding its centroid.

A block is marked done only after its labels and measurements are on disk
(zarr writes whole chunks through a rename), and a block never reads pixels of
blocks not yet done, so a killed run resumes where it stopped, with the same
ids, and is never read as done but missing.

The block helpers live in :mod:`napari_histo.nuclei.blocks`; reading a stored
run back in :mod:`napari_histo.nuclei.run`; the tumour probability lookup,
CSV/GeoJSON export and the in-memory region job in :mod:`napari_histo.nuclei.export`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from skimage.segmentation import relabel_sequential

from napari_histo.generators import drive
from napari_histo.io.slide import Slide
from napari_histo.io.store import (
    RESULT_CODEC,
    ResultGeometry,
    ResultStore,
    multiscales_metadata,
    run_id_for,
)
from napari_histo.nuclei._common import _check_method, _check_region
from napari_histo.nuclei.blocks import (
    centroid_in,
    finished_pixels,
    prior_ids,
    read_block,
    tissue_blocks,
    touched,
)
from napari_histo.nuclei.classical import (
    H_BINS,
    ClassicalParams,
    h_histogram,
    segment_nuclei,
    smoothed_h,
    threshold_from_histogram,
)

# Re-exported: the region job, tumour lookup and exports live in nuclei_export.
from napari_histo.nuclei.export import tumor_probability_lookup
from napari_histo.nuclei.features import measure_nuclei
from napari_histo.nuclei.run import COLUMNS, GROUP, NucleiRun, open_store_for, timestamp

__all__ = [
    "BLOCK_PX",
    "NucleiPlan",
    "NucleiProgress",
    "NucleiResult",
    "execute_nuclei",
    "iter_nuclei_to_store",
    "nuclei_to_store",
    "plan_nuclei",
]

#: Default block side (level-0 px); a block is written as whole chunks.
BLOCK_PX = 2048
#: Largest chunk side of the label arrays (px).
MAX_CHUNK_PX = 1024
#: The display pyramid stops at the first level no larger than this (px).
PYRAMID_TOP_PX = 1024


@dataclass(frozen=True)
class NucleiProgress:
    """Progress of :func:`iter_nuclei_to_store`.

    Attributes
    ----------
    stage : {"threshold", "segment", "pyramid"}
    done, total : int
        Blocks (or pyramid levels) finished, out of all in this stage.
    nuclei : int
        Ids handed out so far.
    """

    stage: str
    done: int
    total: int
    nuclei: int


@dataclass(frozen=True)
class NucleiResult:
    """What :func:`iter_nuclei_to_store` returns."""

    run: NucleiRun
    cancelled: bool
    nuclei: int
    blocks_run: int
    seconds: float


@dataclass(frozen=True)
class NucleiPlan:
    """A checked, prepared nuclei run (no open file, no thread); see :func:`plan_nuclei`."""

    slide_path: Path
    run: NucleiRun
    method: str
    params: ClassicalParams
    tissue: np.ndarray | None  # blocks holding tissue (None: the run is complete)
    started: float  # time.monotonic() when planning began
    mpp: float | None = None  # the caller's µm/px for a slide without a plausible one


# -- the run ----------------------------------------------------------------------


def _check_block(block_px: object) -> int:
    ok = isinstance(block_px, int | np.integer) and not isinstance(block_px, bool)
    if not ok or block_px < 256 or block_px % 256:
        raise ValueError(f"`block_px` must be a multiple of 256 and >= 256, got {block_px!r}")
    return int(block_px)


def _create_run(
    store: ResultStore, settings: dict[str, Any], geometry: ResultGeometry
) -> NucleiRun:
    full = {**settings, "slide": store.identity, "geometry": geometry.to_dict()}
    run_id = run_id_for(full)
    root = store.root.require_group(GROUP)
    if run_id in root:
        return NucleiRun(store, root[run_id])
    tmp_name = f".creating-{run_id}-{os.getpid()}"
    group = root.create_group(tmp_name, overwrite=True)
    rows, cols = geometry.cell_shape
    chunk = min(geometry.cell_px, MAX_CHUNK_PX)
    for name, dtype in (("done", "uint8"), ("next_id", "int64")):
        group.create_array(name, shape=(rows, cols), chunks=(rows, cols), dtype=dtype, fill_value=0)
    labels = group.create_group("labels")
    labels.create_array(
        "0",
        shape=geometry.shape,
        chunks=(chunk, chunk),
        dtype="uint32",
        fill_value=0,
        dimension_names=("y", "x"),
        compressors=RESULT_CODEC,
    )
    labels.attrs["multiscales"] = multiscales_metadata("nuclei", geometry, 1)
    group.create_group("parts")
    now = timestamp()
    group.attrs.update(
        {
            "run_id": run_id,
            "kind": "nuclei",
            "settings": settings,
            "geometry": geometry.to_dict(),
            "columns": list(COLUMNS),
            "created": now,
            "updated": now,
            "status": "running",
        }
    )
    # Published under its final name only once complete (as tumour runs are).
    os.replace(store.path / GROUP / tmp_name, store.path / GROUP / run_id)
    store.root = zarr.open_group(store.path, mode=store.mode, zarr_format=3)
    return NucleiRun(store, store.root[GROUP][run_id])


def plan_nuclei(
    slide_path: str | os.PathLike[str],
    *,
    method: str = "classical",
    region_l0: tuple[int, int, int, int] | None = None,
    params: ClassicalParams | None = None,
    block_px: int = BLOCK_PX,
    out_dir: str | os.PathLike[str] | None = None,
    mpp: float | None = None,
    tissue_progress: Callable[[int, int], None] | None = None,
) -> NucleiPlan:
    """Check the inputs and prepare a run: region, store run, tissue blocks.

    Arguments as in :func:`iter_nuclei_to_store`; everything that can fail on
    bad input fails here, before any block is segmented. `tissue_progress` is
    called ``(done, total)`` while the tissue is found.
    """
    started = time.monotonic()
    _check_method(method)
    params = ClassicalParams() if params is None else params
    if not isinstance(params, ClassicalParams):
        raise ValueError(f"`params` must be a ClassicalParams, got {type(params).__name__}")
    block_px = _check_block(block_px)
    with Slide(slide_path, mpp=mpp) as slide:
        mpp = slide.require_mpp()
        region = (0, 0, *slide.dimensions) if region_l0 is None else region_l0
        region = _check_region(region, slide.dimensions)
        store = open_store_for(slide, out_dir)
        geometry = ResultGeometry(
            origin_l0=region[:2],
            downsample=1.0,
            shape=(region[3], region[2]),
            cell_px=block_px,
            mpp=mpp,
        )
        settings = {
            "method": method,
            "params": asdict(params),
            "region_l0": list(region),
            "block_px": block_px,
        }
        run = _create_run(store, settings, geometry)
        tissue = None
        if not run.complete:
            pad = math.ceil(params.max_diameter_um / float(mpp))
            tissue = tissue_blocks(slide, geometry, pad, progress=tissue_progress)
        return NucleiPlan(slide.path, run, method, params, tissue, started, mpp)


def iter_nuclei_to_store(
    slide_path: str | os.PathLike[str],
    *,
    method: str = "classical",
    region_l0: tuple[int, int, int, int] | None = None,
    params: ClassicalParams | None = None,
    block_px: int = BLOCK_PX,
    out_dir: str | os.PathLike[str] | None = None,
    cancel: threading.Event | None = None,
    mpp: float | None = None,
) -> Generator[NucleiProgress, None, NucleiResult]:
    """Segment nuclei over the tissue of a slide (or a region) into its result store.

    :func:`plan_nuclei` runs now (bad input raises at this call); the returned
    generator is :func:`execute_nuclei` of that plan.

    Parameters
    ----------
    slide_path : str or PathLike
        Slide file (with an mpp).
    method : {"classical", "learned"}
        Backend of :func:`napari_histo.nuclei.classical.segment_nuclei`.
    region_l0 : (x, y, w, h), optional
        Level-0 region (default: the whole slide).
    params : ClassicalParams, optional
        Sizes and thresholds (also set the margin around each block).
    block_px : int
        Block side in level-0 px (multiple of 256); the unit of work, of
        resuming and of the seams.
    out_dir : str or PathLike, optional
        Directory of the result store (default: beside the slide).
    cancel : threading.Event, optional
        Set it to stop after the current block; the run resumes next time.
    mpp : float, optional
        µm per level-0 px, overriding the slide's own.

    Yields
    ------
    NucleiProgress

    Returns
    -------
    NucleiResult

    Raises
    ------
    ValueError
        For a bad method, region or block size (at the call, not at the first ``next``).
    SlideError, StoreError
        If the slide cannot be read or the store written.
    """
    plan = plan_nuclei(
        slide_path,
        method=method,
        region_l0=region_l0,
        params=params,
        block_px=block_px,
        out_dir=out_dir,
        mpp=mpp,
    )
    return execute_nuclei(plan, cancel)


def execute_nuclei(
    plan: NucleiPlan, cancel: threading.Event | None = None
) -> Generator[NucleiProgress, None, NucleiResult]:
    """Carry out `plan` block by block; yields progress, returns a :class:`NucleiResult`.

    Setting `cancel` stops it after the current block; the run resumes next time.
    """
    cancel = cancel or threading.Event()
    run, params, t0 = plan.run, plan.params, plan.started
    if run.complete or plan.tissue is None:
        return NucleiResult(run, False, run.next_id - 1, 0, time.monotonic() - t0)
    with Slide(plan.slide_path, mpp=plan.mpp) as slide:
        mpp = float(run.geometry.mpp)
        margin = math.ceil((params.max_diameter_um + params.context_um) / mpp)
        run.group.attrs["status"] = "running"
        todo = [tuple(map(int, rc)) for rc in np.argwhere(plan.tissue & ~run._done)]
        threshold = run.group.attrs.get("threshold")  # JSON: a number or "inf"
        if plan.method == "classical" and threshold is None:
            threshold = yield from _threshold_pass(slide, run, plan.tissue, params, cancel)
            if threshold is None:  # cancelled
                run.group.attrs["status"] = "cancelled"
                return NucleiResult(run, True, run.next_id - 1, 0, time.monotonic() - t0)
            run.group.attrs["threshold"] = threshold if math.isfinite(threshold) else "inf"
        threshold = None if threshold is None else float(threshold)
        lookup = tumor_probability_lookup(run.store)
        next_id, done = run.next_id, 0
        while todo:
            for row, col in todo:
                if cancel.is_set():
                    run.group.attrs["status"] = "cancelled"
                    return NucleiResult(run, True, next_id - 1, done, time.monotonic() - t0)
                next_id = _segment_block(
                    slide, run, row, col, margin, params, threshold, next_id, lookup
                )
                done += 1
                yield NucleiProgress("segment", done, max(done, len(todo)), next_id - 1)
            # Glass blocks next to a nucleus that reaches their edge are segmented too
            # (the coarse tissue mask can miss a few nuclei), so none is cut there.
            todo = [(r, c) for r, c in np.argwhere(~run._done).tolist() if touched(run, r, c)]
    run._done[...] = True  # the rest is glass: labels stay 0
    run.write_state()
    levels = _finish(run)
    yield NucleiProgress("pyramid", levels, levels, next_id - 1)
    return NucleiResult(run, False, next_id - 1, done, time.monotonic() - t0)


def _threshold_pass(slide, run, tissue, params, cancel):
    """Region-wide Otsu threshold of haematoxylin over the blocks' own pixels."""
    geometry = run.geometry
    mpp = float(geometry.mpp)
    pad = math.ceil((params.background_um + 3 * params.sigma_um) / mpp)
    counts = np.zeros(H_BINS, np.int64)
    blocks = [tuple(map(int, rc)) for rc in np.argwhere(tissue)]
    for done, (row, col) in enumerate(blocks, 1):
        if cancel.is_set():
            return None
        rgb, core = read_block(slide, geometry, row, col, pad)
        h, fg = smoothed_h(rgb, mpp, params)
        counts += h_histogram(h[core], fg[core])
        yield NucleiProgress("threshold", done, len(blocks), 0)
    return float(threshold_from_histogram(counts, params))


def _segment_block(slide, run, row, col, margin, params, threshold, next_id, lookup) -> int:
    """Segment, label and measure one block; commit it; return the next free id."""
    geometry = run.geometry
    mpp = float(geometry.mpp)
    rgb, core = read_block(slide, geometry, row, col, margin)
    y0, _, x0, _ = geometry.cell_bounds(row, col)
    ey0, ex0 = y0 - core[0].start, x0 - core[1].start
    local = segment_nuclei(rgb, mpp, run.method, params=params, threshold=threshold)
    n = int(local.max())
    ids = np.zeros(n + 1, np.int64)
    owned = np.zeros(n + 1, bool)
    if n:
        prior = finished_pixels(run, ey0, ey0 + rgb.shape[0], ex0, ex0 + rgb.shape[1])
        ids = prior_ids(local, prior, n)
        in_core = np.zeros(n + 1, bool)
        in_core[local[core]] = True
        in_core[0] = False
        fresh = np.flatnonzero(in_core & (ids == 0))
        ids[fresh] = np.arange(next_id, next_id + len(fresh))
        next_id += len(fresh)
        owned = centroid_in(local, n, core) & (ids > 0)
    block = ids.astype(np.uint32)[local[core]]
    table = _measure_owned(local, owned, ids, rgb, mpp, geometry, ey0, ex0, lookup)
    parts = run.group["parts"]
    parts.create_array(
        f"{row}_{col}",
        shape=table.shape,
        chunks=(max(1, len(table)), len(COLUMNS)),
        dtype="float64",
        fill_value=0.0,
        overwrite=True,
    )
    if table.size:
        parts[f"{row}_{col}"][...] = table
    y0, y1, x0, x1 = geometry.cell_bounds(row, col)
    run.labels(0)[y0:y1, x0:x1] = block
    run.commit_block(row, col, next_id)
    return next_id


def _measure_owned(local, owned, ids, rgb, mpp, geometry, ey0, ex0, lookup) -> np.ndarray:
    """Measurement rows ``(n, len(COLUMNS))`` of the nuclei a block owns, with global ids."""
    if not owned.any():
        return np.zeros((0, len(COLUMNS)))
    own, _, inverse = relabel_sequential(np.where(owned[local], local, 0))
    origin = (geometry.origin_l0[0] + ex0, geometry.origin_l0[1] + ey0)
    table = measure_nuclei(own, rgb, mpp, origin_l0=origin, tumor_probability=lookup)
    table["id"] = ids[np.asarray(inverse)[table["id"]]]
    if "tumor_probability" not in table:
        table["tumor_probability"] = np.full(len(table["id"]), np.nan)
    return np.column_stack([np.asarray(table[c], np.float64) for c in COLUMNS])


def _finish(run: NucleiRun) -> int:
    """Gather the measurements, build the display pyramid, mark complete; return levels."""
    parts = run.group["parts"]
    tables = [np.asarray(parts[k][...]).reshape(-1, len(COLUMNS)) for k in parts.array_keys()]
    rows = np.concatenate(tables) if tables else np.zeros((0, len(COLUMNS)))
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    # One row per id even if two blocks saw a seam nucleus's centroid on their own side
    # (possible only for a backend that looks further than the block margin).
    rows = rows[np.r_[True, np.diff(rows[:, 0]) > 0]] if len(rows) else rows
    run.group.create_array(
        "features",
        shape=rows.shape,
        dtype="float64",
        fill_value=0.0,
        overwrite=True,
        chunks=(max(1, min(len(rows), 65536)), len(COLUMNS)),
    )
    if rows.size:
        run.group["features"][...] = rows
    levels = _build_pyramid(run)
    run.group.attrs.update({"status": "complete", "nuclei": len(rows), "updated": timestamp()})
    return levels


def _build_pyramid(run: NucleiRun) -> int:
    """Nearest-neighbour 2x levels (every other pixel) until one fits PYRAMID_TOP_PX."""
    group = run.group["labels"]
    current = run.labels(0)
    level = 0
    while max(current.shape) > PYRAMID_TOP_PX:
        h, w = -(-current.shape[0] // 2), -(-current.shape[1] // 2)
        chunk = current.chunks[0]
        smaller = group.create_array(
            str(level + 1),
            shape=(h, w),
            chunks=(chunk, chunk),
            dtype="uint32",
            fill_value=0,
            dimension_names=("y", "x"),
            compressors=RESULT_CODEC,
            overwrite=True,
        )
        step = 2 * chunk  # tiles of the finer level: bounded memory for any slide size
        for y in range(0, current.shape[0], step):
            for x in range(0, current.shape[1], step):
                tile = np.asarray(current[y : y + step : 2, x : x + step : 2])
                if tile.any():
                    smaller[y // 2 : y // 2 + tile.shape[0], x // 2 : x // 2 + tile.shape[1]] = tile
        level, current = level + 1, smaller
    group.attrs["multiscales"] = multiscales_metadata("nuclei", run.geometry, level + 1)
    return level + 1


def nuclei_to_store(
    slide_path: str | os.PathLike[str],
    *,
    progress: Callable[[NucleiProgress], None] | None = None,
    **kwargs: Any,
) -> NucleiResult:
    """Run :func:`iter_nuclei_to_store` to the end; `progress` gets each :class:`NucleiProgress`."""
    generator = iter_nuclei_to_store(slide_path, **kwargs)
    return drive(generator, progress)
