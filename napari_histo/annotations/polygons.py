"""Polygon validity: vectorised segment-intersection tests (no shapely).

Rings are ``(N, 2)`` arrays of ``(x, y)`` vertices, not closed (the last vertex
connects back to the first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["as_xy", "find_self_intersections", "is_simple_polygon", "simple_polygons"]


def as_xy(coords: Any, name: str, min_rows: int) -> np.ndarray:
    """`coords` as a read-only finite float64 ``(N >= min_rows, 2)`` array.

    ValueError names `name`.
    """
    arr = np.array(coords, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < min_rows:
        raise ValueError(f"`{name}` must have shape (N >= {min_rows}, 2), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` must be finite")
    arr.flags.writeable = False
    return arr


def _dedupe(ring: np.ndarray) -> np.ndarray:
    ring = np.asarray(ring, dtype=np.float64)
    keep = np.any(ring != np.roll(ring, -1, axis=0), axis=1)
    return ring[keep] if not keep.all() else ring


def _orient(ax, ay, bx, by, cx, cy):  # type: ignore[no-untyped-def]
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)


def _on_segment(ax, ay, bx, by, px, py):  # type: ignore[no-untyped-def]
    return (
        (np.minimum(ax, bx) <= px) & (px <= np.maximum(ax, bx))
        & (np.minimum(ay, by) <= py) & (py <= np.maximum(ay, by))
    )  # fmt: skip


def _crossing_pairs(seg: np.ndarray, i: np.ndarray, j: np.ndarray, n_seg: np.ndarray) -> np.ndarray:
    """Bool (B, P): segments i[p] and j[p] (i < j - 1) touch or cross, ring by ring.

    `seg` is (B, m, 4) = (x0, y0, x1, y1), NaN-padded past each ring's `n_seg`
    segments; the pair (0, n_seg - 1) shares the closing vertex and is excluded.
    Pairs whose bounding boxes are disjoint are rejected first, so only the few
    candidates get the orientation tests.
    """
    lo = np.minimum(seg[..., :2], seg[..., 2:])  # (B, m, 2)
    hi = np.maximum(seg[..., :2], seg[..., 2:])
    with np.errstate(invalid="ignore"):
        near = (lo[:, i, 0] <= hi[:, j, 0]) & (lo[:, j, 0] <= hi[:, i, 0])
        near &= (lo[:, i, 1] <= hi[:, j, 1]) & (lo[:, j, 1] <= hi[:, i, 1])
    near &= ~((i == 0)[None, :] & (j[None, :] == (n_seg - 1)[:, None]))
    ring, pair = np.nonzero(near)
    a, b = seg[ring, i[pair]], seg[ring, j[pair]]  # (K, 4)
    ax, ay, bx, by = a.T
    cx, cy, dx, dy = b.T
    d1 = _orient(cx, cy, dx, dy, ax, ay)
    d2 = _orient(cx, cy, dx, dy, bx, by)
    d3 = _orient(ax, ay, bx, by, cx, cy)
    d4 = _orient(ax, ay, bx, by, dx, dy)
    hit = ((d1 * d2) < 0) & ((d3 * d4) < 0)
    hit |= (d1 == 0) & _on_segment(cx, cy, dx, dy, ax, ay)
    hit |= (d2 == 0) & _on_segment(cx, cy, dx, dy, bx, by)
    hit |= (d3 == 0) & _on_segment(ax, ay, bx, by, cx, cy)
    hit |= (d4 == 0) & _on_segment(ax, ay, bx, by, dx, dy)
    out = np.zeros(near.shape, dtype=bool)
    out[ring[hit], pair[hit]] = True
    return out


def _segments(rings: Sequence[np.ndarray], m: int) -> tuple[np.ndarray, np.ndarray]:
    seg = np.full((len(rings), m, 4), np.nan)
    n_seg = np.empty(len(rings), dtype=np.intp)
    for k, ring in enumerate(rings):
        n = len(ring)
        seg[k, :n, :2] = ring
        seg[k, :n, 2:] = np.roll(ring, -1, axis=0)
        n_seg[k] = n
    return seg, n_seg


def find_self_intersections(coords: Any, max_pairs: int = 1 << 21) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, of non-adjacent edges of a closed ring that touch or cross.

    Edge i joins vertex i to vertex i + 1 (cyclic) after consecutive duplicate
    vertices are dropped. O(n²) in blocks of `max_pairs` edge pairs.

    Examples
    --------
    >>> find_self_intersections([[0, 0], [2, 2], [2, 0], [0, 2]])  # a bow-tie
    [(0, 2)]
    """
    ring = _dedupe(as_xy(coords, "coords", 3))
    n = len(ring)
    if n < 4:
        return []
    seg, n_seg = _segments([ring], n)
    step = max(1, max_pairs // n)
    pairs: list[tuple[int, int]] = []
    for start in range(0, n, step):
        i, j = np.nonzero(np.triu(np.ones((min(step, n - start), n), dtype=bool), k=start + 2))
        i += start
        hits = _crossing_pairs(seg, i, j, n_seg)[0]
        pairs.extend(zip(i[hits].tolist(), j[hits].tolist(), strict=True))
    return pairs


def is_simple_polygon(coords: Any) -> bool:
    """True if the closed ring has no self-touching or crossing edges."""
    return not find_self_intersections(coords)


def simple_polygons(rings: Sequence[Any], max_vertices: int = 20_000) -> np.ndarray:
    """Vectorised :func:`is_simple_polygon` over many rings.

    Rings of similar size are checked together in one (B, m, m) batch, so
    10,000 rings of ~32 vertices take a fraction of a second.

    Parameters
    ----------
    rings : sequence of (N, 2) arrays
        Closed rings (not repeating the first vertex), level-0 px.
    max_vertices : int
        Rings with more vertices are not checked and reported simple.

    Returns
    -------
    (len(rings),) ndarray of bool
    """
    deduped = [_dedupe(r) for r in rings]
    result = np.ones(len(deduped), dtype=bool)
    sizes = np.array([len(r) for r in deduped], dtype=np.intp)
    buckets = np.maximum(8, 2 ** np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.intp))
    for m in np.unique(buckets):
        members = np.nonzero((buckets == m) & (sizes >= 4) & (sizes <= max_vertices))[0]
        if members.size == 0:
            continue
        if m > 512:
            for k in members:
                result[k] = is_simple_polygon(deduped[k])
            continue
        i, j = np.triu_indices(int(m), k=2)
        per_batch = max(1, (1 << 16) // len(i))
        for s in range(0, members.size, per_batch):
            chunk = members[s : s + per_batch]
            seg, n_seg = _segments([deduped[k] for k in chunk], int(m))
            result[chunk] = ~_crossing_pairs(seg, i, j, n_seg).any(axis=1)
    return result
