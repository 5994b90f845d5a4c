"""Segmentation metrics on plain arrays."""

from __future__ import annotations

import numpy as np

__all__ = [
    "aggregated_jaccard_index",
    "auroc",
    "dice",
    "expected_calibration_error",
    "panoptic_quality",
    "reliability",
]


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


def _check_label_pair(true_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[np.ndarray, ...]:
    true_labels = np.asarray(true_labels)
    pred_labels = np.asarray(pred_labels)
    for name, value in (("true_labels", true_labels), ("pred_labels", pred_labels)):
        if not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"`{name}` must have an integer dtype, got {value.dtype}")
    if true_labels.shape != pred_labels.shape:
        raise ValueError(
            f"`pred_labels` shape {pred_labels.shape} must equal "
            f"`true_labels` shape {true_labels.shape}"
        )
    return true_labels, pred_labels


def _overlaps(
    true_labels: np.ndarray, pred_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table of two instance labelings.

    Returns
    -------
    true_area : ndarray (n_true,)
        Pixel count of each true instance (ids compacted to 0..n_true-1).
    pred_area : ndarray (n_pred,)
        Same for predicted instances.
    ti, pj, inter : ndarray (k,)
        Every overlapping pair (true index, pred index) and its pixel count.
    """
    t = true_labels.ravel()
    p = pred_labels.ravel()
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    # Index 0 of each compacted id set is background when the image has any.
    t_bg = bool(len(t_ids) and t_ids[0] == 0)
    p_bg = bool(len(p_ids) and p_ids[0] == 0)
    t_inv = t_inv.astype(np.int64) - int(t_bg)
    p_inv = p_inv.astype(np.int64) - int(p_bg)
    n_t, n_p = len(t_ids) - int(t_bg), len(p_ids) - int(p_bg)
    true_area = np.bincount(t_inv[t_inv >= 0], minlength=n_t)
    pred_area = np.bincount(p_inv[p_inv >= 0], minlength=n_p)
    both = (t_inv >= 0) & (p_inv >= 0)
    pairs, inter = np.unique(t_inv[both] * max(n_p, 1) + p_inv[both], return_counts=True)
    return true_area, pred_area, pairs // max(n_p, 1), pairs % max(n_p, 1), inter


def aggregated_jaccard_index(
    true_labels: np.ndarray, pred_labels: np.ndarray, *, empty: float = 1.0
) -> float:
    """Aggregated Jaccard Index of instance labelings (Kumar et al. 2017).

    Each true instance G_i is paired with the predicted instance S_j of
    largest IoU (none if it overlaps none); AJI = Σ|G_i ∩ S_j| divided by
    Σ|G_i ∪ S_j| plus the areas of predicted instances paired with no true one.

    Parameters
    ----------
    true_labels, pred_labels : ndarray of int, same shape
        Instance labels, 0 = background; ids need not be consecutive.
    empty : float
        Value when both labelings are empty.

    Returns
    -------
    float
        In [0, 1]; 1 for identical labelings (up to relabeling).

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 2]])
    >>> aggregated_jaccard_index(a, np.array([[5, 5, 0, 0]]))
    0.6666666666666666
    """
    true_labels, pred_labels = _check_label_pair(true_labels, pred_labels)
    true_area, pred_area, ti, pj, inter = _overlaps(true_labels, pred_labels)
    if len(true_area) == 0 and len(pred_area) == 0:
        return float(empty)
    union = true_area[ti] + pred_area[pj] - inter
    iou = inter / union
    # Best prediction per true instance: sort by (true, -iou), first of each true.
    order = np.lexsort((-iou, ti))
    first = order[np.r_[True, ti[order][1:] != ti[order][:-1]]] if len(order) else order
    intersection = int(inter[first].sum())
    union_sum = int(union[first].sum())
    matched_true = np.zeros(len(true_area), bool)
    matched_true[ti[first]] = True
    union_sum += int(true_area[~matched_true].sum())
    used = np.zeros(len(pred_area), bool)
    used[pj[first]] = True
    union_sum += int(pred_area[~used].sum())
    return intersection / union_sum if union_sum else float(empty)


def panoptic_quality(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    iou_threshold: float = 0.5,
    *,
    empty: float = 1.0,
) -> tuple[float, float, float]:
    """Panoptic quality PQ = DQ x SQ of instance labelings (Kirillov et al. 2019).

    A true and a predicted instance match when their IoU exceeds
    `iou_threshold` (>= 0.5 makes matches unique). DQ = TP / (TP + FP/2 + FN/2)
    is the detection F1; SQ is the mean IoU of the matches.

    Parameters
    ----------
    true_labels, pred_labels : ndarray of int, same shape
        Instance labels, 0 = background.
    iou_threshold : float
        In [0.5, 1).
    empty : float
        Value of all three when both labelings are empty.

    Returns
    -------
    (pq, dq, sq) : tuple of float
        SQ (and so PQ) is 0 when nothing matches.

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 2]])
    >>> panoptic_quality(a, np.array([[5, 5, 0, 0]]))
    (0.6666666666666666, 0.6666666666666666, 1.0)
    """
    true_labels, pred_labels = _check_label_pair(true_labels, pred_labels)
    if not (isinstance(iou_threshold, int | float) and 0.5 <= iou_threshold < 1):
        raise ValueError(f"`iou_threshold` must be in [0.5, 1), got {iou_threshold!r}")
    true_area, pred_area, ti, pj, inter = _overlaps(true_labels, pred_labels)
    if len(true_area) == 0 and len(pred_area) == 0:
        return float(empty), float(empty), float(empty)
    iou = inter / (true_area[ti] + pred_area[pj] - inter)
    matched = iou > iou_threshold
    tp = int(matched.sum())
    fp = len(pred_area) - tp
    fn = len(true_area) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(iou[matched].mean()) if tp else 0.0
    return dq * sq, dq, sq


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative).

    Ties count one half (Mann–Whitney U). NaN when only one class is present.

    Parameters
    ----------
    scores : ndarray of float
        Any shape; higher means "more likely positive".
    labels : ndarray of bool, same shape
        True for positives.

    Examples
    --------
    >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool))
    0.75
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"`scores` size {scores.size} must equal `labels` size {labels.size}")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranked = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average ranks over ties (1-based).
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    ends = np.r_[starts[1:], ranked.size]
    mean_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def reliability(
    probability: np.ndarray, truth: np.ndarray, *, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin mean predicted probability, observed frequency and count.

    Bins split [0, 1] into `bins` equal intervals; empty bins give NaN means.
    """
    p = np.asarray(probability, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=bool).ravel()
    if p.shape != t.shape:
        raise ValueError(f"`probability` size {p.size} must equal `truth` size {t.size}")
    if bins < 1:
        raise ValueError(f"`bins` must be >= 1, got {bins}")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(index, weights=p, minlength=bins) / count
        freq = np.bincount(index, weights=t, minlength=bins) / count
    return mean_p, freq, count.astype(np.int64)


def expected_calibration_error(
    probability: np.ndarray, truth: np.ndarray, *, bins: int = 10
) -> float:
    """ECE: count-weighted mean |observed frequency - mean probability| over bins.

    Examples
    --------
    >>> expected_calibration_error(np.array([0.9, 0.9]), np.array([True, True]))
    0.09999999999999998
    """
    mean_p, freq, count = reliability(probability, truth, bins=bins)
    used = count > 0
    if not used.any():
        return float("nan")
    return float((np.abs(freq - mean_p)[used] * count[used]).sum() / count[used].sum())
