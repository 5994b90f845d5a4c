"""Member disagreement on one region: each member's probability and a per-pixel agreement map.

The result store keeps only the ensemble's mean and variance; to show *which*
member says what, the region is read again at the models' µm/px and every
member is run on it alone (:func:`~napari_histo.inference.tiles.predict_tile`
with a one-member ensemble, so each gets the same resampling, padding, stain
normalisation and test-time transforms as the ensemble did).

Agreement of a pixel is the share of members on the side of the *majority
vote* at ``threshold`` (0.5): with ``k`` of ``M`` members above it,
``max(k, M - k) / M``, in [1/2, 1]; 1 where all members agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_histo.io.slide import Slide

if TYPE_CHECKING:
    from napari_histo.models import LoadedModel

__all__ = [
    "MemberDisagreement",
    "agreement_map",
    "member_probabilities",
    "region_disagreement",
]

#: Largest side of a region read for member disagreement, model px.
MAX_REGION_MODEL_PX = 4096


@dataclass(frozen=True)
class MemberDisagreement:
    """Per-member tumor probabilities of one region and how much the members agree.

    Attributes
    ----------
    names : tuple of str
        ``"<name> <version>"`` of each member, in input order.
    probabilities : ndarray of float32, (members, rows, cols)
        Each member's tumor probability, at the pixels that were read.
    agreement : ndarray of float32, (rows, cols)
        :func:`agreement_map` of `probabilities`.
    mean_probability : ndarray of float32, (members,)
        Each member's mean probability over the region.
    rect_l0 : (int, int, int, int)
        Level-0 ``(x, y, w, h)`` of the region.
    mpp : float
        µm per pixel of the arrays.
    """

    names: tuple[str, ...]
    probabilities: np.ndarray
    agreement: np.ndarray
    mean_probability: np.ndarray
    rect_l0: tuple[int, int, int, int]
    mpp: float


def agreement_map(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Share of members on the majority side of `threshold`, per pixel.

    Parameters
    ----------
    probabilities : ndarray of float, (members, rows, cols)
        Each member's tumor probability.
    threshold : float
        A member says tumor where its probability is >= `threshold`.

    Returns
    -------
    ndarray of float32, (rows, cols)
        ``max(k, M - k) / M`` with ``k`` members saying tumor; in [0.5, 1].

    Examples
    --------
    >>> agreement_map(np.array([[[0.9, 0.1]], [[0.8, 0.9]], [[0.7, 0.2]]]))
    array([[1.       , 0.6666667]], dtype=float32)
    """
    p = np.asarray(probabilities)
    if p.ndim != 3 or p.shape[0] < 1:
        raise ValueError(f"`probabilities` must be (members, rows, cols), got shape {p.shape}")
    if not 0 < threshold < 1:
        raise ValueError(f"`threshold` must be in (0, 1), got {threshold!r}")
    members = p.shape[0]
    k = (p >= threshold).sum(axis=0)
    return (np.maximum(k, members - k) / members).astype(np.float32)


def member_probabilities(
    rgb: np.ndarray,
    mpp: float,
    members: Sequence[LoadedModel],
    *,
    tta: int = 1,
    stain: object = "card",
) -> np.ndarray:
    """Each member's tumor probability on an RGB tile, float32 ``(members, H, W)``.

    Parameters are those of :func:`~napari_histo.inference.tiles.predict_tile`;
    each member runs alone.
    """
    if not members:
        raise ValueError("`members` must hold at least one model")
    from napari_histo.inference.tiles import predict_tile  # torch: only when members run

    maps = [predict_tile(rgb, mpp, [m], tta=tta, stain=stain).probability for m in members]
    return np.stack(maps).astype(np.float32)


def _check_rect(rect_l0: object, dimensions: tuple[int, int]) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in rect_l0)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"`rect_l0` must be (x, y, w, h) level-0 px, got {rect_l0!r}") from None
    width, height = dimensions
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"`rect_l0` {rect_l0!r} must overlap the slide (0, 0, {width}, {height})")
    return x0, y0, x1 - x0, y1 - y0


def region_disagreement(
    slide: Slide,
    rect_l0: Sequence[int],
    members: Sequence[LoadedModel],
    *,
    tta: int = 1,
    stain: object = "card",
    threshold: float = 0.5,
) -> MemberDisagreement:
    """Run every member alone on a region of an open slide.

    The region is read from the finest level no finer than the models' µm/px
    (so at about their resolution) and handed to :func:`member_probabilities`.

    Parameters
    ----------
    slide : Slide
        Open slide with µm/px.
    rect_l0 : (x, y, w, h)
        Level-0 region, e.g. a :class:`~napari_histo.review.regions.Region`'s
        ``rect_l0`` (clipped to the slide).
    members : sequence of LoadedModel
        The ensemble.
    tta, stain
        As :func:`~napari_histo.inference.tiles.predict_tile`.
    threshold : float
        For :func:`agreement_map`.

    Raises
    ------
    ValueError
        Bad `rect_l0`, a region larger than :data:`MAX_REGION_MODEL_PX` model px
        a side, or members without a common µm/px.
    """
    if not members:
        raise ValueError("`members` must hold at least one model")
    slide_mpp = slide.require_mpp()
    x, y, w, h = _check_rect(rect_l0, slide.dimensions)
    model_mpp = members[0].card.input_mpp
    scale = model_mpp / slide_mpp
    if max(w, h) / scale > MAX_REGION_MODEL_PX:
        raise ValueError(
            f"`rect_l0` {w} x {h} level-0 px is larger than {MAX_REGION_MODEL_PX} model px "
            f"a side at {model_mpp:g} µm/px; choose a smaller region"
        )
    level = slide.best_level_for_downsample(scale)
    ds = slide.level_downsamples[level]
    rgb = slide.read_region(level, x, y, max(8, round(w / ds)), max(8, round(h / ds)))
    probabilities = member_probabilities(rgb, slide_mpp * ds, members, tta=tta, stain=stain)
    return MemberDisagreement(
        names=tuple(f"{m.card.name} {m.card.version}" for m in members),
        probabilities=probabilities,
        agreement=agreement_map(probabilities, threshold),
        mean_probability=probabilities.mean(axis=(1, 2)).astype(np.float32),
        rect_l0=(x, y, w, h),
        mpp=slide_mpp * ds,
    )
