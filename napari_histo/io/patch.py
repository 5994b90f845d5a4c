"""A square of a slide at a chosen resolution: the one patch reader."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_histo.io.slide import Slide

__all__ = ["read_patch"]


def read_patch(slide: Slide, l0_x: int, l0_y: int, size_l0: int, patch_px: int) -> np.ndarray:
    """Read a ``size_l0``² level-0 square as a ``patch_px``² RGB patch (area average).

    Reads the coarsest level that is still at least as fine as the patch.
    """
    level = slide.best_level_for_downsample(size_l0 / patch_px)
    ds = slide.level_downsamples[level]
    side = max(patch_px, round(size_l0 / ds))
    region = slide.read_region(level, l0_x, l0_y, side, side)
    if side == patch_px:
        return region
    if side % patch_px == 0:
        f = side // patch_px
        return (
            region.reshape(patch_px, f, patch_px, f, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        )
    tensor = torch.from_numpy(region).permute(2, 0, 1)[None].float()
    small = F.interpolate(tensor, size=(patch_px, patch_px), mode="area")
    return small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
