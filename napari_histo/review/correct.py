"""A reviewed region turned into editable annotations at a chosen granularity.

"Correct" in the review dock: the model's tumor probability inside the region,
thresholded (calibrated first when a temperature is given), becomes one
annotation per connected component: a box, a moment ellipse, a polygon, or a
pixel outline (:mod:`napari_histo.annotations.model` conversions). The reviewer
then edits them with the Annotate tools.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_histo.annotations.from_probability import probability_window
from napari_histo.annotations.model import (
    Annotation,
    mask_to_bbox,
    mask_to_ellipse,
    mask_to_polygons,
)
from napari_histo.io.store import ResultRun
from napari_histo.review.calibration import calibrate

__all__ = ["GRANULARITIES", "region_annotations"]

#: Granularities "Correct" offers, as the Annotate dock does.
GRANULARITIES = ("bbox", "ellipse", "polygon", "pixel")


def region_annotations(
    run: ResultRun,
    rect_l0: Sequence[int],
    granularity: str = "polygon",
    *,
    threshold: float = 0.5,
    temperature: float | None = None,
    min_cells: int = 4,
    **fields: Any,
) -> list[Annotation]:
    """Annotations of ``probability >= threshold`` inside a level-0 region of a run.

    Parameters
    ----------
    run : ResultRun
        The run whose probability (level 0 of its store) is read; only the
        window under `rect_l0` is.
    rect_l0 : (x, y, w, h)
        Level-0 region (a :class:`~napari_histo.review.regions.Region`'s ``rect_l0``).
    granularity : {"bbox", "ellipse", "polygon", "pixel"}
        What each connected component becomes.
    threshold : float
        Tumor where the (calibrated) probability is ``>= threshold``, in (0, 1).
    temperature : float, optional
        Calibrate the probability first (:func:`~napari_histo.review.run.run_temperature`).
    min_cells : int
        Components smaller than this many probability cells are left out.
    **fields
        Passed to every :class:`Annotation` (``label`` defaults to ``"tumor"``; author, ...).

    Returns
    -------
    list of Annotation
        Level-0 px; empty when the model finds no tumor in the region.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"`granularity` must be one of {GRANULARITIES}, got {granularity!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ValueError(f"`threshold` must be a number in (0, 1), got {threshold!r}")
    if not 0 < threshold < 1:
        raise ValueError(f"`threshold` must be a number in (0, 1), got {threshold!r}")
    if not isinstance(run, ResultRun):
        raise TypeError(f"`run` must be a ResultRun, got {type(run).__name__}")
    try:
        x, y, w, h = (int(v) for v in rect_l0)
    except (TypeError, ValueError):
        raise ValueError(f"`rect_l0` must be (x, y, w, h) level-0 px, got {rect_l0!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"`rect_l0` must have w, h >= 1, got {tuple(rect_l0)}")
    geometry = run.geometry
    ds = float(geometry.downsample)
    window, origin = probability_window(run.array("probability"), geometry.origin_l0, ds,
                                        (x, y, w, h))  # fmt: skip
    if window.size == 0:
        return []
    if temperature is not None:
        window = calibrate(window, temperature)
    mask = window >= threshold
    if min_cells > 1 and mask.any():
        from scipy import ndimage

        labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(labels.ravel())
        mask = (sizes >= min_cells)[labels] & mask
    fields = {"label": "tumor", "properties": {"source": "review", "threshold": float(threshold)},
              **fields}  # fmt: skip
    if granularity == "bbox":
        return mask_to_bbox(mask, ds, origin, **fields)
    if granularity == "ellipse":
        return mask_to_ellipse(mask, ds, origin, **fields)
    return mask_to_polygons(mask, ds, origin, **{"granularity": granularity, **fields})
