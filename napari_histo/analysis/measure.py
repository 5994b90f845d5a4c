"""Slide measurements: tissue and tumor areas, tumor burden, lesions, nuclei density.

Plain functions over arrays with explicit units (µm per px in, mm and mm² out).

Conventions
-----------
Grid
    Every array is a grid whose pixel ``(i, j)`` covers level-0
    ``[ox + j*d, ox + (j+1)*d) x [oy + i*d, oy + (i+1)*d)``, ``(ox, oy) = origin_l0``,
    ``d = downsample``; ``mpp_um`` is µm per grid pixel.
Tumor
    ``probability >= threshold`` inside tissue, ``threshold`` in (0, 1].
Lesions
    8-connected tumor components. Their longest diameter is the maximum Feret
    diameter of the union of their pixel squares (between pixel *corners*): a
    ``h x w`` px rectangle measures ``sqrt(h² + w²)`` px, one pixel its diagonal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import cdist, pdist
from skimage.measure import find_contours
from skimage.morphology import convex_hull_image

from napari_histo.analysis.results import (
    ITC_MAX_MM,
    MICRO_MAX_MM,
    MIN_LESION_UM2,
    Lesion,
    SlideMeasurements,
)

__all__ = [
    "ITC_MAX_MM",
    "MICRO_MAX_MM",
    "MIN_LESION_UM2",
    "Lesion",
    "SlideMeasurements",
    "area_mm2",
    "find_lesions",
    "measure_arrays",
    "nuclei_counts",
    "size_class",
    "slide_size_class",
    "tumor_bed",
    "tumor_burden",
]

# -- input checks --------------------------------------------------------------
def _check_number(
    name: str, value: object, *, low: float = 0.0, high: float = math.inf, closed: str = "neither"
) -> float:
    """`value` as a finite float in the interval (`low`, `high`); `closed` adds an end.

    `closed` is "neither", "low", "high" or "both".
    """
    left = "[" if closed in ("low", "both") else "("
    right = "]" if closed in ("high", "both") else ")"
    if high == math.inf:
        wanted = f">= {low:g}" if left == "[" else f"> {low:g}"
    else:
        wanted = f"in {left}{low:g}, {high:g}{right}"
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )
    if ok:
        number = float(value)
        ok = (
            math.isfinite(number)
            and (number >= low if left == "[" else number > low)
            and (number <= high if right == "]" else number < high)
        )
    if not ok:
        raise ValueError(f"`{name}` must be a finite number {wanted}, got {value!r}")
    return number


def _check_grid(name: str, value: object, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """`value` as a non-empty 2-D numeric (or bool) array, of `shape` when given."""
    array = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if array.dtype.kind not in "biuf":
        raise ValueError(f"`{name}` must be a numeric or bool array, got dtype {array.dtype}")
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 2-D array, got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"`{name}` shape {array.shape} must equal the grid's {shape}")
    return array


def _check_mask(name: str, value: object, shape: tuple[int, ...] | None = None) -> np.ndarray:
    return _check_grid(name, value, shape).astype(bool, copy=False)


def _check_origin(origin_l0: object) -> tuple[float, float]:
    try:
        ox, oy = origin_l0  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"`origin_l0` must be a level-0 (x, y) pair, got {origin_l0!r}") from None
    return (
        _check_number("origin_l0[0]", ox, low=-math.inf),
        _check_number("origin_l0[1]", oy, low=-math.inf),
    )


def _check_frame(
    mpp_um: object, origin_l0: object, downsample: object
) -> tuple[float, tuple[float, float], float]:
    return (
        _check_number("mpp_um", mpp_um),
        _check_origin(origin_l0),
        _check_number("downsample", downsample),
    )


def check_threshold(threshold: object) -> float:
    return _check_number("threshold", threshold, low=0.0, high=1.0, closed="high")


# -- areas, tumor bed, burden ------------------------------------------------------
def area_mm2(mask: np.ndarray, mpp_um: float) -> float:
    """Area of the true pixels of a mask in mm².

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        Pixels to measure (any numeric array: non-zero is true).
    mpp_um : float
        µm per pixel of `mask`, > 0.

    Returns
    -------
    float
        ``count * mpp_um**2 / 1e6``.

    Examples
    --------
    >>> area_mm2(np.ones((10, 20), bool), 5.0)
    0.005
    """
    mask = _check_mask("mask", mask)
    mpp_um = _check_number("mpp_um", mpp_um)
    return _area(mask, mpp_um)


def _area(mask: np.ndarray, mpp_um: float) -> float:
    return int(np.count_nonzero(mask)) * mpp_um**2 / 1e6


def tumor_bed(tumor: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Tumor bed: convex hull of viable tumor (tumor ∩ tissue), intersected with tissue.

    The hull is :func:`skimage.morphology.convex_hull_image` of the tumor
    pixels (hull of their corners; a pixel is in it when its centre is),
    computed on the tumor's bounding box only.

    Parameters
    ----------
    tumor, tissue : ndarray of bool, shape (H, W)
        Tumor and tissue masks on the same grid.

    Returns
    -------
    ndarray of bool, shape (H, W)
        The bed; all false when there is no tumor in tissue.
    """
    tissue = _check_mask("tissue", tissue)
    tumor = _check_mask("tumor", tumor, tissue.shape)
    return _bed(tumor & tissue, tissue)


def _bed(viable: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    bed = np.zeros(viable.shape, bool)
    rows = np.flatnonzero(viable.any(axis=1))
    if rows.size == 0:
        return bed
    cols = np.flatnonzero(viable.any(axis=0))
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    bed[box] = convex_hull_image(viable[box]) & tissue[box]
    return bed


def tumor_burden(tumor: np.ndarray, tissue: np.ndarray) -> float:
    """Viable tumor area / tumor bed area (see :func:`tumor_bed`).

    Parameters
    ----------
    tumor, tissue : ndarray of bool, shape (H, W)
        Tumor and tissue masks on the same grid.

    Returns
    -------
    float
        In (0, 1]; NaN when there is no tumor in tissue.

    Examples
    --------
    >>> tumor = np.zeros((10, 40), bool)
    >>> tumor[:, :10] = tumor[:, 30:] = True
    >>> tumor_burden(tumor, np.ones_like(tumor))
    0.5
    """
    tissue = _check_mask("tissue", tissue)
    tumor = _check_mask("tumor", tumor, tissue.shape)
    viable = tumor & tissue
    return _burden(int(np.count_nonzero(viable)), int(np.count_nonzero(_bed(viable, tissue))))


def _burden(viable_px: int, bed_px: int) -> float:
    return viable_px / bed_px if bed_px else math.nan


# -- size classes ------------------------------------------------------------------
def size_class(longest_diameter_mm: float) -> str:
    """CAMELYON size class of a lesion by its longest diameter.

    Parameters
    ----------
    longest_diameter_mm : float
        Longest diameter in mm, >= 0.

    Returns
    -------
    str
        "ITC" up to :data:`ITC_MAX_MM` (0.2 mm) inclusive, "micro" up to
        :data:`MICRO_MAX_MM` (2 mm) inclusive, "macro" above.

    Examples
    --------
    >>> size_class(0.2), size_class(2.0), size_class(2.01)
    ('ITC', 'micro', 'macro')
    """
    value = _check_number("longest_diameter_mm", longest_diameter_mm, closed="low")
    return _size_class(value)


def _size_class(value: float) -> str:
    if value <= ITC_MAX_MM:
        return "ITC"
    return "micro" if value <= MICRO_MAX_MM else "macro"


def slide_size_class(lesions: Sequence[Lesion]) -> str:
    """Slide class: "negative" without lesions, else the class of the longest diameter.

    Parameters
    ----------
    lesions : sequence of Lesion

    Returns
    -------
    str
        "negative", "ITC", "micro" or "macro".
    """
    if not lesions:
        return "negative"
    return _size_class(max(lesion.longest_diameter_mm for lesion in lesions))


# -- lesions -----------------------------------------------------------------------
#: Components with at most this many candidate corners per side have their
#: distances computed in batches, the others one by one.
_BATCH_POINTS = 64
#: Elements of one batch of pairwise squared distances.
_BATCH_ELEMENTS = 1 << 22
#: Above this many candidate corners, a component's are reduced to their convex hull.
_HULL_FROM = 512


def _records(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Where `values` is strictly below every earlier value of its group.

    Groups are runs of consecutive elements, each starting where `first` is True.
    """
    span = float(values.max() - values.min()) + 1.0 if values.size else 1.0
    # Each group shifted below all earlier ones: it never sees their minimum.
    shifted = values - np.cumsum(first) * span
    before = np.concatenate([[np.inf], np.minimum.accumulate(shifted)[:-1]])
    return first | (shifted < before)


def _feret_px(labels: np.ndarray, count: int) -> np.ndarray:
    """Largest distance between two pixel corners of each labelled component (px).

    Pixel ``(i, j)`` has corners ``(x, y)`` in ``{j, j + 1} x {i, i + 1}``. The
    farthest pair can be taken with one corner on the left side of the
    leftmost pixel of its row and the other on the right side of the rightmost
    pixel of its row (moving either outwards along its row never shortens the
    pair). A left side whose x is not a strict minimum from the top or from
    the bottom lies within the segment of two that are, so it cannot be
    farther; likewise on the right. The remaining left x right pairs are
    compared in batches, and one by one for the largest components.

    Returns
    -------
    ndarray of float, shape (count,)
        Index ``k`` is label ``k + 1``.
    """
    height, width = labels.shape
    padded = np.zeros((height, width + 2), labels.dtype)
    padded[:, 1:-1] = labels
    inner = padded[:, 1:-1]
    rs, cs = np.nonzero((inner != 0) & (inner != padded[:, :-2]))
    re, ce = np.nonzero((inner != 0) & (inner != padded[:, 2:]))
    # Per (label, row), in row order: leftmost run start, rightmost run end.
    key_s = labels[rs, cs].astype(np.int64) * height + rs
    key_e = labels[re, ce].astype(np.int64) * height + re
    order_s, order_e = np.argsort(key_s, kind="stable"), np.argsort(key_e, kind="stable")
    keys, first_s = np.unique(key_s[order_s], return_index=True)
    _, first_e = np.unique(key_e[order_e], return_index=True)
    left = np.minimum.reduceat(cs[order_s], first_s).astype(np.float64)
    right = np.maximum.reduceat(ce[order_e], first_e).astype(np.float64) + 1.0
    row = (keys % height).astype(np.float64)
    group = keys // height - 1  # component index, ascending
    first = np.concatenate([[True], group[1:] != group[:-1]])
    last = np.concatenate([group[1:] != group[:-1], [True]])
    rev = slice(None, None, -1)
    keep_left = _records(left, first) | _records(left[rev], last[rev])[rev]
    keep_right = _records(-right, first) | _records(-right[rev], last[rev])[rev]

    def sides(x: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Corners (n, 2) of the kept rows, grouped by component; start and size per component."""
        y = row[keep]
        xs = np.repeat(x[keep], 2)
        ys = np.stack([y, y + 1], axis=1).ravel()
        sizes = np.bincount(np.repeat(group[keep], 2), minlength=count)
        return np.column_stack([xs, ys]), np.cumsum(sizes) - sizes, sizes

    lpts, lstart, lsize = sides(left, keep_left)
    rpts, rstart, rsize = sides(right, keep_right)
    size = np.maximum(lsize, rsize)
    feret = np.zeros(count, np.float64)
    done, k = 0, 2
    while k <= _BATCH_POINTS:
        members = np.flatnonzero((size > done) & (size <= k))
        chunk = max(1, _BATCH_ELEMENTS // (k * k))
        steps = np.arange(k)
        for lo in range(0, len(members), chunk):
            ids = members[lo : lo + chunk]
            # Short sides repeat their last corner.
            a = lpts[lstart[ids, None] + np.minimum(steps, lsize[ids, None] - 1)]
            b = rpts[rstart[ids, None] + np.minimum(steps, rsize[ids, None] - 1)]
            d2 = ((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(axis=-1)
            feret[ids] = np.sqrt(d2.reshape(len(ids), -1).max(axis=1))
        done, k = k, 2 * k
    for index in np.flatnonzero(size > done):
        a = lpts[lstart[index] : lstart[index] + lsize[index]]
        b = rpts[rstart[index] : rstart[index] + rsize[index]]
        if len(a) + len(b) > _HULL_FROM:
            both = np.concatenate([a, b])
            hull = both[ConvexHull(both).vertices]
            feret[index] = np.sqrt(pdist(hull, "sqeuclidean").max())
        else:
            feret[index] = np.sqrt(cdist(a, b, "sqeuclidean").max())
    return feret


def _enclosed(contour: np.ndarray) -> float:
    """Twice the area a closed (row, col) contour encloses."""
    y, x = contour[:, 0], contour[:, 1]
    return abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _outline_px(component: np.ndarray) -> np.ndarray:
    """Outer boundary (row, col) of a bool component, pixel centres at integers.

    The 0.5 iso-line with 8-connected foreground: it runs along pixel edges,
    cutting each convex pixel corner at 45°. Returned open (last != first).
    """
    padded = np.zeros((component.shape[0] + 2, component.shape[1] + 2), np.float32)
    padded[1:-1, 1:-1] = component
    contours = find_contours(padded, 0.5, fully_connected="high")
    outer = contours[0] if len(contours) == 1 else max(contours, key=_enclosed)
    if len(outer) > 1 and np.array_equal(outer[0], outer[-1]):
        outer = outer[:-1]
    return outer - 1.0


def find_lesions(
    probability: np.ndarray,
    mpp_um: float,
    *,
    threshold: float = 0.5,
    epistemic: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    origin_l0: tuple[float, float] = (0, 0),
    downsample: float = 1.0,
    min_area_um2: float = 0.0,
) -> tuple[Lesion, ...]:
    """Lesions: 8-connected components of tumor probability >= `threshold`.

    Grid convention: pixel ``(i, j)`` covers level-0 ``[ox + j*d, ox + (j+1)*d)
    x [oy + i*d, oy + (i+1)*d)`` with ``(ox, oy) = origin_l0``, ``d = downsample``.

    The longest diameter is the maximum Feret diameter of the union of the
    lesion's pixel squares: the largest distance between two pixel *corners*.
    A ``h x w`` px rectangle measures ``sqrt(h² + w²) * mpp_um``, a single
    pixel its diagonal ``sqrt(2) * mpp_um``. (skimage's ``feret_diameter_max``
    measures on a contour through pixel-edge midpoints, which is neither
    corner-to-corner nor centre-to-centre, so it is not used.)

    Parameters
    ----------
    probability : ndarray of float, shape (H, W)
        Tumor probability in [0, 1].
    mpp_um : float
        µm per grid pixel, > 0.
    threshold : float
        Tumor where ``probability >= threshold``, in (0, 1].
    epistemic : ndarray of float, shape (H, W), optional
        Epistemic uncertainty; its mean over each lesion is reported.
    tissue : ndarray of bool, shape (H, W), optional
        Only tumor inside tissue counts.
    origin_l0 : (x, y)
        Level-0 position of grid pixel (0, 0)'s top-left corner.
    downsample : float
        Level-0 px per grid px, > 0.
    min_area_um2 : float
        Components smaller than this (µm²) are dropped, >= 0.

    Returns
    -------
    tuple of Lesion
        Sorted by decreasing area (ties: raster order of their first pixel),
        labels 1..n. ``bbox_l0`` is the smallest integer level-0 box holding the
        lesion's pixels; ``outline_l0`` the outer boundary as level-0 ``(x, y)``
        on the pixel edges, corners cut at 45° (``find_contours`` at 0.5).

    Examples
    --------
    >>> p = np.zeros((30, 40), np.float32)
    >>> p[5:15, 5:25] = 0.9
    >>> (lesion,) = find_lesions(p, 5.0)
    >>> lesion.area_mm2, round(lesion.longest_diameter_mm, 4), lesion.bbox_l0
    (0.005, 0.1118, (5, 5, 20, 10))
    """
    probability = _check_grid("probability", probability)
    mpp_um, origin, downsample = _check_frame(mpp_um, origin_l0, downsample)
    threshold = check_threshold(threshold)
    min_area_um2 = _check_number("min_area_um2", min_area_um2, closed="low")
    if epistemic is not None:
        epistemic = _check_grid("epistemic", epistemic, probability.shape)
    if tissue is not None:
        tissue = _check_mask("tissue", tissue, probability.shape)
    tumor = probability >= threshold
    if tissue is not None:
        tumor &= tissue
    return _lesions(tumor, probability, epistemic, mpp_um, origin, downsample, min_area_um2)


def _large_components(mask: np.ndarray, min_px: float) -> np.ndarray:
    """`mask` without its 8-connected components of fewer than `min_px` pixels."""
    if min_px <= 1:
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return mask
    keep = np.bincount(labels.ravel(), minlength=count + 1) >= min_px
    keep[0] = False
    return keep[labels]


def _sections_bed(viable: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Tumor bed per tissue section: hull of its tumor, within that section only.

    Two sections on one glass (or a section and a far-off fragment) do not share
    one hull spanning the glass and the tissue between them.
    """
    sections, count = ndimage.label(tissue, structure=np.ones((3, 3), bool))
    bed = np.zeros_like(viable)
    if count == 0 or not viable.any():
        return bed
    with_tumor = np.unique(sections[viable])
    boxes = ndimage.find_objects(sections)
    for label in with_tumor[with_tumor > 0]:
        box = boxes[label - 1]
        section = sections[box] == label
        bed[box] |= _bed(viable[box] & section, section)
    return bed


def _lesions(
    tumor: np.ndarray,
    probability: np.ndarray,
    epistemic: np.ndarray | None,
    mpp_um: float,
    origin: tuple[float, float],
    downsample: float,
    min_area_um2: float,
) -> tuple[Lesion, ...]:
    labels, count = ndimage.label(tumor, structure=np.ones((3, 3), bool))
    if count == 0:
        return ()
    flat = labels.ravel()
    pixels = np.bincount(flat, minlength=count + 1)[1:]
    prob_sum = np.bincount(flat, weights=probability.ravel(), minlength=count + 1)[1:]
    epi_sum = (
        None
        if epistemic is None
        else np.bincount(flat, weights=epistemic.ravel(), minlength=count + 1)[1:]
    )
    keep = np.flatnonzero(pixels * mpp_um**2 >= min_area_um2)
    order = keep[np.argsort(-pixels[keep], kind="stable")]
    slices = ndimage.find_objects(labels)
    feret_px = _feret_px(labels, count)
    ox, oy = origin
    lesions = []
    for rank, index in enumerate(order, start=1):
        rows, cols = slices[index]
        component = labels[rows, cols] == index + 1
        diameter_mm = float(feret_px[index]) * mpp_um / 1000.0
        outline = _outline_px(component)
        x0 = math.floor(ox + cols.start * downsample + 1e-9)
        y0 = math.floor(oy + rows.start * downsample + 1e-9)
        x1 = math.ceil(ox + cols.stop * downsample - 1e-9)
        y1 = math.ceil(oy + rows.stop * downsample - 1e-9)
        outline_l0 = np.column_stack(
            [
                ox + (outline[:, 1] + cols.start + 0.5) * downsample,
                oy + (outline[:, 0] + rows.start + 0.5) * downsample,
            ]
        )
        n = int(pixels[index])
        lesions.append(
            Lesion(
                label=rank,
                area_mm2=n * mpp_um**2 / 1e6,
                longest_diameter_mm=diameter_mm,
                mean_probability=float(prob_sum[index] / n),
                mean_epistemic=None if epi_sum is None else float(epi_sum[index] / n),
                size_class=_size_class(diameter_mm),
                bbox_l0=(x0, y0, x1 - x0, y1 - y0),
                outline_l0=outline_l0,
            )
        )
    return tuple(lesions)


# -- nuclei ------------------------------------------------------------------------
def nuclei_counts(
    centroids_l0: np.ndarray,
    tumor: np.ndarray,
    tissue: np.ndarray,
    *,
    mpp_um: float,
    origin_l0: tuple[float, float] = (0, 0),
    downsample: float = 1.0,
) -> tuple[int, int, float, float]:
    """Nuclei in tumor and in non-tumor tissue, and their densities.

    A centroid at level-0 ``(x, y)`` falls in grid pixel ``(floor((y - oy) / d),
    floor((x - ox) / d))`` (the grid convention of :func:`find_lesions`).
    Centroids outside the grid or off tissue are not counted.

    Parameters
    ----------
    centroids_l0 : ndarray of float, shape (n, 2)
        Level-0 ``(x, y)`` of nucleus centroids (a level-0 pixel x covers [x, x + 1)).
    tumor, tissue : ndarray of bool, shape (H, W)
        Tumor and tissue masks on the grid; tumor counts only inside tissue.
    mpp_um : float
        µm per grid pixel, > 0.
    origin_l0 : (x, y)
        Level-0 position of grid pixel (0, 0)'s top-left corner.
    downsample : float
        Level-0 px per grid px, > 0.

    Returns
    -------
    n_tumor, n_non_tumor : int
        Nuclei in tumor ∩ tissue and in tissue without tumor.
    density_tumor, density_non_tumor : float
        Nuclei per mm² of those areas; NaN where the area is 0.
    """
    tissue = _check_mask("tissue", tissue)
    tumor = _check_mask("tumor", tumor, tissue.shape)
    mpp_um, origin, downsample = _check_frame(mpp_um, origin_l0, downsample)
    centroids = _check_centroids(centroids_l0)
    return _nuclei(centroids, tumor & tissue, tissue, mpp_um, origin, downsample)


def _check_centroids(centroids_l0: object) -> np.ndarray:
    array = np.asarray(centroids_l0)
    if array.dtype.kind not in "iuf" or array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(
            "`centroids_l0` must be a numeric (n, 2) array of level-0 (x, y), "
            f"got dtype {array.dtype} shape {array.shape}"
        )
    return array.astype(np.float64, copy=False)


def _nuclei(
    centroids: np.ndarray,
    viable: np.ndarray,
    tissue: np.ndarray,
    mpp_um: float,
    origin: tuple[float, float],
    downsample: float,
) -> tuple[int, int, float, float]:
    cols = np.floor((centroids[:, 0] - origin[0]) / downsample)
    rows = np.floor((centroids[:, 1] - origin[1]) / downsample)
    inside = (rows >= 0) & (rows < tissue.shape[0]) & (cols >= 0) & (cols < tissue.shape[1])
    r, c = rows[inside].astype(np.intp), cols[inside].astype(np.intp)
    in_tissue = tissue[r, c]
    in_tumor = viable[r, c] & in_tissue
    n_tumor = int(np.count_nonzero(in_tumor))
    n_other = int(np.count_nonzero(in_tissue & ~in_tumor))
    tumor_mm2 = _area(viable, mpp_um)
    other_mm2 = _area(tissue & ~viable, mpp_um)
    return (
        n_tumor,
        n_other,
        n_tumor / tumor_mm2 if tumor_mm2 else math.nan,
        n_other / other_mm2 if other_mm2 else math.nan,
    )


# -- whole slide -------------------------------------------------------------------
def measure_arrays(
    slide: str,
    probability: np.ndarray,
    tissue: np.ndarray,
    mpp_um: float,
    *,
    threshold: float = 0.5,
    epistemic: np.ndarray | None = None,
    origin_l0: tuple[float, float] = (0, 0),
    downsample: float = 1.0,
    nuclei_centroids_l0: np.ndarray | None = None,
    min_area_um2: float = MIN_LESION_UM2,
    nuclei_region: np.ndarray | None = None,
) -> SlideMeasurements:
    """Every measurement of one slide from arrays on one grid.

    Tumor is ``probability >= threshold`` inside tissue; the tumor bed and
    burden are those of :func:`tumor_bed` / :func:`tumor_burden`, the lesions
    those of :func:`find_lesions`, the nuclei those of :func:`nuclei_counts`.

    Parameters
    ----------
    slide : str
        Slide name recorded in the result.
    probability : ndarray of float, shape (H, W)
        Tumor probability in [0, 1].
    tissue : ndarray of bool, shape (H, W)
        Tissue mask on the same grid.
    mpp_um : float
        µm per grid pixel, > 0.
    threshold : float
        Tumor probability threshold, in (0, 1].
    epistemic : ndarray of float, shape (H, W), optional
        Epistemic uncertainty (mean per lesion).
    origin_l0 : (x, y)
        Level-0 position of grid pixel (0, 0)'s top-left corner.
    downsample : float
        Level-0 px per grid px, > 0.
    nuclei_centroids_l0 : ndarray of float, shape (n, 2), optional
        Level-0 ``(x, y)`` nucleus centroids; nuclei fields are None without.
    min_area_um2 : float
        Smallest lesion listed, µm² (>= 0); tumor areas count every tumor pixel.
    nuclei_region : ndarray of bool, shape (H, W), optional
        Grid pixels where nuclei were segmented (a nuclei run over a region);
        densities divide by the tumor and non-tumor area inside it. Default: all.

    Returns
    -------
    SlideMeasurements
    """
    if not isinstance(slide, str):
        raise ValueError(f"`slide` must be a str, got {type(slide).__name__}")
    probability = _check_grid("probability", probability)
    tissue = _check_mask("tissue", tissue, probability.shape)
    mpp_um, origin, downsample = _check_frame(mpp_um, origin_l0, downsample)
    threshold = check_threshold(threshold)
    if epistemic is not None:
        epistemic = _check_grid("epistemic", epistemic, probability.shape)
    centroids = None if nuclei_centroids_l0 is None else _check_centroids(nuclei_centroids_l0)

    min_area = _check_number("min_area_um2", min_area_um2, closed="low")
    if nuclei_region is not None:
        nuclei_region = _check_mask("nuclei_region", nuclei_region, probability.shape)
    # Tumor: components of at least min_area (smaller specks are the map's noise, and
    # one far-off speck would stretch the tumor bed over unrelated tissue).
    viable = _large_components((probability >= threshold) & tissue, min_area / mpp_um**2)
    bed = _sections_bed(viable, tissue)
    viable_px, bed_px = int(np.count_nonzero(viable)), int(np.count_nonzero(bed))
    lesions = _lesions(viable, probability, epistemic, mpp_um, origin, downsample, min_area)
    nuclei: tuple[Any, ...] = (None, None, None, None)
    if centroids is not None:
        region = np.ones_like(tissue) if nuclei_region is None else nuclei_region
        nuclei = _nuclei(centroids, viable & region, tissue & region, mpp_um, origin, downsample)
    return SlideMeasurements(
        slide=slide,
        mpp_um=mpp_um,
        threshold=threshold,
        tissue_area_mm2=_area(tissue, mpp_um),
        tumor_area_mm2=viable_px * mpp_um**2 / 1e6,
        tumor_bed_area_mm2=bed_px * mpp_um**2 / 1e6,
        tumor_burden=_burden(viable_px, bed_px),
        lesions=lesions,
        size_class=slide_size_class(lesions),
        nuclei_tumor=nuclei[0],
        nuclei_non_tumor=nuclei[1],
        nuclei_density_tumor=nuclei[2],
        nuclei_density_non_tumor=nuclei[3],
    )
