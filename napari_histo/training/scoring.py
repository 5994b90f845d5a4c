"""Held-out Dice computed with the inference engine, so it matches what the widget shows."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from napari_histo.models import LoadedModel, ModelCard
from napari_histo.training.losses import IGNORE

__all__ = ["engine_dice"]


def engine_dice(
    members: Sequence[tuple[nn.Module, ModelCard]],
    slide_path: str | os.PathLike[str],
    labels: np.ndarray,
    downsample: float,
    *,
    overlap: float = 0.5,
    device: str = "cpu",
    slide_mpp: float | None = None,
) -> float:
    """Tumor Dice of the ensemble's probability (> 0.5) over the labelled pixels.

    The probability comes from :func:`napari_histo.inference.engine.infer_slide`
    (tissue tiles, `overlap`, blending, no TTA) over the box around the labelled
    pixels, written to a temporary store: the numbers users see in napari.

    Parameters
    ----------
    members : sequence of (model, card)
        Models (trained in memory or loaded) and their cards.
    slide_path : str or PathLike
        The slide.
    labels : ndarray of uint8, shape (h, w)
        Targets 0 / 1 / 255 at `downsample` (level-0 px per label pixel).
    downsample : float
        Level-0 px per label pixel.
    overlap : float
        Tile overlap of the engine.
    slide_mpp : float, optional
        µm per level-0 px of a slide without a plausible one of its own (``--mpp``).
    device : str
        Engine device ("cpu" keeps the models where training left them).

    Returns
    -------
    float
        Dice in [0, 1]; 1.0 when neither truth nor prediction has tumor.
    """
    from napari_histo.inference.engine import EngineConfig, infer_slide, run
    from napari_histo.io.slide import Slide

    rows, cols = np.nonzero(labels != IGNORE)
    if rows.size == 0:
        raise ValueError("`labels` hold no labelled pixels to score")
    with Slide(slide_path, mpp=slide_mpp) as slide:
        width, height = slide.dimensions
    x0, y0 = int(cols.min() * downsample), int(rows.min() * downsample)
    x1 = min(width, int(np.ceil((cols.max() + 1) * downsample)))
    y1 = min(height, int(np.ceil((rows.max() + 1) * downsample)))
    loaded = [LoadedModel(model, card, Path(slide_path)) for model, card in members]
    config = EngineConfig(overlap=overlap, device=device, tta=1, amp=False)  # as all scores
    with tempfile.TemporaryDirectory(prefix="histo-score-") as work:
        result = run(
            infer_slide(slide_path, loaded, region=(x0, y0, x1 - x0, y1 - y0), out_dir=work,
                        config=config, mpp=slide_mpp)
        )  # fmt: skip
        prob = np.asarray(result.run.array("probability")[...], dtype=np.float32)
        geometry = result.geometry
    ox, oy = geometry.origin_l0
    scale = float(geometry.downsample)
    # Result pixel j covers level-0 [o + j * scale, ...): take the one under each label centre.
    r_idx = np.floor(((rows + 0.5) * downsample - oy) / scale).astype(np.int64)
    c_idx = np.floor(((cols + 0.5) * downsample - ox) / scale).astype(np.int64)
    inside = (r_idx >= 0) & (r_idx < prob.shape[0]) & (c_idx >= 0) & (c_idx < prob.shape[1])
    values = np.zeros(rows.size, np.float32)
    values[inside] = prob[r_idx[inside], c_idx[inside]]
    pred = values > 0.5
    fg = labels[rows, cols] == 1
    total = int(pred.sum()) + int(fg.sum())
    return 2 * int((pred & fg).sum()) / total if total else 1.0
