"""Measure a slide's stored tumor run: the measurement grid, the tissue mask, nuclei.

:func:`measure_run` reads a complete run of a slide's result store at the
finest pyramid level small enough to measure, adds the slide's tissue mask and
a nuclei run's centroids, and hands them to
:func:`~napari_histo.analysis.measure.measure_arrays`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_histo.analysis.measure import MIN_LESION_UM2, check_threshold, measure_arrays
from napari_histo.analysis.results import SlideMeasurements
from napari_histo.errors import StoreError

if TYPE_CHECKING:
    from napari_histo.io.store import ResultGeometry, ResultRun
    from napari_histo.nuclei.run import NucleiRun

__all__ = ["measure_run"]


def _resample_nearest(
    mask: np.ndarray,
    mask_downsample: float,
    shape: tuple[int, int],
    origin: tuple[float, float],
    downsample: float,
) -> np.ndarray:
    """`mask` (origin 0, `mask_downsample` level-0 px per px) at the centres of a grid.

    Grid pixels whose centre falls outside `mask` are False.
    """
    ys = np.floor((origin[1] + (np.arange(shape[0]) + 0.5) * downsample) / mask_downsample)
    xs = np.floor((origin[0] + (np.arange(shape[1]) + 0.5) * downsample) / mask_downsample)
    ok_y = (ys >= 0) & (ys < mask.shape[0])
    ok_x = (xs >= 0) & (xs < mask.shape[1])
    rows = np.clip(ys, 0, mask.shape[0] - 1).astype(np.intp)
    cols = np.clip(xs, 0, mask.shape[1] - 1).astype(np.intp)
    return mask[np.ix_(rows, cols)] & ok_y[:, None] & ok_x[None, :]


def _covered(
    geometry: ResultGeometry, shape: tuple[int, int], origin: tuple[float, float], downsample: float
) -> np.ndarray:
    """Grid pixels whose centre lies in the level-0 area another run's `geometry` covers."""
    x0, y0 = geometry.origin_l0
    x1 = x0 + geometry.shape[1] * geometry.downsample
    y1 = y0 + geometry.shape[0] * geometry.downsample
    ys = origin[1] + (np.arange(shape[0]) + 0.5) * downsample
    xs = origin[0] + (np.arange(shape[1]) + 0.5) * downsample
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def measure_run(
    run: ResultRun,
    slide_path: str | os.PathLike[str],
    *,
    threshold: float = 0.5,
    nuclei_run: NucleiRun | None = None,
    max_px: int = 16_000_000,
    min_area_um2: float = MIN_LESION_UM2,
    temperature: float | None = None,
) -> SlideMeasurements:
    """Measure a complete tumor run of a result store (:func:`measure_arrays`).

    The measurement grid is the finest level of the run's probability pyramid
    with at most `max_px` pixels (the coarsest if none is that small). Level
    ``k`` averages ``2**k x 2**k`` blocks of the full result, so its µm/px is
    ``geometry.mpp * 2**k``, its downsample ``geometry.downsample * 2**k`` and
    its origin the run's; trailing rows and columns of the full result that do
    not fill a block are not in it. The tissue mask is
    :func:`napari_histo.tissue.slide_tissue_mask` of the slide (at 8 µm/px),
    sampled at the grid pixel centres (nearest neighbour).

    Parameters
    ----------
    run : napari_histo.io.store.ResultRun
        A complete tumor run of the slide's store, with an mpp.
    slide_path : str or PathLike
        The slide the run was made from (for the tissue mask).
    threshold : float
        Tumor probability threshold, in (0, 1].
    nuclei_run : napari_histo.nuclei.run.NucleiRun, optional
        A complete nuclei run of the same slide; its centroids are counted.
    max_px : int
        Largest measurement grid (px), >= 1.
    min_area_um2 : float
        Smallest lesion listed, µm² (default :data:`MIN_LESION_UM2`).
    temperature : float, optional
        The ensemble's calibration temperature (model cards, see
        :mod:`napari_histo.review.calibration`): probabilities are calibrated
        before the threshold. On a coarse level this calibrates 2×2 means of the
        probability, a close approximation where neighbours agree.

    Returns
    -------
    SlideMeasurements

    Raises
    ------
    StoreError
        If a run is not complete, the tumor run has no mpp, or the store is
        of another slide.
    SlideError
        If the slide cannot be read.
    """
    from napari_histo.io.slide import Slide
    from napari_histo.io.store import slide_identity
    from napari_histo.tissue import slide_tissue_mask

    threshold = check_threshold(threshold)
    if isinstance(max_px, bool) or not isinstance(max_px, int | np.integer) or max_px < 1:
        raise ValueError(f"`max_px` must be an integer >= 1, got {max_px!r}")
    store = run.store.path
    if not run.complete:
        raise StoreError(
            f"{store}: run {run.run_id} is {run.status}, not complete; finish it first"
        )
    geometry = run.geometry
    if geometry.mpp is None:
        raise StoreError(
            f"{store}: run {run.run_id} has no µm/px (the slide has none); "
            "run it again with --mpp to measure areas"
        )
    if nuclei_run is not None and not nuclei_run.complete:
        raise StoreError(
            f"{nuclei_run.store.path}: nuclei run {nuclei_run.run_id} is "
            f"{nuclei_run.status}, not complete; finish it first"
        )
    level = run.finest_level(max_px=int(max_px))
    factor = 2**level
    mpp_um = geometry.mpp * factor
    downsample = geometry.downsample * factor
    origin = (float(geometry.origin_l0[0]), float(geometry.origin_l0[1]))
    probability = run.read_level("probability", level)
    if temperature is not None:
        from napari_histo.review.calibration import calibrate

        probability = calibrate(probability, temperature)
    epistemic = run.read_level("epistemic", level)

    with Slide(slide_path, mpp=geometry.mpp / geometry.downsample) as slide:
        identity = slide_identity(slide.path, slide.dimensions, slide.mpp)
        stored = run.store.identity
        keys = ("name", "bytes", "width", "height", "sha256_head_tail")
        if any(identity.get(k) != stored.get(k) for k in keys):
            raise StoreError(f"{store}: holds results of {stored.get('name')!r}, not {slide.path}")
        mask, mask_downsample = slide_tissue_mask(slide)
    tissue = _resample_nearest(mask, mask_downsample, probability.shape, origin, downsample)

    centroids = region = None
    if nuclei_run is not None:
        features = nuclei_run.features()
        nuclei_geometry = nuclei_run.geometry
        if nuclei_geometry.mpp is None:
            raise StoreError(f"{nuclei_run.store.path}: nuclei run {nuclei_run.run_id} has no mpp")
        # Centroids are stored in µm from the level-0 origin (see measure_nuclei).
        mpp_l0 = nuclei_geometry.mpp / nuclei_geometry.downsample
        centroids = np.column_stack(
            [features["centroid_x_um"] / mpp_l0, features["centroid_y_um"] / mpp_l0]
        )
        region = _covered(nuclei_geometry, probability.shape, origin, downsample)
    return measure_arrays(
        Path(slide_path).name,
        probability,
        tissue,
        mpp_um,
        threshold=threshold,
        epistemic=epistemic,
        origin_l0=origin,
        downsample=downsample,
        nuclei_centroids_l0=centroids,
        min_area_um2=min_area_um2,
        nuclei_region=region,
    )
