"""Scoring of labelled tiles (numpy): per-tile figures, pooled figures, reliability table.

A tile's figures count its labelled pixels (255 is unknown and left out); the
pooled figures count every labelled pixel of every tile once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_histo.inference.tiles import predict_tile
from napari_histo.metrics import auroc, expected_calibration_error, reliability
from napari_histo.models import LoadedModel
from napari_histo.stain import StainWarning

UNKNOWN = 255
#: Pixels per tile kept for the pooled AUROC / ECE (a fixed-stride subsample).
_POOL_PX = 20_000


@dataclass(frozen=True)
class LabelledTile:
    """An RGB tile with a tumor mask (0 / 1 / 255 unknown) and/or a tile label."""

    name: str
    rgb: np.ndarray
    mask: np.ndarray | None
    mpp: float
    tile_label: int | None = None


@dataclass(frozen=True)
class TileScore:
    """Figures of one tile (NaN where undefined, e.g. AUROC of a one-class tile)."""

    name: str
    pixels: int
    tumor_fraction: float
    dice: float
    iou: float
    auroc: float
    ece: float
    mean_probability: float
    tile_score: float
    tile_label: int | None
    epistemic_error_auroc: float
    note: str = ""


def _overlap(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """|A ∩ B|, |A ∪ B| and |A| + |B| of two boolean masks."""
    return int((pred & truth).sum()), int((pred | truth).sum()), int(pred.sum() + truth.sum())


def top_fifth(probability: np.ndarray) -> float:
    """Tile score: mean of the top fifth of the tile's probabilities."""
    flat = np.sort(probability.ravel())
    return float(flat[-max(1, flat.size // 5) :].mean())


def score_maps(
    probability: np.ndarray, truth: np.ndarray, epistemic: np.ndarray | None = None
) -> dict[str, Any]:
    """Figures of one tile's labelled pixels (no model involved).

    Parameters
    ----------
    probability : ndarray of float
        Tumor probability of each labelled pixel (any shape).
    truth : ndarray of bool, same shape
        Tumor mask.
    epistemic : ndarray of float, optional
        Epistemic uncertainty; its AUROC at telling the misclassified pixels
        (at 0.5) from the others is ``epistemic_error_auroc``.

    Returns
    -------
    dict
        ``pixels``, ``tumor_fraction``, ``dice``, ``iou`` (prediction at 0.5;
        1.0 when prediction and truth are both empty), ``auroc``, ``ece`` and
        ``epistemic_error_auroc`` (NaN where undefined: no pixels, one class).
    """
    p = np.asarray(probability, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=bool).ravel()
    if p.shape != t.shape:
        raise ValueError(f"`probability` size {p.size} must equal `truth` size {t.size}")
    nan = float("nan")
    if not p.size:
        return dict(pixels=0, tumor_fraction=nan, dice=nan, iou=nan, auroc=nan, ece=nan,
                    epistemic_error_auroc=nan)  # fmt: skip
    pred = p > 0.5
    inter, union, total = _overlap(pred, t)
    e = None if epistemic is None else np.asarray(epistemic, dtype=np.float64).ravel()
    return dict(
        pixels=int(p.size),
        tumor_fraction=float(t.mean()),
        dice=2 * inter / total if total else 1.0,
        iou=inter / union if union else 1.0,
        auroc=auroc(p, t),
        ece=expected_calibration_error(p, t),
        epistemic_error_auroc=nan if e is None else auroc(e, pred != t),
    )


def score_tiles(
    tiles: Iterable[LabelledTile],
    members: Sequence[LoadedModel],
    *,
    tta: int = 1,
    stain: object = "card",
    progress: Callable[[int], None] | None = None,
) -> tuple[list[TileScore], dict[str, np.ndarray]]:
    """Run the ensemble on every tile and score it.

    `stain` is passed to :func:`~napari_histo.inference.tiles.predict_tile`; a
    tile it leaves unnormalised (too little tissue) says so in its ``note``.
    `progress`, if given, is called with the number of tiles done after each.

    Returns
    -------
    rows : list of TileScore
        One per tile.
    pooled : dict of ndarray
        Subsampled labelled pixels of all tiles (``probability``, ``truth``,
        ``epistemic``) and per-tile ``tile_score`` / ``tile_label`` arrays, for
        :func:`pooled_scores`.
    """
    rows = []
    keep: dict[str, list[np.ndarray]] = {"probability": [], "truth": [], "epistemic": []}
    tile_scores, tile_labels = [], []
    for tile in tiles:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StainWarning)
            out = predict_tile(tile.rgb, tile.mpp, members, tta=tta, stain=stain)
        notes = [str(w.message) for w in caught if issubclass(w.category, StainWarning)]
        for w in caught:
            if not issubclass(w.category, StainWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        prob = out.probability
        score = top_fifth(prob)
        if tile.tile_label is not None:
            tile_scores.append(score)
            tile_labels.append(int(tile.tile_label))
        known = np.zeros(prob.shape, bool) if tile.mask is None else tile.mask != UNKNOWN
        truth = (tile.mask == 1) if tile.mask is not None else known
        p, t, e = prob[known], truth[known], out.epistemic[known]
        if p.size:
            stride = max(1, p.size // _POOL_PX)
            keep["probability"].append(p[::stride])
            keep["truth"].append(t[::stride])
            keep["epistemic"].append(e[::stride])
        rows.append(
            TileScore(
                name=tile.name,
                **score_maps(p, t, e),
                mean_probability=float(prob.mean()),
                tile_score=score,
                tile_label=tile.tile_label,
                note="; ".join(notes),
            )
        )
        if progress is not None:
            progress(len(rows))
    pooled = {k: np.concatenate(v) if v else np.zeros(0) for k, v in keep.items()}
    pooled["tile_score"] = np.asarray(tile_scores, dtype=np.float64)
    pooled["tile_label"] = np.asarray(tile_labels, dtype=np.int64)
    return rows, pooled


def pooled_scores(pooled: dict[str, np.ndarray]) -> dict[str, float]:
    """Dice, IoU, AUROC, ECE and epistemic-error AUROC over all pooled pixels.

    With tile labels, also ``tile_auroc`` (top-fifth mean probability against
    the tile label) and ``tile_accuracy`` at 0.5.
    """
    p, t, e = pooled["probability"], pooled["truth"].astype(bool), pooled["epistemic"]
    out: dict[str, float] = {}
    if p.size:
        pred = p > 0.5
        inter, union, total = _overlap(pred, t)
        out.update(
            dice=2 * inter / total if total else float("nan"),
            iou=inter / union if union else float("nan"),
            auroc=auroc(p, t),
            ece=expected_calibration_error(p, t),
            epistemic_error_auroc=auroc(e, pred != t),
            pixels=float(p.size),
        )
    if pooled["tile_label"].size:
        labels = pooled["tile_label"].astype(bool)
        out["tile_auroc"] = auroc(pooled["tile_score"], labels)
        out["tile_accuracy"] = float(((pooled["tile_score"] > 0.5) == labels).mean())
        out["tiles"] = float(labels.size)
    return {k: round(float(v), 4) for k, v in out.items()}


def reliability_table(pooled: dict[str, np.ndarray], bins: int = 10) -> dict[str, list[float]]:
    """Reliability-diagram data of the pooled pixels (mean probability, frequency, count)."""
    mean_p, freq, count = reliability(pooled["probability"], pooled["truth"], bins=bins)
    return {
        "mean_probability": mean_p.tolist(),
        "frequency": freq.tolist(),
        "count": count.tolist(),
    }
