"""Compare a slide's staining with the models' training tiles (the dock's OOD warning).

Reads a few tissue patches at the models' µm/px and scores their stain
statistics against the card's ``stain_reference`` (:mod:`napari_histo.ood`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from napari_histo.io.patch import read_patch
from napari_histo.io.slide import Slide
from napari_histo.models import read_card
from napari_histo.ood import StainReference, ood_message, ood_score, stain_features
from napari_histo.tissue import slide_tissue_mask

__all__ = ["slide_features", "slide_ood"]


def slide_features(
    slide: Slide, model_mpp: float, *, patches: int = 16, patch_px: int = 128
) -> np.ndarray | None:
    """:func:`stain_features` of up to `patches` tissue patches spread over a slide.

    Patches are read at `model_mpp` (µm/px) around tissue pixels of the slide's
    tissue mask, on an even grid, so the statistics match what the models see.
    """
    mask, downsample = slide_tissue_mask(slide)
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    pick = np.linspace(0, rows.size - 1, min(patches, rows.size)).astype(int)
    size_l0 = max(1, round(patch_px * model_mpp / slide.require_mpp()))
    width, height = slide.dimensions
    images = []
    for r, c in zip(rows[pick], cols[pick], strict=True):
        x = int(min(max(0, (c + 0.5) * downsample - size_l0 / 2), max(0, width - size_l0)))
        y = int(min(max(0, (r + 0.5) * downsample - size_l0 / 2), max(0, height - size_l0)))
        images.append(read_patch(slide, x, y, size_l0, patch_px))
    return stain_features(np.concatenate(images, axis=0))


def slide_ood(
    slide_path: str | os.PathLike[str], card_paths: Sequence[str | os.PathLike[str]]
) -> tuple[float, str]:
    """``(score, message)`` of a slide against the first card with a stain reference.

    Returns ``(nan, message)`` when no card carries a reference (models trained
    before v2, or your own) or the slide has no tissue.
    """
    for path in card_paths:
        card = read_card(path)
        if card.stain_reference is not None:
            break
    else:
        return float("nan"), "Slide vs training data: the models carry no stain reference."
    reference = StainReference.from_dict(card.stain_reference)
    with Slide(slide_path) as slide:
        if slide.mpp is None:
            return float("nan"), "Slide vs training data: no µm/px in the slide, not compared."
        score = ood_score(slide_features(slide, card.input_mpp), reference)
    return score, ood_message(score)
