"""Does a slide look like the training data? A stain-statistics distance.

Each image is summarised by the mean and spread of its tissue pixels' optical
density per RGB channel and the chromaticity of the mean (8 numbers: stain
colour and intensity, what differs most between labs and scanners). A model
card stores the mean and covariance of these over its real training tiles and
the 99th percentile of their Mahalanobis distances; a slide's score is its
distance over that percentile, so scores above 1 mean "less typical than 99 %
of the training tiles". Reading a slide for it is
:mod:`napari_histo.inference.stain_check`'s job.
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
