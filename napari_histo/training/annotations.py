"""Training labels and patches from annotations, and a spatial held-out split.

Annotations (level-0 ``(x, y)``, see :mod:`napari_histo.annotations.model`) become a
training-target mask at a chosen *granularity* (ccRCC granularity study):

========== ==============================================================
pixel      as drawn (polygons, pixel masks, boxes and ellipses as they are)
ellipse    each connected component of each class → its moment ellipse
bbox       each connected component of each class → its bounding box
========== ==============================================================

Targets: ``tumor`` → 1, ``non-tumor`` → 0, ``ignore`` and unlabelled → 255
(:data:`~napari_histo.annotations.model.IGNORE_INDEX`, excluded from the loss).
Classes are drawn in priority order non-tumor, tumor, ignore, so a tumor
outline inside a large non-tumor region wins, and ``ignore`` always wins.

The held-out split holds about ``held_out_fraction`` of the labelled pixels:
stripes across the slide where the labels span enough training patches, else a
band of the slide (left, right, top or bottom). Training patches are kept
outside it, held-out pixels are inside it, so no training patch sees a
held-out label (never a random split of patches).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_histo.annotations.model import (
    IGNORE_INDEX,
    Annotation,
    mask_to_bbox,
    mask_to_ellipse,
    rasterize,
)
from napari_histo.errors import HistoError
from napari_histo.frames import model_downsample
from napari_histo.io.slide import Slide
from napari_histo.training.data import PatchSet, mask_patch, read_patch

__all__ = [
    "CLASS_TARGETS",
    "STRIPE_MIN_PERIODS",
    "STRIPE_PERIOD_PATCHES",
    "TRAIN_GRANULARITIES",
    "SpatialSplit",
    "check_both_classes",
    "check_in_tissue",
    "labels_from_annotations",
    "off_tissue",
    "plan_split",
    "sample_annotation_patches",
    "sample_label_patches",
    "slide_labels",
    "spatial_split",
]

#: Annotation class → training target (unlabelled pixels are IGNORE_INDEX too).
CLASS_TARGETS: dict[str, int] = {"non-tumor": 0, "tumor": 1, "ignore": IGNORE_INDEX}
#: Granularities :func:`labels_from_annotations` accepts (None = as drawn).
TRAIN_GRANULARITIES = ("pixel", "polygon", "ellipse", "bbox")
_PRIORITY = ("non-tumor", "tumor", "ignore")  # drawing order: later wins


def _check_dims(slide_dims: Sequence[int]) -> tuple[int, int]:
    width, height = (int(v) for v in slide_dims)
    if width < 1 or height < 1:
        raise ValueError(f"`slide_dims` must be positive (width, height), got {tuple(slide_dims)}")
    return width, height


def _drawable(annotations: Sequence[Annotation]) -> list[Annotation]:
    """Annotations with an area, checked for class names; raises if there are none."""
    anns = [a for a in annotations if a.kind != "point"]
    if not anns:
        raise HistoError(
            "no annotations to train from: draw at least one tumor and one non-tumor region"
        )
    for i, ann in enumerate(anns):
        if ann.label not in CLASS_TARGETS:
            raise HistoError(
                f"annotation {i} ({ann.id}): class {ann.label!r} is not one of "
                f"{sorted(CLASS_TARGETS)}"
            )
    return anns


def _check_inside(anns: Sequence[Annotation], width: int, height: int) -> None:
    for i, ann in enumerate(anns):
        x0, y0, x1, y1 = ann.bounds
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise HistoError(
                f"annotation {i} ({ann.label}) lies outside the slide: bounds "
                f"({x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}) vs slide {width} x {height} px"
            )


def labels_from_annotations(
    annotations: Sequence[Annotation],
    slide_dims: Sequence[int],
    downsample: float,
    granularity: str | None = None,
) -> np.ndarray:
    """Training targets from annotations at a chosen granularity.

    Parameters
    ----------
    annotations : sequence of Annotation
        Level-0 annotations of classes ``tumor``, ``non-tumor`` or ``ignore``
        (points are skipped).
    slide_dims : (width, height)
        Level-0 slide size, px.
    downsample : float
        Level-0 px per output pixel (e.g. model µm/px ÷ slide µm/px).
    granularity : {None, "pixel", "polygon", "ellipse", "bbox"}
        None, "pixel" or "polygon": as drawn. "ellipse" / "bbox": each
        8-connected component of each class (at `downsample`) is replaced by
        its moment ellipse / bounding box.

    Returns
    -------
    ndarray of uint8, shape (ceil(height / downsample), ceil(width / downsample))
        1 tumor, 0 non-tumor, 255 ignore or unlabelled.

    Raises
    ------
    HistoError
        No annotations, an unknown class, or an annotation outside the slide.
    ValueError
        Bad `granularity`, `downsample` or `slide_dims`.

    Examples
    --------
    >>> anns = [Annotation.from_bbox(0, 0, 4, 4, label="tumor"),
    ...         Annotation.from_bbox(4, 0, 8, 4, label="non-tumor")]
    >>> labels_from_annotations(anns, (8, 8), 2.0)
    array([[  1,   1,   0,   0],
           [  1,   1,   0,   0],
           [255, 255, 255, 255],
           [255, 255, 255, 255]], dtype=uint8)
    """
    if granularity is not None and granularity not in TRAIN_GRANULARITIES:
        raise ValueError(
            f"`granularity` must be None or one of {TRAIN_GRANULARITIES}, got {granularity!r}"
        )
    if not downsample > 0:
        raise ValueError(f"`downsample` must be > 0, got {downsample}")
    width, height = _check_dims(slide_dims)
    anns = _drawable(annotations)
    _check_inside(anns, width, height)
    shape = (int(np.ceil(height / downsample)), int(np.ceil(width / downsample)))
    out = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
    for name in _PRIORITY:
        group = [a for a in anns if a.label == name]
        if not group:
            continue
        drawn = rasterize(group, shape, downsample, classes={name: 1}).astype(bool)
        if granularity in ("ellipse", "bbox"):
            derive = mask_to_ellipse if granularity == "ellipse" else mask_to_bbox
            coarse = derive(drawn, downsample, label=name)
            drawn = rasterize(coarse, shape, downsample, classes={name: 1}).astype(bool)
        out[drawn] = CLASS_TARGETS[name]
    return out


def check_both_classes(labels: np.ndarray, where: str = "annotations") -> None:
    """Raise :class:`HistoError` unless `labels` hold both tumor (1) and non-tumor (0)."""
    missing = [name for name, v in (("tumor", 1), ("non-tumor", 0)) if not (labels == v).any()]
    if missing:
        raise HistoError(
            f"{where}: no {' or '.join(missing)} pixels; fine-tuning needs both tumor and "
            "non-tumor annotations"
        )


def off_tissue(
    annotations: Sequence[Annotation],
    tissue: np.ndarray,
    tissue_downsample: float,
    *,
    min_fraction: float = 0.05,
) -> list[tuple[int, str]]:
    """One line for each tumor/non-tumor annotation that lies mostly off tissue.

    Parameters
    ----------
    annotations : sequence of Annotation
        Level-0 annotations.
    tissue : ndarray of bool, shape (h, w)
        Tissue mask at `tissue_downsample`.
    tissue_downsample : float
        Level-0 px per tissue-mask pixel.
    min_fraction : float
        Least share of an annotation's area that must lie on tissue.

    Returns
    -------
    list of tuple of (int, str)
        ``(index, message)`` of each annotation with less than `min_fraction`
        of its area on tissue, in order.
    """
    found = []
    for i, ann in enumerate(annotations):
        if ann.kind == "point" or ann.label == "ignore":
            continue
        x0, y0, x1, y1 = ann.bounds
        c0, r0 = int(max(0, x0 // tissue_downsample)), int(max(0, y0 // tissue_downsample))
        c1 = int(min(tissue.shape[1], x1 // tissue_downsample + 1))
        r1 = int(min(tissue.shape[0], y1 // tissue_downsample + 1))
        if c1 <= c0 or r1 <= r0:
            continue  # outside the slide: reported by labels_from_annotations
        origin = (c0 * tissue_downsample, r0 * tissue_downsample)
        inside = rasterize(
            [ann], (r1 - r0, c1 - c0), tissue_downsample, origin, classes={ann.label: 1}
        ).astype(bool)
        area = int(inside.sum())
        on_tissue = int((inside & tissue[r0:r1, c0:c1].astype(bool)).sum())
        if area and on_tissue < min_fraction * area:
            found.append(
                (
                    i,
                    f"annotation {i} ({ann.label}, bounds {x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}) "
                    f"lies outside tissue ({on_tissue / area:.0%} on tissue)",
                )
            )
    return found


def check_in_tissue(
    annotations: Sequence[Annotation],
    tissue: np.ndarray,
    tissue_downsample: float,
    *,
    min_fraction: float = 0.05,
) -> None:
    """Raise :class:`HistoError` for the first annotation mostly off tissue (:func:`off_tissue`)."""
    found = off_tissue(annotations, tissue, tissue_downsample, min_fraction=min_fraction)
    if found:
        raise HistoError(found[0][1])


# -- spatial split ---------------------------------------------------------------------
@dataclass(frozen=True)
class SpatialSplit:
    """A held-out band of a slide, or evenly spaced stripes, level-0 px.

    Attributes
    ----------
    axis : {"x", "y"}
        The band spans ``[start_l0, stop_l0)`` along this axis and the whole slide across it.
    start_l0, stop_l0 : float
        Band limits, level-0 px.
    period_l0 : float
        0: one band. Otherwise the band repeats every `period_l0` px (stripes
        ``[start_l0 + k * period_l0, stop_l0 + k * period_l0)`` for every integer k),
        so held-out pixels come from all over the slide.
    """

    axis: str
    start_l0: float
    stop_l0: float
    period_l0: float = 0.0

    def _inside(self, v: np.ndarray) -> np.ndarray:
        if self.period_l0 > 0:
            return np.mod(v - self.start_l0, self.period_l0) < self.stop_l0 - self.start_l0
        return (v >= self.start_l0) & (v < self.stop_l0)

    def held_out(self, xy_l0: np.ndarray) -> np.ndarray:
        """Bool (N,): which level-0 points ``(N, 2)`` (x, y) lie in the band."""
        v = np.asarray(xy_l0, dtype=np.float64).reshape(-1, 2)[:, 0 if self.axis == "x" else 1]
        return self._inside(v)

    def band_mask(self, shape: tuple[int, int], downsample: float) -> np.ndarray:
        """Bool mask ``shape`` (rows, cols) at `downsample`: pixel centres in the band."""
        n = shape[1] if self.axis == "x" else shape[0]
        inside = self._inside((np.arange(n) + 0.5) * downsample)
        return np.broadcast_to(inside[None, :] if self.axis == "x" else inside[:, None], shape)

    def overlaps(self, origin_l0: tuple[float, float], size_l0: float) -> bool:
        """Whether the square at level-0 `origin_l0` (x, y) of side `size_l0` meets the band."""
        lo = float(origin_l0[0 if self.axis == "x" else 1])
        width = self.stop_l0 - self.start_l0
        if self.period_l0 > 0:
            r = (lo - self.start_l0) % self.period_l0
            return bool(r < width or r + size_l0 > self.period_l0)
        return lo < self.stop_l0 and lo + size_l0 > self.start_l0

    def clear_of(self, origin: float, size: float, extent: float) -> float:
        """A patch start along the axis, nearest `origin`, whose patch misses the band.

        `origin` itself when no such start fits in ``[0, extent - size]``.
        """
        if self.period_l0 > 0:
            base = origin - (origin - self.start_l0) % self.period_l0  # this stripe's start
            width = self.stop_l0 - self.start_l0
            options = [base + k * self.period_l0 + d
                       for k in (-1, 0, 1) for d in (width, self.period_l0 - size)]  # fmt: skip
        else:
            options = [self.start_l0 - size, self.stop_l0]
        last = max(0.0, extent - size)
        options = [
            p for p in options
            if 0 <= p <= last and not self.overlaps((p, p), size)
        ]  # fmt: skip
        return min(options, key=lambda p: abs(p - origin)) if options else origin

    def describe(self) -> str:
        """One line, e.g. ``"x in [3072, 4096) px"``."""
        text = f"{self.axis} in [{self.start_l0:.0f}, {self.stop_l0:.0f})"
        if self.period_l0 > 0:
            text += f" + k * {self.period_l0:.0f}"
        return text + " level-0 px"


def _band_candidates(
    coords: np.ndarray, weights: np.ndarray, fraction: float, extent: tuple[int, int], seed: int
) -> list[SpatialSplit]:
    """Four bands (low/high x, low/high y) holding `fraction` of the weight, seed-ordered."""
    out = []
    for axis, col in (("x", 0), ("y", 1)):
        order = np.argsort(coords[:, col], kind="stable")
        v, cum = coords[order, col], np.cumsum(weights[order]) / weights.sum()
        lo = float(v[min(len(v) - 1, np.searchsorted(cum, fraction))])
        hi = float(v[min(len(v) - 1, np.searchsorted(cum, 1 - fraction))])
        out.append(SpatialSplit(axis, 0.0, lo))
        out.append(SpatialSplit(axis, hi, float(extent[col])))
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


#: Held-out stripes repeat every this many training patches (see :func:`plan_split`).
STRIPE_PERIOD_PATCHES = 3
#: Stripes are used where the labelled pixels span at least this many periods.
STRIPE_MIN_PERIODS = 2.0


def _stripe_candidates(
    coords: np.ndarray, fraction: float, period: float, seed: int
) -> list[SpatialSplit]:
    """Stripes of width ``fraction * period`` every `period` px, on axes the labels span.

    Only along an axis where the labelled points span :data:`STRIPE_MIN_PERIODS`
    periods; four phases per axis, in a seed-given order.
    """
    out = []
    for axis, col in (("x", 0), ("y", 1)):
        lo, hi = float(coords[:, col].min()), float(coords[:, col].max())
        if hi - lo < STRIPE_MIN_PERIODS * period:
            continue
        for phase in (0.0, 0.25, 0.5, 0.75):
            start = (lo + phase * period) % period
            out.append(SpatialSplit(axis, start, start + fraction * period, period))
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


def plan_split(
    labels: np.ndarray,
    downsample: float,
    *,
    held_out_fraction: float = 0.25,
    seed: int = 0,
    patch_px: int = 128,
) -> SpatialSplit:
    """The held-out region for a label mask: about `held_out_fraction` of the labelled pixels.

    Where the labelled pixels span at least two periods of
    :data:`STRIPE_PERIOD_PATCHES` × `patch_px` along an axis, the held-out region
    is stripes across the slide (width `held_out_fraction` of the period), so the
    held-out and training pixels both sample every part of the slide. One band
    at a slide side let a tissue found in one part only (lymphoid aggregates on
    8192² px synthetic slides) be held out entirely: never trained on, and
    dominating the held-out Dice (issue #8). Smaller label extents (4096² px
    slides at 2 µm/px) keep one band along a side.

    Tries the candidates (stripes, else the four slide sides) in a seed-given
    order and keeps the first whose inside and outside both hold tumor and
    non-tumor pixels.

    Parameters
    ----------
    labels : ndarray of uint8, shape (h, w)
        Targets (0, 1, 255) at `downsample`.
    downsample : float
        Level-0 px per label pixel.
    held_out_fraction : float
        Share of labelled pixels to hold out, in (0, 0.5].
    seed : int
        Picks among the candidate bands (deterministic).
    patch_px : int
        Training patch side at the labels' resolution: the gaps between stripes
        hold at least 1.5 patches.

    Raises
    ------
    HistoError
        If no band leaves both classes on both sides.
    """
    if not 0 < held_out_fraction <= 0.5:
        raise ValueError(f"`held_out_fraction` must be in (0, 0.5], got {held_out_fraction}")
    check_both_classes(labels)
    rr, cc = np.nonzero(labels != IGNORE_INDEX)
    coords = np.column_stack([(cc + 0.5) * downsample, (rr + 0.5) * downsample])
    values = labels[rr, cc]
    # Balance the classes so the band holds both, whatever their areas.
    weights = np.where(values == 1, 1.0 / max(1, (values == 1).sum()), 0.0)
    weights += np.where(values == 0, 1.0 / max(1, (values == 0).sum()), 0.0)
    extent = (labels.shape[1] * downsample, labels.shape[0] * downsample)
    period = STRIPE_PERIOD_PATCHES * patch_px * downsample
    candidates = _stripe_candidates(coords, held_out_fraction, period, seed)
    candidates += _band_candidates(coords, weights, held_out_fraction, extent, seed)
    for split in candidates:
        inside = split.held_out(coords)
        if all(
            (values[part] == v).any() for part in (inside, ~inside) for v in (0, 1)
        ):  # both classes on both sides
            return split
    raise HistoError(
        "annotations: no band of the slide holds out both tumor and non-tumor while leaving "
        "both for training; annotate more regions"
    )


def spatial_split(
    items: Sequence[Annotation] | np.ndarray,
    slide_dims: Sequence[int],
    *,
    held_out_fraction: float = 0.25,
    seed: int = 0,
) -> tuple[list, list]:
    """Split annotations or level-0 points by a band of the slide, never at random.

    Parameters
    ----------
    items : sequence of Annotation, or ndarray of float, shape (N, 2)
        Annotations (placed by their bounding-box centre) or level-0 points ``(x, y)``
        (e.g. patch centres).
    slide_dims : (width, height)
        Level-0 slide size, px.
    held_out_fraction : float
        Share of items to hold out, in (0, 0.5].
    seed : int
        Chooses the side (left, right, top, bottom) of the band.

    Returns
    -------
    train, held_out : list
        Annotations, or indices into `items` for points.
    """
    if not 0 < held_out_fraction <= 0.5:
        raise ValueError(f"`held_out_fraction` must be in (0, 0.5], got {held_out_fraction}")
    width, height = _check_dims(slide_dims)
    is_points = isinstance(items, np.ndarray)
    if is_points:
        coords = np.asarray(items, dtype=np.float64).reshape(-1, 2)
    else:
        coords = np.array([[(a.bounds[0] + a.bounds[2]) / 2, (a.bounds[1] + a.bounds[3]) / 2]
                           for a in items]).reshape(-1, 2)  # fmt: skip
    if len(coords) < 2:
        raise HistoError(f"spatial split needs at least 2 items, got {len(coords)}")
    split = _band_candidates(
        coords, np.ones(len(coords)), held_out_fraction, (width, height), seed
    )[0]
    inside = split.held_out(coords)
    if inside.all() or not inside.any():  # all items on one line: split at the median
        n_held = max(1, round(held_out_fraction * len(coords)))
        inside = np.zeros(len(coords), bool)
        inside[np.argsort(coords[:, 0], kind="stable")[-n_held:]] = True
    index = np.arange(len(coords))
    train_i, held_i = index[~inside].tolist(), index[inside].tolist()
    if is_points:
        return train_i, held_i
    return [items[i] for i in train_i], [items[i] for i in held_i]


# -- patches ---------------------------------------------------------------------------
def sample_label_patches(
    slide_path: str | os.PathLike[str],
    labels: np.ndarray,
    downsample: float,
    *,
    patch_px: int,
    model_mpp: float,
    count: int,
    seed: int,
    jitter: float = 0.5,
    avoid: SpatialSplit | None = None,
    slide_mpp: float | None = None,
) -> PatchSet:
    """Class-balanced patches centred on labelled pixels, with random perturbation.

    Half the patch centres fall on tumor pixels, half on non-tumor pixels (DigiPathAI),
    then move by up to ``jitter`` × the patch side in x and y.

    Parameters
    ----------
    slide_path : str or PathLike
        Slide with mpp metadata.
    labels : ndarray of uint8, shape (h, w)
        Targets 0 / 1 / 255 at `downsample`.
    downsample : float
        Level-0 px per label pixel.
    patch_px, model_mpp : int, float
        Patch side in px at `model_mpp` µm/px.
    count, seed : int
        Number of patches; random seed.
    jitter : float
        Largest shift of a centre, as a fraction of the patch side (0.5: half a patch).
    avoid : SpatialSplit, optional
        Patches meeting this band are moved just outside it (training patches
        never see the held-out region).
    slide_mpp : float, optional
        µm per level-0 px of a slide without a plausible one of its own (``--mpp``).

    Returns
    -------
    PatchSet
    """
    if count < 1 or patch_px < 16:
        raise ValueError(f"`count` must be >= 1 and `patch_px` >= 16, got {count}, {patch_px}")
    if not 0 <= jitter <= 1:
        raise ValueError(f"`jitter` must be in [0, 1], got {jitter}")
    check_both_classes(labels, "training labels")
    rng = np.random.default_rng(seed)
    pools = [np.argwhere(labels == 1), np.argwhere(labels == 0)]
    n_fg = (count + 1) // 2
    picks = np.concatenate(
        [pools[0][rng.integers(0, len(pools[0]), n_fg)],
         pools[1][rng.integers(0, len(pools[1]), count - n_fg)]]
    )  # fmt: skip
    centres_yx = (picks + rng.random((count, 2))) * downsample
    with Slide(slide_path, mpp=slide_mpp) as slide:
        size_l0 = round(patch_px * model_downsample(model_mpp, slide.require_mpp()))
        centres_yx += rng.uniform(-jitter, jitter, (count, 2)) * size_l0
        width, height = slide.dimensions
        xs = np.clip(np.round(centres_yx[:, 1] - size_l0 / 2), 0, max(0, width - size_l0))
        ys = np.clip(np.round(centres_yx[:, 0] - size_l0 / 2), 0, max(0, height - size_l0))
        if avoid is not None:
            for i in range(count):
                if avoid.overlaps((xs[i], ys[i]), size_l0):
                    if avoid.axis == "x":
                        xs[i] = avoid.clear_of(xs[i], size_l0, width)
                    else:
                        ys[i] = avoid.clear_of(ys[i], size_l0, height)
        xs, ys = xs.astype(int), ys.astype(int)
        images = np.empty((count, patch_px, patch_px, 3), np.uint8)
        masks = np.empty((count, patch_px, patch_px), np.uint8)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            images[i] = read_patch(slide, int(x), int(y), size_l0, patch_px)
            masks[i] = _mask_patch_ignore(labels, downsample, int(x), int(y), size_l0, patch_px)
    return PatchSet(images, masks, np.stack([xs, ys], axis=1), float(model_mpp))


def _mask_patch_ignore(
    labels: np.ndarray, downsample: float, l0_x: int, l0_y: int, size_l0: int, patch_px: int
) -> np.ndarray:
    """:func:`mask_patch`, but pixels outside `labels` are IGNORE_INDEX, not 0."""
    shifted = mask_patch(labels.astype(np.int16) + 1, downsample, l0_x, l0_y, size_l0, patch_px)
    return np.where(shifted == 0, IGNORE_INDEX, shifted - 1).astype(np.uint8)


def slide_labels(
    slide_path: str | os.PathLike[str],
    annotations: Sequence[Annotation],
    *,
    model_mpp: float,
    granularity: str | None = None,
    check_tissue: bool = True,
    slide_mpp: float | None = None,
) -> tuple[np.ndarray, float]:
    """Checked targets at `model_mpp` for a slide: ``(labels, downsample)``.

    With `check_tissue`, annotations lying mostly off tissue (glass, a pen mark
    drawn around the section) are skipped with one UserWarning each naming
    them. Raises :class:`HistoError` for no annotations, nothing usable left,
    one class only or annotations outside the slide. `slide_mpp` is µm per
    level-0 px for a slide without a plausible one of its own (``--mpp``).
    """
    from napari_histo.tissue import slide_tissue_mask

    with Slide(slide_path, mpp=slide_mpp) as slide:
        downsample = model_downsample(model_mpp, slide.require_mpp())
        if check_tissue:
            tissue, tissue_ds = slide_tissue_mask(slide)
            skipped = off_tissue(annotations, tissue, tissue_ds)
            for _, line in skipped:
                warnings.warn(
                    f"{Path(slide_path).name}: skipping {line}", UserWarning, stacklevel=2
                )
            drop = {i for i, _ in skipped}
            annotations = [a for i, a in enumerate(annotations) if i not in drop]
            if drop and not annotations:
                raise HistoError(
                    f"{Path(slide_path).name}: all {len(drop)} annotations lie outside tissue; "
                    "nothing usable remains"
                )
        labels = labels_from_annotations(annotations, slide.dimensions, downsample, granularity)
        check_both_classes(labels, f"{Path(slide_path).name}: annotations")
    return labels, downsample


def sample_annotation_patches(
    slide_path: str | os.PathLike[str],
    annotations: Sequence[Annotation],
    *,
    patch_px: int,
    model_mpp: float,
    count: int,
    seed: int,
    granularity: str | None = None,
    jitter: float = 0.5,
    avoid: SpatialSplit | None = None,
) -> PatchSet:
    """Class-balanced training patches around annotations (see :func:`sample_label_patches`).

    Labels are rasterised at `model_mpp` with :func:`labels_from_annotations`
    at `granularity` and checked (:func:`slide_labels`).
    """
    labels, downsample = slide_labels(
        slide_path, annotations, model_mpp=model_mpp, granularity=granularity
    )
    if avoid is not None:
        labels = np.where(avoid.band_mask(labels.shape, downsample), IGNORE_INDEX, labels)
    return sample_label_patches(
        slide_path, labels, downsample, patch_px=patch_px, model_mpp=model_mpp, count=count,
        seed=seed, jitter=jitter, avoid=avoid,
    )  # fmt: skip
