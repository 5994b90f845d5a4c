"""Training patches at a model's resolution, sampled from a slide and label masks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from napari_histo.annotations.model import IGNORE_INDEX
from napari_histo.frames import model_downsample
from napari_histo.io.patch import read_patch
from napari_histo.io.slide import Slide

__all__ = ["PatchSet", "mask_patch", "read_patch", "sample_patches"]


@dataclass(frozen=True)
class PatchSet:
    """Image patches with per-pixel labels, all at one resolution.

    Attributes
    ----------
    images : ndarray of uint8, shape (N, P, P, 3)
        RGB patches at `model_mpp`.
    masks : ndarray of uint8, shape (N, P, P)
        0 background, 1 foreground, 255 ignored.
    origins_l0 : ndarray of int, shape (N, 2)
        Level-0 ``(x, y)`` of each patch's top-left corner.
    model_mpp : float
        µm per patch pixel.
    """

    images: np.ndarray
    masks: np.ndarray
    origins_l0: np.ndarray
    model_mpp: float

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def concat(sets: list[PatchSet]) -> PatchSet:
        """All patches of `sets` in one set (same resolution and patch size)."""
        if not sets:
            raise ValueError("`sets` must not be empty")
        if len({s.model_mpp for s in sets}) != 1:
            raise ValueError("patch sets must share `model_mpp`")
        return PatchSet(
            images=np.concatenate([s.images for s in sets]),
            masks=np.concatenate([s.masks for s in sets]),
            origins_l0=np.concatenate([s.origins_l0 for s in sets]),
            model_mpp=sets[0].model_mpp,
        )


def mask_patch(
    mask: np.ndarray, mask_downsample: float, l0_x: int, l0_y: int, size_l0: int, patch_px: int
) -> np.ndarray:
    """Nearest-neighbour labels of a level-0 square from a low-resolution mask.

    Pixels outside `mask` get 0.
    """
    centres = (np.arange(patch_px) + 0.5) * (size_l0 / patch_px)
    rows = np.floor((l0_y + centres) / mask_downsample).astype(np.int64)
    cols = np.floor((l0_x + centres) / mask_downsample).astype(np.int64)
    inside_r = (rows >= 0) & (rows < mask.shape[0])
    inside_c = (cols >= 0) & (cols < mask.shape[1])
    out = np.zeros((patch_px, patch_px), dtype=np.uint8)
    sub = mask[np.ix_(rows[inside_r], cols[inside_c])]
    out[np.ix_(inside_r, inside_c)] = sub
    return out


def sample_patches(
    slide_path: str | os.PathLike[str],
    labels: np.ndarray,
    tissue: np.ndarray,
    mask_downsample: float,
    *,
    count: int,
    patch_px: int,
    model_mpp: float,
    seed: int,
    foreground_fraction: float = 0.5,
    jitter: float = 0.5,
) -> PatchSet:
    """Balanced patches around foreground and background tissue (DigiPathAI sampling).

    Parameters
    ----------
    slide_path : str or PathLike
        Slide with mpp metadata.
    labels : ndarray, shape (h, w)
        Label mask at `mask_downsample`: 0, 1 or 255 (ignore).
    tissue : ndarray of bool, shape (h, w)
        Tissue mask at the same downsample; background patches come from tissue.
    mask_downsample : float
        Level-0 px per mask px.
    count : int
        Number of patches.
    patch_px : int
        Patch side at `model_mpp`.
    model_mpp : float
        µm per patch pixel.
    seed : int
        Random seed.
    foreground_fraction : float
        Share of patches centred on foreground pixels.
    jitter : float
        Random shift of each centre, up to this fraction of the patch side.

    Returns
    -------
    PatchSet
    """
    if labels.shape != tissue.shape:
        raise ValueError(f"`labels` shape {labels.shape} must equal `tissue` shape {tissue.shape}")
    if count < 1 or patch_px < 16:
        raise ValueError(f"`count` must be >= 1 and `patch_px` >= 16, got {count}, {patch_px}")
    rng = np.random.default_rng(seed)
    fg = np.argwhere(labels == 1)
    bg = np.argwhere(tissue.astype(bool) & (labels == 0))
    if len(bg) == 0:
        bg = np.argwhere(labels == 0)
    with Slide(slide_path) as slide:
        size_l0 = round(patch_px * model_downsample(model_mpp, slide.require_mpp()))
        n_fg = round(count * foreground_fraction) if len(fg) else 0
        picks = [fg[rng.integers(0, len(fg), n_fg)]] if n_fg else []
        picks.append(bg[rng.integers(0, len(bg), count - n_fg)])
        centres = (np.concatenate(picks) + rng.random((count, 2))) * mask_downsample
        centres += rng.uniform(-jitter, jitter, (count, 2)) * size_l0
        width, height = slide.dimensions
        ys = np.clip(np.round(centres[:, 0] - size_l0 / 2), 0, max(0, height - size_l0)).astype(int)
        xs = np.clip(np.round(centres[:, 1] - size_l0 / 2), 0, max(0, width - size_l0)).astype(int)
        images = np.empty((count, patch_px, patch_px, 3), np.uint8)
        masks = np.empty((count, patch_px, patch_px), np.uint8)
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            images[i] = read_patch(slide, int(x), int(y), size_l0, patch_px)
            masks[i] = mask_patch(labels, mask_downsample, int(x), int(y), size_l0, patch_px)
    assert IGNORE_INDEX == 255
    return PatchSet(images, masks, np.stack([xs, ys], axis=1), float(model_mpp))
