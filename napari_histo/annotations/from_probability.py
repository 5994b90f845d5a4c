"""Model probability → editable annotations: polygons or a pixel crop (no Qt, no napari).

The probability is a 2-D array in [0, 1] placed on the slide like a result
store (:mod:`napari_histo.io.store`): pixel (0, 0)'s top-left corner at level-0
``origin_l0``, ``downsample`` level-0 px per pixel. Only the window under the
visible region is read (:func:`probability_window`), so a lazy zarr array
works. Crops are :class:`~napari_histo.annotations.layers.CropGeometry`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histo.annotations.model import IGNORE_INDEX, Annotation, mask_to_polygons

if TYPE_CHECKING:
    from napari_histo.annotations.layers import CropGeometry

__all__ = [
    "probability_to_annotations",
    "probability_to_crop",
    "probability_window",
    "stored_probability",
]


def stored_probability(
    slide_path: str | os.PathLike[str], slide_dims: tuple[int, int], mpp: float
) -> tuple[Any, tuple[float, float], float] | None:
    """``(probability, origin_l0, downsample)`` of the slide's default result store, or None.

    The run with most finished cells of ``<slide>.histo.zarr``; the probability
    is the store's lazy array (read a window of it with :func:`probability_window`).

    Raises
    ------
    HistoError, OSError
        If the store exists but cannot be read.
    """
    from napari_histo.io.store import ResultStore, default_store_path, slide_identity

    path = default_store_path(Path(slide_path))
    if not path.exists():
        return None
    ident = slide_identity(Path(slide_path), slide_dims, mpp)
    runs = sorted(ResultStore(path, ident, mode="r").runs(), key=lambda r: r.done.sum())
    if not runs:
        return None
    geometry = runs[-1].geometry
    return runs[-1].array("probability"), tuple(geometry.origin_l0), float(geometry.downsample)


def _resample(
    array: np.ndarray, origin_l0: Sequence[float], downsample: float, crop: CropGeometry
) -> np.ndarray:
    """Nearest-neighbour sample of a level-0-placed array on the crop's pixel centres."""
    rows, cols = crop.shape
    d = crop.downsample
    ox, oy = crop.origin_l0
    xs = ox + (np.arange(cols) + 0.5) * d
    ys = oy + (np.arange(rows) + 0.5) * d
    ci = np.floor((xs - origin_l0[0]) / downsample).astype(np.intp)
    ri = np.floor((ys - origin_l0[1]) / downsample).astype(np.intp)
    okc = (ci >= 0) & (ci < array.shape[1])
    okr = (ri >= 0) & (ri < array.shape[0])
    out = np.zeros((rows, cols), dtype=array.dtype)
    out[np.ix_(okr, okc)] = np.asarray(array)[np.ix_(ri[okr], ci[okc])]
    return out


def probability_to_crop(
    probability: Any,
    threshold: float,
    prob_origin_l0: Sequence[float],
    prob_downsample: float,
    crop: CropGeometry,
    value: int = 1,
) -> np.ndarray:
    """Label crop (uint8) with `value` where the probability is ≥ `threshold`.

    Parameters
    ----------
    probability : (rows, cols) array in [0, 1]
        Model probability, pixel (0, 0)'s top-left at level-0 `prob_origin_l0`,
        `prob_downsample` level-0 px per pixel (a result store's geometry).
    threshold : float
        Foreground where ``probability >= threshold``.
    crop : CropGeometry
        Where to draw (usually :func:`crop_for_region` of the visible region).
    value : int
        Label value of the foreground (the class's :func:`class_index`).
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"`threshold` must be in [0, 1], got {threshold}")
    if not 0 < value <= IGNORE_INDEX:
        raise ValueError(f"`value` must be in 1-255, got {value}")
    prob = _resample(np.asarray(probability, dtype=np.float32), prob_origin_l0,
                     float(prob_downsample), crop)  # fmt: skip
    return np.where(prob >= threshold, np.uint8(value), np.uint8(0))


def probability_window(
    probability: Any, origin_l0: Sequence[float], downsample: float, region_l0: Sequence[int]
) -> tuple[np.ndarray, tuple[float, float]]:
    """Read only the part of a (lazy, e.g. zarr) probability array under a level-0 region.

    Returns the window as float32 and the level-0 origin of its top-left corner.
    """
    ds, (ox, oy) = float(downsample), (float(v) for v in origin_l0)
    x, y, w, h = region_l0
    rows, cols = probability.shape[-2:]
    c0, c1 = max(0, math.floor((x - ox) / ds)), min(cols, math.ceil((x + w - ox) / ds))
    r0, r1 = max(0, math.floor((y - oy) / ds)), min(rows, math.ceil((y + h - oy) / ds))
    c1, r1 = max(c0, c1), max(r0, r1)
    window = np.asarray(probability[r0:r1, c0:c1], dtype=np.float32)
    return window, (ox + c0 * ds, oy + r0 * ds)


def probability_to_annotations(
    probability: Any,
    threshold: float,
    prob_origin_l0: Sequence[float],
    prob_downsample: float,
    region_l0: Sequence[int] | None = None,
    *,
    min_area_px: float = 0.0,
    tolerance: float = 0.5,
    **fields: Any,
) -> list[Annotation]:
    """Editable polygons outlining ``probability >= threshold`` inside a level-0 region.

    Parameters
    ----------
    probability : (rows, cols) array in [0, 1]
        Model probability placed as in :func:`probability_to_crop`.
    threshold : float
        Foreground where ``probability >= threshold``.
    region_l0 : (x, y, w, h) or None
        Only this level-0 rectangle (e.g. the visible region); None = everywhere.
    min_area_px : float
        Drop components smaller than this many level-0 px².
    tolerance : float
        Simplification of the outlines, probability px.
    **fields
        Passed to each :class:`Annotation`; defaults ``label="tumor"``,
        ``granularity="polygon"``, ``properties={"source": "model", "threshold": t}``.

    Returns
    -------
    list of Annotation
        One polygon (with holes) per 8-connected component, level-0 px.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"`threshold` must be in [0, 1], got {threshold}")
    prob = np.asarray(probability)
    if prob.ndim != 2:
        raise ValueError(f"`probability` must be 2-D, got shape {prob.shape}")
    ds = float(prob_downsample)
    ox, oy = (float(v) for v in prob_origin_l0)
    r0, c0, r1, c1 = 0, 0, prob.shape[0], prob.shape[1]
    if region_l0 is not None:
        x, y, w, h = region_l0
        c0, c1 = max(0, math.floor((x - ox) / ds)), min(c1, math.ceil((x + w - ox) / ds))
        r0, r1 = max(0, math.floor((y - oy) / ds)), min(r1, math.ceil((y + h - oy) / ds))
        if r1 <= r0 or c1 <= c0:
            return []
    mask = np.asarray(prob[r0:r1, c0:c1]) >= threshold
    fields = {
        "label": "tumor",
        "granularity": "polygon",
        "properties": {"source": "model", "threshold": float(threshold)},
        **fields,
    }
    polys = mask_to_polygons(mask, ds, (ox + c0 * ds, oy + r0 * ds), tolerance=tolerance, **fields)
    if min_area_px > 0:
        polys = [p for p in polys if _area(p.coords) >= min_area_px]
    return polys


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
