"""Does a slide look like the training data? A stain-statistics distance.

Each image is summarised by the mean and spread of its tissue pixels' optical
density per RGB channel and the chromaticity of the mean (8 numbers: stain
colour and intensity, what differs most between labs and scanners). A model
card stores the mean and covariance of these over its real training tiles and
the 99th percentile of their Mahalanobis distances; a slide's score is its
distance over that percentile, so scores above 1 mean "less typical than 99 %
of the training tiles".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FEATURES",
    "StainReference",
    "fit_reference",
    "ood_message",
    "ood_score",
    "slide_features",
    "stain_features",
]

FEATURES = (
    "od_mean_r", "od_mean_g", "od_mean_b", "od_std_r", "od_std_g", "od_std_b",
    "chroma_r", "chroma_b",
)  # fmt: skip
#: Optical density (summed over RGB) above which a pixel counts as tissue.
_TISSUE_OD = 0.3
#: Fewest tissue pixels that give a usable estimate.
_MIN_PIXELS = 64


def stain_features(rgb: np.ndarray) -> np.ndarray | None:
    """Optical-density statistics of tissue pixels, shape (8,) (see :data:`FEATURES`).

    Parameters
    ----------
    rgb : ndarray of uint8, shape (H, W, 3)
        An image at any resolution (statistics change little with scale).

    Returns
    -------
    ndarray of float64 or None
        None when fewer than 64 pixels look like tissue (glass only).
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"`rgb` must be an (H, W, 3) array, got {getattr(rgb, 'shape', rgb)!r}")
    od = -np.log(np.maximum(rgb[..., :3].reshape(-1, 3).astype(np.float64), 1.0) / 255.0)
    tissue = od[od.sum(axis=1) > _TISSUE_OD]
    if len(tissue) < _MIN_PIXELS:
        return None
    mean = tissue.mean(axis=0)
    # Chromaticity of the mean density: the stain's hue, independent of its amount.
    chroma = mean[[0, 2]] / max(mean.sum(), 1e-6)
    return np.concatenate([mean, tissue.std(axis=0), chroma])


@dataclass(frozen=True)
class StainReference:
    """Training distribution of :func:`stain_features` (stored in a model card)."""

    mean: tuple[float, ...]
    covariance: tuple[tuple[float, ...], ...]
    threshold: float
    count: int

    def to_dict(self) -> dict:
        return {
            "features": list(FEATURES),
            "mean": [round(v, 6) for v in self.mean],
            "covariance": [[round(v, 8) for v in row] for row in self.covariance],
            "threshold": round(self.threshold, 4),
            "count": self.count,
        }

    @staticmethod
    def from_dict(data: Mapping) -> StainReference:
        """Inverse of :meth:`to_dict`; raises ValueError for a malformed mapping."""
        try:
            mean = tuple(float(v) for v in data["mean"])
            cov = tuple(tuple(float(v) for v in row) for row in data["covariance"])
            threshold = float(data["threshold"])
            count = int(data.get("count", 0))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"stain reference needs mean, covariance, threshold: {err}") from None
        n = len(FEATURES)
        if len(mean) != n or len(cov) != n or any(len(r) != n for r in cov):
            raise ValueError(f"stain reference must have {n} features")
        if not (np.isfinite(mean).all() and np.isfinite(cov).all() and threshold > 0):
            raise ValueError("stain reference values must be finite, threshold > 0")
        return StainReference(mean, cov, threshold, count)


def _distance(features: np.ndarray, ref: StainReference) -> np.ndarray:
    cov = np.asarray(ref.covariance)
    cov = cov + np.eye(len(cov)) * 1e-3 * np.trace(cov) / len(cov)  # ridge: few tiles
    diff = np.atleast_2d(features) - np.asarray(ref.mean)
    return np.sqrt(np.einsum("ij,jk,ik->i", diff, np.linalg.inv(cov), diff))


def fit_reference(features: Sequence[np.ndarray], *, quantile: float = 0.99) -> StainReference:
    """Mean, covariance and the `quantile` of the training tiles' own distances."""
    x = np.asarray([f for f in features if f is not None], dtype=np.float64)
    if len(x) < len(FEATURES) + 2:
        raise ValueError(f"need at least {len(FEATURES) + 2} tiles with tissue, got {len(x)}")
    ref = StainReference(tuple(x.mean(0)), tuple(map(tuple, np.cov(x.T))), 1.0, len(x))
    threshold = float(np.quantile(_distance(x, ref), quantile))
    return StainReference(ref.mean, ref.covariance, threshold, len(x))


def ood_score(features: np.ndarray | None, ref: StainReference) -> float:
    """Distance over the reference threshold (> 1: atypical); NaN without tissue."""
    if features is None:
        return float("nan")
    return float(_distance(features, ref)[0] / ref.threshold)


def ood_message(score: float) -> str:
    """A plain sentence for the dock and the CLI."""
    if score != score:
        return "Slide vs training data: no tissue found to compare."
    if score > 1:
        return (
            f"Warning: this slide's staining looks unlike the models' training data "
            f"(score {score:.1f}; above 1 is less typical than 99% of training tiles). "
            "Treat the tumor map with caution and check it against the tissue."
        )
    return f"Slide vs training data: typical staining (score {score:.2f}; warning above 1)."


def slide_features(slide, model_mpp: float, *, patches: int = 16, patch_px: int = 128):
    """:func:`stain_features` of up to `patches` tissue patches spread over a slide.

    Patches are read at `model_mpp` (µm/px) around tissue pixels of the slide's
    tissue mask, on an even grid, so the statistics match what the models see.
    """
    from napari_histo.tissue import slide_tissue_mask
    from napari_histo.training.data import read_patch

    mask, downsample = slide_tissue_mask(slide)
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    pick = np.linspace(0, rows.size - 1, min(patches, rows.size)).astype(int)
    size_l0 = max(1, round(patch_px * model_mpp / slide.require_mpp()))
    width, height = slide.dimensions
    images = []
    for r, c in zip(rows[pick], cols[pick], strict=True):
        x = int(min(max(0, (c + 0.5) * downsample - size_l0 / 2), max(0, width - size_l0)))
        y = int(min(max(0, (r + 0.5) * downsample - size_l0 / 2), max(0, height - size_l0)))
        images.append(read_patch(slide, x, y, size_l0, patch_px))
    return stain_features(np.concatenate(images, axis=0))


def slide_ood(slide_path, card_paths) -> tuple[float, str]:
    """``(score, message)`` of a slide against the first card with a stain reference.

    Returns ``(nan, message)`` when no card carries a reference (models trained
    before v2, or your own) or the slide has no tissue.
    """
    from napari_histo.io.slide import Slide
    from napari_histo.models import read_card

    for path in card_paths:
        card = read_card(path)
        if card.stain_reference is not None:
            break
    else:
        return float("nan"), "Slide vs training data: the models carry no stain reference."
    reference = StainReference.from_dict(card.stain_reference)
    with Slide(slide_path) as slide:
        if slide.mpp is None:
            return float("nan"), "Slide vs training data: no µm/px in the slide, not compared."
        score = ood_score(slide_features(slide, card.input_mpp), reference)
    return score, ood_message(score)
