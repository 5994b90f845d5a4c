"""Editing nuclei instance labels: delete, merge, split, relabel (no Qt, no napari).

Every function takes a 2-D integer label array (0 = background, one id per
nucleus, e.g. the data of the "nuclei" Labels layer) and returns a new array;
the input is never changed. Work is confined to the bounding box of the ids
involved, so edits on a large array cost what the nuclei cost.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage
from skimage import draw, segmentation
from skimage.feature import peak_local_max

__all__ = ["delete_labels", "merge_labels", "relabel", "split_by_line", "split_watershed"]


def _check(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    return labels


def _ids(ids: int | Iterable[int]) -> list[int]:
    out = [int(ids)] if np.ndim(ids) == 0 else sorted({int(i) for i in ids})  # type: ignore[arg-type]
    if any(i <= 0 for i in out):
        raise ValueError(f"label ids must be > 0, got {out}")
    return out


def _bbox(labels: np.ndarray, ids: Sequence[int]) -> tuple[slice, slice] | None:
    rows, cols = np.nonzero(np.isin(labels, ids))
    if rows.size == 0:
        return None
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def delete_labels(labels: np.ndarray, ids: int | Iterable[int]) -> np.ndarray:
    """Set every pixel of `ids` to background.

    Examples
    --------
    >>> delete_labels(np.array([[1, 2], [2, 3]]), [2]).tolist()
    [[1, 0], [0, 3]]
    """
    labels = _check(labels)
    out = labels.copy()
    out[np.isin(out, _ids(ids))] = 0
    return out


def merge_labels(labels: np.ndarray, ids: int | Iterable[int]) -> np.ndarray:
    """Give all `ids` the smallest of them (one nucleus); the gap between them is not filled.

    Examples
    --------
    >>> merge_labels(np.array([[1, 2], [4, 3]]), [4, 2]).tolist()
    [[1, 2], [2, 3]]
    """
    labels = _check(labels)
    ids = _ids(ids)
    out = labels.copy()
    out[np.isin(out, ids)] = ids[0]
    return out


def _next_id(labels: np.ndarray) -> int:
    top = int(labels.max()) + 1 if labels.size else 1
    if top > np.iinfo(labels.dtype).max:
        raise ValueError(f"no free label id left in dtype {labels.dtype}")
    return top


def split_by_line(
    labels: np.ndarray, label_id: int, line_rc: Sequence[Sequence[float]], width: int = 1
) -> np.ndarray:
    """Cut nucleus `label_id` along a drawn polyline into pieces.

    Parameters
    ----------
    labels : (rows, cols) int array
    label_id : int
        The nucleus to split.
    line_rc : (N >= 2, 2) sequence
        Polyline vertices ``(row, col)`` in array pixels.
    width : int
        Cut width in pixels (the cut pixels go to the nearest piece afterwards).

    Returns
    -------
    ndarray
        The largest piece keeps `label_id`; each other piece (4-connected) gets a
        new id above the current maximum. Unchanged if the line does not cut it.
    """
    labels = _check(labels)
    (label_id,) = _ids(label_id)
    line = np.asarray(line_rc, dtype=np.float64)
    if line.ndim != 2 or line.shape[0] < 2 or line.shape[1] != 2:
        raise ValueError(f"`line_rc` must have shape (N >= 2, 2), got {line.shape}")
    out = labels.copy()
    box = _bbox(labels, [label_id])
    if box is None:
        return out
    cut = np.zeros(labels.shape, dtype=bool)
    pts = np.round(line).astype(np.intp)
    for (r0, c0), (r1, c1) in itertools.pairwise(pts):
        rr, cc = draw.line(r0, c0, r1, c1)
        ok = (rr >= 0) & (rr < cut.shape[0]) & (cc >= 0) & (cc < cut.shape[1])
        cut[rr[ok], cc[ok]] = True
    if width > 1:
        cut = ndimage.binary_dilation(cut, iterations=width // 2)
    sub = out[box]
    nucleus = sub == label_id
    pieces, n = ndimage.label(nucleus & ~cut[box])  # 4-connected: a 1-px diagonal line cuts
    if n < 2:
        return out
    sizes = ndimage.sum_labels(np.ones_like(pieces), pieces, index=np.arange(1, n + 1))
    order = np.argsort(-sizes) + 1
    new = np.zeros_like(sub)
    next_id = _next_id(labels)
    for rank, piece in enumerate(order):
        new[pieces == piece] = label_id if rank == 0 else next_id + rank - 1
    # cut pixels of the nucleus join the nearest piece
    _, (ir, ic) = ndimage.distance_transform_edt(new == 0, return_indices=True)
    filled = new[ir, ic]
    sub[nucleus] = filled[nucleus]
    return out


def split_watershed(labels: np.ndarray, label_id: int, pieces: int = 2) -> np.ndarray:
    """Split nucleus `label_id` into `pieces` by a watershed on its distance transform.

    Seeds are the `pieces` strongest distance maxima, at least the largest
    inscribed radius apart; when there are fewer, or no neck separates them (a
    convex blob), the nucleus is cut across its long axis into equal slabs
    instead. The largest piece keeps `label_id`; others get new ids.
    """
    labels = _check(labels)
    (label_id,) = _ids(label_id)
    if pieces < 2:
        raise ValueError(f"`pieces` must be >= 2, got {pieces}")
    out = labels.copy()
    box = _bbox(labels, [label_id])
    if box is None:
        return out
    sub = out[box]
    nucleus = np.pad(sub == label_id, 1)
    dist = ndimage.distance_transform_edt(nucleus)
    peaks = peak_local_max(dist, min_distance=max(2, int(dist.max())), num_peaks=pieces,
                           labels=nucleus.astype(int), exclude_border=False)  # fmt: skip
    if len(peaks) < pieces or not _has_neck(dist, peaks):
        rr, cc = np.nonzero(nucleus)
        pts = np.column_stack([rr, cc]).astype(np.float64)
        centre = pts.mean(axis=0)
        _, vecs = np.linalg.eigh(np.cov((pts - centre).T))
        proj = (pts - centre) @ vecs[:, -1]
        qs = np.quantile(proj, (np.arange(pieces) + 0.5) / pieces)
        peaks = np.round(centre + qs[:, None] * vecs[:, -1][None, :]).astype(np.intp)
    markers = np.zeros(nucleus.shape, dtype=np.int32)
    for k, (r, c) in enumerate(peaks, 1):
        markers[r, c] = k
    ws = segmentation.watershed(-dist, markers, mask=nucleus)[1:-1, 1:-1]
    sizes = ndimage.sum_labels(np.ones_like(ws), ws, index=np.arange(1, pieces + 1))
    order = np.argsort(-sizes) + 1
    next_id = _next_id(labels)
    inside = sub == label_id
    new = sub.copy()
    for rank, piece in enumerate(order):
        new[inside & (ws == piece)] = label_id if rank == 0 else next_id + rank - 1
    sub[...] = new
    return out


def _has_neck(dist: np.ndarray, peaks: np.ndarray) -> bool:
    """True when the distance map dips below 90 % of the lower peak between every two seeds."""
    for (r0, c0), (r1, c1) in itertools.combinations(peaks, 2):
        rr, cc = draw.line(int(r0), int(c0), int(r1), int(c1))
        if dist[rr, cc].min() >= 0.9 * min(dist[r0, c0], dist[r1, c1]):
            return False
    return True


def relabel(labels: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..n keeping their order (background stays 0).

    Examples
    --------
    >>> relabel(np.array([[0, 7], [3, 7]])).tolist()
    [[0, 2], [1, 2]]
    """
    labels = _check(labels)
    out, _, _ = segmentation.relabel_sequential(labels)
    return out.astype(labels.dtype, copy=False)
