"""Where the model is wrong: TP / FP / FN / TN label map against annotations, with scores.

The error map lives on a run's result grid (or one of its pyramid levels):
annotations are rasterised there with
:func:`napari_histo.evaluate.slide_labels` (``tumor`` 1, ``non-tumor`` 0,
``ignore`` and unannotated pixels unknown) and compared with the tumor
probability thresholded at 0.5.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from napari_histo._atomic import atomic_write_bytes

__all__ = [
    "ERROR_CLASSES",
    "ERROR_CSV_COLUMNS",
    "ErrorScores",
    "error_map",
    "error_scores",
    "write_error_csv",
]

#: Values of an error map: 0 is unknown (no annotation, or ``ignore``).
ERROR_CLASSES = {"unknown": 0, "TP": 1, "FP": 2, "FN": 3, "TN": 4}
#: Columns of :func:`write_error_csv`, in order.
ERROR_CSV_COLUMNS = ("slide", "tp_px", "fp_px", "fn_px", "tn_px", "dice", "precision", "recall")


def _check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise ValueError(f"`threshold` must be a number in (0, 1), got {threshold!r}")
    if not 0 < threshold < 1:
        raise ValueError(f"`threshold` must be a number in (0, 1), got {threshold!r}")
    return float(threshold)


def error_map(probability: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Label map of where the prediction agrees with the annotations.

    Parameters
    ----------
    probability : ndarray of float, (rows, cols)
        Tumor probability.
    labels : ndarray of uint8, (rows, cols)
        1 tumor, 0 non-tumor, 255 unknown (:func:`~napari_histo.evaluate.slide_labels`).
    threshold : float
        Predicted tumor where ``probability >= threshold`` (as the slide measurements).

    Returns
    -------
    ndarray of uint8, (rows, cols)
        :data:`ERROR_CLASSES`: 1 TP, 2 FP, 3 FN, 4 TN, 0 unknown.

    Examples
    --------
    >>> error_map(np.array([[0.9, 0.9, 0.1, 0.1, 0.9]]), np.array([[1, 0, 1, 0, 255]]))
    array([[1, 2, 3, 4, 0]], dtype=uint8)
    """
    threshold = _check_threshold(threshold)
    p = np.asarray(probability)
    t = np.asarray(labels)
    if p.shape != t.shape:
        raise ValueError(f"`labels` shape {t.shape} must equal `probability` shape {p.shape}")
    if p.ndim != 2:
        raise ValueError(f"`probability` must be 2-D (rows, cols), got shape {p.shape}")
    pred = p >= threshold
    tumor, normal = t == 1, t == 0
    out = np.zeros(p.shape, np.uint8)
    out[pred & tumor] = ERROR_CLASSES["TP"]
    out[pred & normal] = ERROR_CLASSES["FP"]
    out[~pred & tumor] = ERROR_CLASSES["FN"]
    out[~pred & normal] = ERROR_CLASSES["TN"]
    return out


@dataclass(frozen=True)
class ErrorScores:
    """Pixel counts of an error map and the figures they give (NaN where undefined).

    Attributes
    ----------
    tp_px, fp_px, fn_px, tn_px : int
        Pixels of each class.
    dice : float
        ``2 TP / (2 TP + FP + FN)``; 1.0 when there is no tumor in either.
    precision : float
        ``TP / (TP + FP)``.
    recall : float
        ``TP / (TP + FN)``.
    """

    tp_px: int
    fp_px: int
    fn_px: int
    tn_px: int
    dice: float
    precision: float
    recall: float

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready (NaN → None)."""
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


def error_scores(errors: np.ndarray) -> ErrorScores:
    """Counts, Dice, precision and recall of an :func:`error_map`.

    Examples
    --------
    >>> error_scores(np.array([[1, 1, 2, 3, 4, 0]], np.uint8)).dice
    0.6666666666666666
    """
    e = np.asarray(errors)
    if e.dtype != np.uint8:
        raise ValueError(f"`errors` must be a uint8 error map, got dtype {e.dtype}")
    counts = np.bincount(e.ravel(), minlength=5)
    tp, fp, fn, tn = (int(counts[ERROR_CLASSES[k]]) for k in ("TP", "FP", "FN", "TN"))
    nan = float("nan")
    return ErrorScores(
        tp_px=tp,
        fp_px=fp,
        fn_px=fn,
        tn_px=tn,
        dice=2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0,
        precision=tp / (tp + fp) if (tp + fp) else nan,
        recall=tp / (tp + fn) if (tp + fn) else nan,
    )


def write_error_csv(rows: Sequence[tuple[str, ErrorScores]], path: str | os.PathLike[str]) -> Path:
    """Write one line per slide (:data:`ERROR_CSV_COLUMNS`) to `path`, atomically.

    Parameters
    ----------
    rows : sequence of (str, ErrorScores)
        Slide name and its scores.
    path : str or PathLike
        Destination CSV; its folder must exist.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ERROR_CSV_COLUMNS)
    for name, scores in rows:
        if not isinstance(scores, ErrorScores):
            raise TypeError(f"`rows` must hold (name, ErrorScores), got {type(scores).__name__}")
        values = [name]
        for column in ERROR_CSV_COLUMNS[1:]:
            value = getattr(scores, column)
            if isinstance(value, float):
                value = f"{value:.4f}" if math.isfinite(value) else ""
            values.append(value)
        writer.writerow(values)
    return atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))
