"""Effective receptive field of a segmentation model, measured: the margin large tiles need.

A fully convolutional model's output at a pixel depends only on the input
within some distance of it. :func:`measure_margin` finds that distance
empirically: it runs the model on an H&E-like texture and on a crop of it, and
returns the smallest margin (model px, a multiple of 16) beyond which the
crop's probabilities match the whole input's within a tolerance. The engine's
large tiles keep only their centre minus this margin, so their result equals an
infinitely large tile's (see :mod:`napari_histo.inference.plan`).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_histo.models.weights import LoadedModel

__all__ = ["MARGIN_TOLERANCE", "he_texture", "measure_margin", "with_measured_margin"]

#: Largest absolute difference in probability allowed beyond the margin.
MARGIN_TOLERANCE = 0.01


def he_texture(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic H&E-like RGB texture (uint8, ``(size, size, 3)``).

    Pink stroma with smooth variation, pale gaps and dark purple nuclei of 4-12
    px radius: structure at every scale the models react to.
    """
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal((size, size)), 24)
    field /= np.abs(field).max() + 1e-9
    eosin = np.clip(0.55 + 0.35 * field, 0.05, 1.0)
    haem = np.zeros((size, size))
    n = size * size // 600
    ys, xs = rng.integers(0, size, (2, n))
    radii = rng.uniform(4, 12, n)
    yy, xx = np.mgrid[:size, :size]
    for y, x, r in zip(ys, xs, radii, strict=True):
        y0, y1, x0, x1 = max(0, y - 13), min(size, y + 14), max(0, x - 13), min(size, x + 14)
        disk = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2 <= r * r
        haem[y0:y1, x0:x1] = np.maximum(haem[y0:y1, x0:x1], disk * rng.uniform(0.6, 1.2))
    haem = ndi.gaussian_filter(haem, 1.0)
    # Optical density of haematoxylin and eosin (Ruifrok's vectors), to RGB.
    od = haem[..., None] * np.array([0.65, 0.70, 0.29]) + eosin[..., None] * np.array(
        [0.07, 0.99, 0.11]
    )
    return np.clip(255 * np.exp(-od), 0, 255).astype(np.uint8)


def _probability(loaded: LoadedModel, rgb: np.ndarray) -> np.ndarray:
    card = loaded.card
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div_(255.0)
    mean = torch.tensor(card.normalisation["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(card.normalisation["std"]).view(1, 3, 1, 1)
    device = next(loaded.model.parameters()).device
    with torch.no_grad():
        logits = loaded.model(((x - mean) / std).to(device))
    return torch.softmax(logits.float(), 1)[0].cpu().numpy()


def measure_margin(
    loaded: LoadedModel, *, tolerance: float = MARGIN_TOLERANCE, seeds: tuple[int, ...] = (0, 1)
) -> int | None:
    """Smallest margin (model px, multiple of 16) beyond which a crop's output is exact.

    For each seed, an H&E-like texture is run as a ``2 × patch_px`` crop, and
    inside a ``3 × patch_px`` input that is different (darker) tissue outside
    the crop; the margin is the smallest distance from the crop's edge past
    which every class probability differs by at most `tolerance` times the
    range of the output (at most 1). The largest
    over the seeds is returned, or None when even the crop's centre differs
    (the model pools over its whole input: it keeps the patch path).
    """
    patch = loaded.card.patch_px
    size, crop = 3 * patch, 2 * patch
    offset = patch // 2 - (patch // 2) % 32  # keep the crop aligned to the model's strides
    worst = 0
    for seed in seeds:
        inner = (slice(offset, offset + crop), slice(offset, offset + crop))
        rgb = he_texture(size, seed)
        part = _probability(loaded, np.ascontiguousarray(rgb[inner]))
        # Outside the crop the whole input is darker tissue: a model that pools
        # over its whole input (not local) then differs everywhere.
        dark = (he_texture(size, seed + 1000) // 2).astype(np.uint8)
        dark[inner] = rgb[inner]
        whole = _probability(loaded, dark)[(slice(None), *inner)]
        diff = np.abs(whole - part).max(axis=0)
        # Relative to how much the output varies at all: a model whose output is
        # nearly flat here (untrained, or all background) must still agree closely.
        limit = tolerance * min(1.0, float(np.ptp(whole, axis=(1, 2)).max()))
        for margin in range(0, crop // 2, 16):
            if diff[margin : crop - margin, margin : crop - margin].max() <= limit:
                worst = max(worst, margin)
                break
        else:
            return None
    return worst


def with_measured_margin(card_path: str | os.PathLike[str]) -> int | None:
    """Measure a saved segmentation model's margin and write it into its card.

    The weights are unchanged (the card's sha256 covers them only). Returns the
    margin, or None for a model that is not local (the card keeps None).
    """
    from dataclasses import replace

    from napari_histo.models.card import read_card, write_card
    from napari_histo.models.weights import load_model

    loaded = load_model(card_path)
    margin = measure_margin(loaded)
    write_card(card_path, replace(read_card(card_path), receptive_margin_px=margin))
    return margin
