"""What to annotate next: high-scoring regions spread over the slide.

Greedy non-maximum suppression: walk the ranking from the top and keep a
region unless its centre lies within `min_distance_um` of a region already
kept, until `count` are kept. The best region is always first; the others
are the best that are not next to it, so one uncertain spot does not fill
the whole list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from napari_histo.review.regions import Region

__all__ = ["suggest_regions"]


def suggest_regions(
    regions: Sequence[Region],
    count: int,
    min_distance_um: float,
    mpp: float,
) -> list[Region]:
    """Up to `count` regions, best score first, no two centres closer than `min_distance_um`.

    Parameters
    ----------
    regions : sequence of Region
        Candidates, e.g. :func:`~napari_histo.review.regions.rank_regions` (any order).
    count : int
        How many to pick, >= 1.
    min_distance_um : float
        Smallest distance between two picked centres, µm (>= 0; 0 keeps the top `count`).
    mpp : float
        µm per level-0 px of the slide (region rectangles are level-0 px).

    Returns
    -------
    list of Region
        Fewer than `count` when the candidates run out.

    Examples
    --------
    >>> r = [Region((x, 0, 10, 10), s, 100.0, 0.5) for x, s in ((0, 3.0), (5, 2.0), (100, 1.0))]
    >>> [s.rect_l0[0] for s in suggest_regions(r, 2, min_distance_um=20, mpp=1.0)]
    [0, 100]
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`count` must be an int >= 1, got {count!r}")
    for name, value in (("min_distance_um", min_distance_um), ("mpp", mpp)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if min_distance_um < 0:
        raise ValueError(f"`min_distance_um` must be >= 0, got {min_distance_um!r}")
    if mpp <= 0:
        raise ValueError(f"`mpp` must be > 0 µm/px, got {mpp!r}")
    if not regions:
        return []
    order = np.argsort([-r.score for r in regions], kind="stable")
    centres = np.array([regions[i].center_l0 for i in order], dtype=np.float64) * mpp
    limit2 = float(min_distance_um) ** 2
    chosen: list[int] = []
    picked = np.empty((0, 2))
    for k in range(len(order)):
        if len(picked) and (((picked - centres[k]) ** 2).sum(axis=1) < limit2).any():
            continue
        chosen.append(int(order[k]))
        picked = np.vstack([picked, centres[k]])
        if len(chosen) == count:
            break
    return [regions[i] for i in chosen]
