"""Segmentation metrics on plain arrays."""

from __future__ import annotations

import numpy as np

__all__ = ["dice"]


def dice(prediction: np.ndarray, truth: np.ndarray, *, empty: float = 1.0) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|) of two boolean masks.

    Parameters
    ----------
    prediction, truth : ndarray of bool, same shape
        Masks.
    empty : float
        Value when both masks are empty.

    Examples
    --------
    >>> dice(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
    0.6666666666666666
    """
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(
            f"`prediction` shape {prediction.shape} must equal `truth` shape {truth.shape}"
        )
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return float(empty)
    return 2.0 * int((prediction & truth).sum()) / total
