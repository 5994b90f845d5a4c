"""Nuclei read back out of a slide's result store, and the in-memory region job.

Beside the whole-slide run of :mod:`napari_histo.nuclei.store` (which
re-exports every public name here):

- :func:`open_store_for` and :func:`tumor_probability_lookup`: a slide's
  :class:`~napari_histo.io.store.ResultStore` and the tumour probability of its
  best tumour run at level-0 points;
- :func:`export_csv` and :func:`export_geojson`: a complete
  :class:`~napari_histo.nuclei.store.NucleiRun` as CSV or QuPath-style GeoJSON
  detections (outlines traced block by block, so memory stays bounded);
- :func:`iter_region_nuclei` and :func:`write_region_geojson`: nuclei of one
  region segmented and measured in memory (the napari widget), and their export.

Imports neither Qt nor napari, nor :mod:`napari_histo.nuclei.store` (which
depends on this module, not the other way round).
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from skimage.segmentation import relabel_sequential

from napari_histo._atomic import atomic_write_text
from napari_histo.errors import StoreError
from napari_histo.io.slide import Slide
from napari_histo.io.store import ResultStore, default_store_path
from napari_histo.nuclei._common import _check_method, _check_region
from napari_histo.nuclei.classical import ClassicalParams, iter_segment_region
from napari_histo.nuclei.features import (
    measure_nuclei,
    nuclei_to_geojson_features,
    write_nuclei_csv,
)
from napari_histo.nuclei.run import open_store_for

if TYPE_CHECKING:
    from napari_histo.nuclei.run import NucleiRun

__all__ = [
    "MAX_REGION_PX",
    "RegionNuclei",
    "check_region_size",
    "export_csv",
    "export_geojson",
    "iter_region_nuclei",
    "tumor_probability_lookup",
    "write_region_geojson",
]

# -- store access ---------------------------------------------------------------


def tumor_probability_lookup(
    store: ResultStore,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """Tumour probability at level-0 points from the store's best tumour run, or None.

    The run with the most finished cells is used; points outside it or in
    cells not yet computed get NaN.

    Returns
    -------
    callable or None
        Maps float ``(N, 2)`` level-0 ``(x, y)`` to ``(N,)`` probabilities.
    """
    try:
        runs = [r for r in store.runs() if r.done.any()]
    except (StoreError, KeyError) as err:
        raise StoreError(f"{store.path}: unreadable tumour runs ({err})") from err
    if not runs:
        return None
    run = max(runs, key=lambda r: (r.complete, int(r.done.sum())))
    geometry, done, array = run.geometry, run.done, run.array("probability")

    def lookup(xy_l0: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy_l0, np.float64).reshape(-1, 2)
        out = np.full(len(xy), np.nan)
        col = np.floor((xy[:, 0] - geometry.origin_l0[0]) / geometry.downsample).astype(np.int64)
        row = np.floor((xy[:, 1] - geometry.origin_l0[1]) / geometry.downsample).astype(np.int64)
        inside = (row >= 0) & (col >= 0) & (row < geometry.shape[0]) & (col < geometry.shape[1])
        ok = np.flatnonzero(inside)
        ok = ok[done[row[ok] // geometry.cell_px, col[ok] // geometry.cell_px]]
        if ok.size:
            out[ok] = np.asarray(array.vindex[row[ok], col[ok]], np.float64)
        return out

    return lookup


# -- export -------------------------------------------------------------------------


def export_csv(run: NucleiRun, path: str | os.PathLike[str]) -> Path:
    """Write a complete run's measurements to CSV (atomically)."""
    _check_complete(run)
    return write_nuclei_csv(path, run.features())


def export_geojson(run: NucleiRun, path: str | os.PathLike[str]) -> Path:
    """Write a complete run's nuclei as QuPath-style GeoJSON detections (atomically).

    Outlines are traced block by block from the stored labels (each nucleus
    by the block holding its centroid), so memory stays bounded by a block.
    """
    _check_complete(run)
    table = run.features()
    geometry = run.geometry
    l0_mpp = float(geometry.mpp)
    x = table["centroid_x_um"] / l0_mpp - geometry.origin_l0[0]
    y = table["centroid_y_um"] / l0_mpp - geometry.origin_l0[1]
    rows, cols = geometry.cell_shape
    block = np.clip(y // geometry.cell_px, 0, rows - 1) * cols
    block += np.clip(x // geometry.cell_px, 0, cols - 1)
    pad = math.ceil(ClassicalParams(**run.settings["params"]).max_diameter_um / l0_mpp)
    features: list[dict] = []
    for index in np.unique(block).astype(int):
        y0, y1, x0, x1 = geometry.cell_bounds(*divmod(index, cols))
        ey0, ex0 = max(0, y0 - pad), max(0, x0 - pad)
        labels = np.asarray(run.labels(0)[ey0 : y1 + pad, ex0 : x1 + pad])
        mine = block == index
        own = np.where(np.isin(labels, table["id"][mine]), labels, 0)
        local, _, inverse = relabel_sequential(own)
        sub = {k: v[mine] for k, v in table.items()}
        order = np.argsort(sub["id"])
        sub = {k: v[order] for k, v in sub.items()}
        sub["id"] = np.searchsorted(np.asarray(inverse)[1:], sub["id"]) + 1
        origin = (geometry.origin_l0[0] + ex0, geometry.origin_l0[1] + ey0)
        for feature in nuclei_to_geojson_features(local, sub, origin):
            label = int(feature["id"].rsplit("-", 1)[1])
            feature["id"] = f"nucleus-{int(inverse[label])}"
            features.append(feature)
    return _write_features(features, path)


def _write_features(features: list[dict], path: str | os.PathLike[str]) -> Path:
    for feature in features:
        measurements = feature["properties"]["measurements"]
        for key in [k for k, v in measurements.items() if not math.isfinite(v)]:
            del measurements[key]  # no NaN in JSON (no tumour result there)
    text = json.dumps({"type": "FeatureCollection", "features": features})
    return atomic_write_text(path, text, backups=0)


def _check_complete(run: NucleiRun) -> None:
    if not run.complete:
        raise StoreError(
            f"{run.store.path}: nuclei run {run.run_id} is {run.status}; run it to the end first"
        )


# -- a region in memory (the napari widget) ------------------------------------------


@dataclass(frozen=True)
class RegionNuclei:
    """Nuclei of one level-0 region, in memory.

    Attributes
    ----------
    region_l0 : (x, y, w, h)
    labels : ndarray of uint32, shape (h, w)
        Ids 1..n, level-0 resolution.
    table : dict of str to ndarray
        :data:`~napari_histo.nuclei.store.COLUMNS` (``tumor_probability`` NaN without a
        tumour result).
    mpp : (float, float)
        Level-0 ``(mpp_y, mpp_x)``.
    """

    region_l0: tuple[int, int, int, int]
    labels: np.ndarray
    table: dict[str, np.ndarray]
    mpp: tuple[float, float]


#: Largest region :func:`iter_region_nuclei` segments in memory (level-0 px).
MAX_REGION_PX = 64 * 1024 * 1024


def check_region_size(region_l0: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """`region_l0` ``(x, y, w, h)`` unchanged; ValueError when it is over
    :data:`MAX_REGION_PX` (for callers that want to say so before starting a job)."""
    area = int(region_l0[2]) * int(region_l0[3])
    if area > MAX_REGION_PX:
        raise ValueError(
            f"`region_l0` {tuple(region_l0)} has {area} px, more than "
            f"{MAX_REGION_PX}; zoom in, draw a smaller region or run the whole slide"
        )
    return region_l0


def iter_region_nuclei(
    slide_path: str | os.PathLike[str],
    region_l0: tuple[int, int, int, int],
    *,
    method: str = "classical",
    out_dir: str | os.PathLike[str] | None = None,
    cancel: threading.Event | None = None,
    tile_px: int = 1024,
) -> Generator[tuple[int, int], None, RegionNuclei | None]:
    """Segment and measure the nuclei of a region in memory (seamless tiles).

    Yields ``(done, total)`` steps (tiles of both passes, then measuring) and
    returns a :class:`RegionNuclei`, or None when `cancel` was set. Tumour
    probability comes from the slide's result store when it holds a tumour run.

    Raises
    ------
    ValueError
        For a bad method or region, or a region over :data:`MAX_REGION_PX`.
    """
    _check_method(method)
    cancel = cancel or threading.Event()
    slide = Slide(slide_path)
    try:
        slide.require_mpp()
        region = check_region_size(_check_region(region_l0, slide.dimensions))
        steps = iter_segment_region(slide, region, method=method, tile_px=tile_px)
    except BaseException:
        slide.close()
        raise
    return _region_job(slide, region, steps, out_dir, cancel)


def _region_job(slide, region, steps, out_dir, cancel):
    try:
        total = 0
        while True:
            if cancel.is_set():
                steps.close()
                return None
            try:
                done, total = next(steps)
            except StopIteration as stop:
                labels = stop.value
                break
            yield done, total + 1
        lookup = None
        if default_store_path(slide.path, out_dir).exists():
            try:
                lookup = tumor_probability_lookup(open_store_for(slide, out_dir, mode="r"))
            except StoreError as err:  # a foreign or broken store: measure without it
                warnings.warn(f"no tumour probability: {err}", UserWarning, stacklevel=2)
        rgb = np.ascontiguousarray(slide.read_region(0, *region))
        table = measure_nuclei(
            labels, rgb, slide.require_mpp(), origin_l0=region[:2], tumor_probability=lookup
        )
        if "tumor_probability" not in table:
            table["tumor_probability"] = np.full(len(table["id"]), np.nan)
        yield total + 1, total + 1
        mpp = (float(slide.mpp_y), float(slide.mpp_x))
        return RegionNuclei(tuple(region), labels, table, mpp)
    finally:
        slide.close()


def write_region_geojson(result: RegionNuclei, path: str | os.PathLike[str]) -> Path:
    """Write a :class:`RegionNuclei` as QuPath-style GeoJSON detections (atomically)."""
    features = nuclei_to_geojson_features(result.labels, result.table, result.region_l0[:2])
    return _write_features(features, path)
