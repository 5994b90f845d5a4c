"""Review on a stored run: find it, rank it, compare it with annotations, calibrate it.

Thin glue between a slide's result store (:mod:`napari_histo.io.store`) and
the array functions of this package; everything reads pyramid levels, never
more of a run than the level asked for.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo.annotations.model import Annotation
from napari_histo.errors import NoRunError
from napari_histo.io.store import (
    ResultGeometry,
    ResultRun,
    latest_complete_run,
)
from napari_histo.review.calibration import (
    CalibrationResult,
    calibrate,
    fit_calibration,
    held_out_stripes,
    temperature_for_models,
)
from napari_histo.review.errors import ErrorScores, error_map, error_scores
from napari_histo.review.regions import (
    Region,
    RegionGrid,
    choose_level,
    level_geometry,
    rank_regions,
)

__all__ = [
    "NoRunError",
    "calibrated_levels",
    "latest_complete_run",
    "map_level",
    "rank_run",
    "run_calibration",
    "run_error_map",
    "run_labels",
    "run_member_cards",
    "run_temperature",
]

#: Side of a candidate region by default, µm.
REGION_UM = 256.0


def _levels(run: ResultRun, name: str) -> list[Any]:
    if not isinstance(run, ResultRun):
        raise TypeError(f"`run` must be a ResultRun, got {type(run).__name__}")
    return run.levels(name)


def run_labels(
    run: ResultRun, annotations: Sequence[Annotation], level: int = 0
) -> tuple[np.ndarray, ResultGeometry]:
    """Annotations on the grid of `run`'s pyramid `level`: 1 tumor, 0 non-tumor, 255 unknown."""
    from napari_histo.evaluate import slide_labels

    geometry = level_geometry(run.geometry, level)
    labels = slide_labels(annotations, geometry.shape, geometry.downsample, geometry.origin_l0)
    return labels, geometry


def rank_run(
    run: ResultRun,
    *,
    score: str = "uncertainty",
    region_um: float = REGION_UM,
    top: int | None = None,
    annotations: Sequence[Annotation] | None = None,
    temperature: float | None = None,
    min_block_px: int = 8,
) -> list[Region]:
    """Regions of a run ranked by `score` (:func:`~napari_histo.review.regions.rank_regions`).

    Reads the coarsest pyramid level on which a `region_um` square is still
    `min_block_px` px a side: a 100 000² slide ranks in well under a second.

    Parameters
    ----------
    run : ResultRun
        A complete run.
    score : {"uncertainty", "epistemic", "boundary", "disagreement", "annotations"}
    region_um : float
        Side of a candidate square, µm.
    top : int, optional
        Keep the best `top`.
    annotations : sequence of Annotation, optional
        Needed by ``"annotations"`` (classes ``tumor``, ``non-tumor``, ``ignore``).
    temperature : float, optional
        Calibrate the probability first (``"uncertainty"``, ``"boundary"`` and
        ``"annotations"``; see :func:`run_temperature`).
    min_block_px : int
        Smallest side of a square on the level read, px.
    """
    if score == "annotations" and not annotations:
        raise ValueError("score 'annotations' needs `annotations` (tumor / non-tumor regions)")
    levels = _levels(run, "probability")
    level, block = choose_level(run.geometry, len(levels), region_um, min_block_px)
    p = run.read_level("probability", level)
    v = run.read_level("epistemic", level)
    valid = (p != 0) | (v != 0)
    if temperature is not None and score in ("uncertainty", "boundary", "annotations"):
        p = calibrate(p, temperature)
    labels = run_labels(run, annotations, level)[0] if score == "annotations" else None
    grid = RegionGrid(level_geometry(run.geometry, level), block)
    return rank_regions(grid, p, v, score=score, labels=labels, valid=valid, top=top)


#: Longest side of the level an error map or a calibration reads by default, px.
MAP_MAX_PX = 4096


def map_level(run: ResultRun, max_px: int = MAP_MAX_PX) -> int:
    """Finest pyramid level of `run` at most `max_px` a side (the coarsest if none is).

    A whole-slide run's level 0 can be 25 000 px a side (2.5 GB as float32):
    error maps and calibrations read a level that fits in memory and on screen.
    """
    _levels(run, "probability")  # checks the type
    return run.finest_level(max_side=max_px)


def run_error_map(
    run: ResultRun,
    annotations: Sequence[Annotation],
    *,
    level: int | None = None,
    temperature: float | None = None,
    threshold: float = 0.5,
) -> tuple[np.ndarray, ErrorScores, ResultGeometry]:
    """TP / FP / FN / TN map of a run against annotations, its scores and its grid.

    `level` defaults to :func:`map_level` (at most :data:`MAP_MAX_PX` a side).

    Returns
    -------
    errors : ndarray of uint8
        :func:`~napari_histo.review.errors.error_map` on pyramid `level`.
    scores : ErrorScores
        Dice, precision, recall over the annotated pixels.
    geometry : ResultGeometry
        Where `errors` sits (level-0 origin, downsample, µm/px): a napari Labels
        layer takes ``scale = (mpp, mpp)`` and ``translate`` from it.
    """
    level = map_level(run) if level is None else level
    p = run.read_level("probability", level)
    if temperature is not None:
        p = calibrate(p, temperature)
    labels, geometry = run_labels(run, annotations, level)
    errors = error_map(p, labels, threshold)
    return errors, error_scores(errors), geometry


def run_calibration(
    run: ResultRun,
    annotations: Sequence[Annotation],
    *,
    level: int | None = None,
    held_out_fraction: float = 0.5,
    stripes: int = 4,
) -> CalibrationResult:
    """Fit the ensemble's temperature on a run's annotated pixels outside held-out stripes.

    The held-out part is `stripes` vertical bands of the grid covering
    `held_out_fraction` of it (:func:`~napari_histo.review.calibration.held_out_stripes`);
    ECE before and after is measured there. `level` defaults to :func:`map_level`.
    """
    level = map_level(run) if level is None else level
    p = run.read_level("probability", level)
    labels, _ = run_labels(run, annotations, level)
    held = held_out_stripes(p.shape, held_out_fraction, stripes)
    return fit_calibration(p, labels, held)


def run_temperature(
    run: ResultRun, dirs: Sequence[str | os.PathLike[str]] | None = None
) -> float | None:
    """The temperature for `run`'s probabilities, None when its ensemble is uncalibrated.

    Looks for calibrated versions of the run's members with the same weights
    (:func:`~napari_histo.review.calibration.temperature_for_models`) among
    every card in `dirs` (default: the shipped and the user's model folders).
    """
    from napari_histo.models.catalog import iter_cards

    cards = []
    for directory in _card_dirs(dirs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreadable cards are someone else's concern
            cards.extend(card for _, card in iter_cards(directory, None))
    return temperature_for_models(run.settings.get("models", []), cards)


def _card_dirs(dirs: Sequence[str | os.PathLike[str]] | None) -> list[Path]:
    from napari_histo.models.versions import model_dirs

    return [Path(d) for d in (model_dirs() if dirs is None else dirs) if Path(d).is_dir()]


def run_member_cards(
    run: ResultRun, dirs: Sequence[str | os.PathLike[str]] | None = None
) -> list[Path]:
    """Card files of `run`'s members: same name, version and weights (SHA-256).

    Searches `dirs` (default: the shipped and the user's model folders), in
    order; the first match of each member wins. For member disagreement and
    for writing calibrated versions of the run's ensemble.

    Raises
    ------
    WeightsError
        A member of the run has no card there (message names it and the folders).
    """
    from napari_histo.errors import WeightsError
    from napari_histo.models.catalog import iter_cards

    if not isinstance(run, ResultRun):
        raise TypeError(f"`run` must be a ResultRun, got {type(run).__name__}")
    folders = _card_dirs(dirs)
    cards = []
    for directory in folders:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreadable cards are someone else's concern
            cards.extend(iter_cards(directory, None))
    found = []
    for model in run.settings.get("models", []):
        match = next(
            (
                path
                for path, card in cards
                if card.name == model.get("name")
                and card.version == model.get("version")
                and card.sha256 == model.get("sha256")
            ),
            None,
        )
        if match is None:
            where = ", ".join(str(d) for d in folders) or "no model folder"
            raise WeightsError(
                f"model {model.get('name')} {model.get('version')} of run {run.run_id}: "
                f"no card with its weights in {where}"
            )
        found.append(match)
    if not found:
        raise WeightsError(f"run {run.run_id} names no models")
    return found


def calibrated_levels(run: ResultRun, temperature: float | None) -> list[Any]:
    """The run's probability pyramid, calibrated lazily (dask) when `temperature` is given.

    Largest level first, like :meth:`ResultRun.levels`; without a temperature
    the stored levels are wrapped unchanged. For display layers and outlines.
    """
    import dask.array as da

    levels = [da.from_zarr(a) for a in _levels(run, "probability")]
    if temperature is None:
        return levels
    return [a.map_blocks(calibrate, temperature, dtype=np.float32) for a in levels]
