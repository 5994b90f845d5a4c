"""Regions of a result grid ranked by a review score (vectorised block reductions).

Candidate regions are the squares of a regular grid laid over a result grid
(one pyramid level of a run). Every pixel gets a score in [0, 1] (see
:data:`SCORES`); a region's score is the *integral* of that pixel score over
its valid area, ``mean pixel score × valid area in µm²``, so a large uncertain
region outranks a small one and a region half on glass counts half. Ranking a
grid is a handful of reshapes and sums: no Python loop over regions or pixels.

Pixel scores (``p`` tumor probability, ``v`` epistemic variance):

``"uncertainty"`` (the default)
    ``H(p) = -p log2 p - (1 - p) log2 (1 - p)``: the total predictive
    uncertainty of the ensemble, in bits (1 at ``p = 0.5``). It is the sum of
    the expected entropy of the members (aleatoric) and their mutual
    information (epistemic), so it finds tissue the members are unsure of
    together as well as tissue they disagree on; measured on planted failures
    (``bench review``), the members of the real-tissue ensemble often agree
    on what they have never seen, and the epistemic part alone misses it.
``"epistemic"``
    ``4 v`` (the variance of values in [0, 1] is at most 1/4).
``"boundary"``
    ``1 - 2 |p - 1/2|``: 1 at ``p = 0.5``, 0 at 0 or 1.
``"disagreement"``
    ``v / (p (1 - p))``: the share of the largest variance members with this
    mean could have; 1 when members answer 0 and 1, whatever the mean (unlike
    ``"epistemic"``, which favours means near 0.5).
``"annotations"``
    ``|p - t|`` on pixels annotated tumor (t = 1) or non-tumor (t = 0); pixels
    without a label do not count (the valid area is the labelled area).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from napari_histo.io.store import ResultGeometry

__all__ = [
    "SCORES",
    "UNLABELLED",
    "Region",
    "RegionGrid",
    "binary_entropy_bits",
    "choose_level",
    "level_geometry",
    "pixel_scores",
    "rank_regions",
]

#: Names of the review scores, in the order the CLI lists them.
SCORES = ("uncertainty", "epistemic", "boundary", "disagreement", "annotations")
#: Label of pixels without an annotation (``labels`` arrays: 0 non-tumor, 1 tumor).
UNLABELLED = 255


@dataclass(frozen=True)
class Region:
    """One candidate region of a review ranking.

    Attributes
    ----------
    rect_l0 : (int, int, int, int)
        ``(x, y, width, height)`` in level-0 slide px.
    score : float
        Mean pixel score × valid area, µm² (0 when nothing in it is valid).
    area_um2 : float
        Valid area of the region, µm² (tissue, or labelled pixels for ``"annotations"``).
    mean : float
        Mean pixel score over the valid area, in [0, 1].
    """

    rect_l0: tuple[int, int, int, int]
    score: float
    area_um2: float
    mean: float

    @property
    def center_l0(self) -> tuple[float, float]:
        """Level-0 ``(x, y)`` of the region's centre."""
        x, y, w, h = self.rect_l0
        return (x + w / 2, y + h / 2)

    @property
    def key(self) -> str:
        """``"x,y,w,h"``: the region's identity in saved review state."""
        return ",".join(str(v) for v in self.rect_l0)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready ``{"rect_l0", "score", "area_um2", "mean"}``."""
        return {
            "rect_l0": list(self.rect_l0),
            "score": float(self.score),
            "area_um2": float(self.area_um2),
            "mean": float(self.mean),
        }


@dataclass(frozen=True)
class RegionGrid:
    """Where candidate squares sit: a result grid and a block side on it.

    Attributes
    ----------
    geometry : ResultGeometry
        Grid of the arrays being ranked (e.g. :func:`level_geometry` of a run).
    block_px : int
        Side of a candidate square in grid px (edge squares are clipped).
    """

    geometry: ResultGeometry
    block_px: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of candidate squares."""
        h, w = self.geometry.shape
        return (-(-h // self.block_px), -(-w // self.block_px))

    def rects_l0(self) -> np.ndarray:
        """int64 ``(rows * cols, 4)``: level-0 ``(x, y, w, h)`` of every square, row-major."""
        h, w = self.geometry.shape
        d = self.geometry.downsample
        ox, oy = self.geometry.origin_l0
        rows, cols = self.shape
        y0 = np.arange(rows) * self.block_px
        x0 = np.arange(cols) * self.block_px
        y1 = np.minimum(y0 + self.block_px, h)
        x1 = np.minimum(x0 + self.block_px, w)
        ly0, ly1 = np.floor(oy + y0 * d), np.floor(oy + y1 * d)
        lx0, lx1 = np.floor(ox + x0 * d), np.floor(ox + x1 * d)
        out = np.empty((rows, cols, 4), np.int64)
        out[..., 0] = lx0[None, :]
        out[..., 1] = ly0[:, None]
        out[..., 2] = (lx1 - lx0)[None, :]
        out[..., 3] = (ly1 - ly0)[:, None]
        return out.reshape(-1, 4)


def level_geometry(geometry: ResultGeometry, level: int) -> ResultGeometry:
    """The grid of pyramid `level` (2**level coarser) of a run with `geometry`.

    Its shape is the stored level's (each level halves and floors the one before).
    """
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ValueError(f"`level` must be an int >= 0, got {level!r}")
    h, w = geometry.shape
    for _ in range(level):
        h, w = h // 2, w // 2
    f = 2**level
    return ResultGeometry(
        origin_l0=geometry.origin_l0,
        downsample=geometry.downsample * f,
        shape=(h, w),
        cell_px=max(1, geometry.cell_px // f),
        mpp=None if geometry.mpp is None else geometry.mpp * f,
    )


def _check_maps(
    probability: np.ndarray, epistemic: np.ndarray | None, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    p = np.asarray(probability, dtype=np.float32)
    if p.ndim != 2:
        raise ValueError(f"`probability` must be 2-D (rows, cols), got shape {p.shape}")
    out = [p]
    for name, value in (("epistemic", epistemic), ("labels", labels)):
        if value is None:
            out.append(None)
            continue
        value = np.asarray(value)
        if value.shape != p.shape:
            raise ValueError(
                f"`{name}` shape {value.shape} must equal `probability` shape {p.shape}"
            )
        out.append(value)
    return out[0], out[1], out[2]


def pixel_scores(
    score: str,
    probability: np.ndarray,
    epistemic: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel review score and which pixels count, for one of :data:`SCORES`.

    Parameters
    ----------
    score : {"uncertainty", "epistemic", "boundary", "disagreement", "annotations"}
        See the module docstring.
    probability : ndarray of float, (rows, cols)
        Tumor probability in [0, 1].
    epistemic : ndarray of float, (rows, cols), optional
        Variance over members; required by ``"epistemic"`` and ``"disagreement"``.
    labels : ndarray of uint8, (rows, cols), optional
        0 non-tumor, 1 tumor, :data:`UNLABELLED` elsewhere; required by ``"annotations"``.

    Returns
    -------
    values : ndarray of float32, (rows, cols)
        Pixel score in [0, 1] (0 where it does not count).
    counts : ndarray of bool, (rows, cols) or None
        Pixels that count for ``"annotations"`` (the labelled ones); None otherwise.
    """
    if score not in SCORES:
        raise ValueError(f"`score` must be one of {SCORES}, got {score!r}")
    p, v, t = _check_maps(probability, epistemic, labels)
    if score in ("epistemic", "disagreement") and v is None:
        raise ValueError(f"score {score!r} needs `epistemic`, got None")
    if score == "annotations" and t is None:
        raise ValueError("score 'annotations' needs `labels`, got None")
    if score == "uncertainty":
        return binary_entropy_bits(p), None
    if score == "epistemic":
        return np.clip(4.0 * v.astype(np.float32), 0, 1), None
    if score == "boundary":
        return 1.0 - 2.0 * np.abs(p - np.float32(0.5)), None
    if score == "disagreement":
        spread = p * (1 - p)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(spread > 1e-6, v.astype(np.float32) / spread, 0.0)
        return np.clip(share, 0, 1).astype(np.float32), None
    known = t != UNLABELLED
    return np.where(known, np.abs(p - (t == 1)), 0.0).astype(np.float32), known


def binary_entropy_bits(p: np.ndarray) -> np.ndarray:
    """Entropy of a Bernoulli(`p`) in bits, float32 in [0, 1] (0 log 0 = 0)."""
    q = np.clip(np.asarray(p, np.float32), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    return np.nan_to_num(h, nan=0.0).astype(np.float32)


def _block_sums(values: np.ndarray, block: int) -> np.ndarray:
    """Sums over `block`² squares (zero-padded at the bottom and right edges), float64."""
    h, w = values.shape
    rows, cols = -(-h // block), -(-w // block)
    padded = np.zeros((rows * block, cols * block), np.float64)
    padded[:h, :w] = values
    return padded.reshape(rows, block, cols, block).sum(axis=(1, 3))


def _check_top(top: object) -> int | None:
    if top is None:
        return None
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"`top` must be None or an int >= 1, got {top!r}")
    return top


def rank_regions(
    grid: RegionGrid,
    probability: np.ndarray,
    epistemic: np.ndarray | None = None,
    *,
    score: str = "uncertainty",
    labels: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    top: int | None = None,
) -> list[Region]:
    """Candidate squares of `grid` ranked by `score`, highest first.

    Parameters
    ----------
    grid : RegionGrid
        Geometry of the arrays (level-0 placement, µm/px) and the square side.
    probability, epistemic, labels
        Arrays on ``grid.geometry`` (see :func:`pixel_scores`).
    score : str
        One of :data:`SCORES`.
    valid : ndarray of bool, (rows, cols), optional
        Pixels that count (tissue). Default: pixels the run computed, i.e. where
        probability or epistemic is not exactly 0 (cells without tissue are never
        written and read 0 in a result store).
    top : int, optional
        Keep the best `top` regions; default all with a positive score.

    Returns
    -------
    list of Region
        Highest score first (ties: row-major order); regions of score 0 are left out.
    """
    if not isinstance(grid, RegionGrid):
        raise TypeError(f"`grid` must be a RegionGrid, got {type(grid).__name__}")
    top = _check_top(top)
    p, v, t = _check_maps(probability, epistemic, labels)
    if p.shape != tuple(grid.geometry.shape):
        raise ValueError(
            f"`probability` shape {p.shape} must equal the grid's shape {grid.geometry.shape}"
        )
    if grid.geometry.mpp is None:
        raise ValueError("`grid.geometry.mpp` must be a number of µm/px, got None")
    values, counts = pixel_scores(score, p, v, t)
    if valid is None:
        valid = (p != 0) | (v != 0) if v is not None else p != 0
    else:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != p.shape:
            raise ValueError(
                f"`valid` shape {valid.shape} must equal `probability` shape {p.shape}"
            )
    if counts is not None:
        valid = valid & counts
    pixel_um2 = float(grid.geometry.mpp) ** 2
    area = _block_sums(valid, grid.block_px).ravel() * pixel_um2
    total = _block_sums(np.where(valid, values, 0), grid.block_px).ravel() * pixel_um2
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(area > 0, total / np.maximum(area, 1e-30), 0.0)
    keep = np.flatnonzero(total > 0)
    order = keep[np.argsort(-total[keep], kind="stable")]
    if top is not None:
        order = order[:top]
    rects = grid.rects_l0()[order]
    return [
        Region(tuple(int(c) for c in rects[i]), float(total[j]), float(area[j]), float(mean[j]))
        for i, j in enumerate(order)
    ]


def choose_level(
    geometry: ResultGeometry, levels: int, region_um: float, min_block_px: int = 8
) -> tuple[int, int]:
    """Coarsest pyramid level where a `region_um` square is still >= `min_block_px` px.

    Returns
    -------
    (level, block_px)
        The level (< `levels`) and the square side in that level's px (>= 1).
    """
    if not (isinstance(region_um, int | float) and math.isfinite(region_um) and region_um > 0):
        raise ValueError(f"`region_um` must be a number of µm > 0, got {region_um!r}")
    if geometry.mpp is None:
        raise ValueError("the run's `mpp` must be a number of µm/px, got None")
    side0 = region_um / geometry.mpp
    level = 0
    while level + 1 < levels and side0 / 2 ** (level + 1) >= min_block_px:
        level += 1
    return level, max(1, round(side0 / 2**level))
