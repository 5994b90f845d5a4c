"""Downsample uint8 images by whole-block means (tile reads, tissue thumbnails)."""

from __future__ import annotations

import numpy as np

__all__ = ["area_average", "block_mean_uint8", "block_sums"]


def block_sums(image: np.ndarray, factor: int) -> np.ndarray:
    """Sums over `factor` × `factor` blocks of a uint8 ``(H, W, C)`` image (H, W multiples).

    uint16 sums by adding the block's pixels in turn (exact for `factor` ≤ 16,
    about 9× faster than ``ndarray.sum`` over reshaped axes); uint32 beyond,
    in two steps where `factor` has a divisor ``d`` ≤ 16: uint16 sums over
    ``d`` × ``d`` blocks, then uint32 sums of those (a tissue thumbnail of a
    40k² single-level slide at factor 32: 24 s → 5.7 s of summing).
    """
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"`factor` must be an integer >= 1, got {factor!r}")
    h, w, c = image.shape
    if h % factor or w % factor:
        raise ValueError(f"image shape {image.shape[:2]} is not a multiple of {factor}")
    blocks = image.reshape(h // factor, factor, w // factor, factor, c)
    if factor > 16:
        step = next((d for d in range(16, 1, -1) if factor % d == 0), None)
        if step is None:
            return blocks.sum(axis=(1, 3), dtype=np.uint32)
        rest = factor // step
        partial = block_sums(image, step)
        return partial.reshape(h // factor, rest, w // factor, rest, c).sum(
            axis=(1, 3), dtype=np.uint32
        )
    total = blocks[:, 0, :, 0].astype(np.uint16)
    for dy in range(factor):
        for dx in range(factor):
            if dy or dx:
                total += blocks[:, dy, :, dx]
    return total


def area_average(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over `factor` × `factor` blocks of a uint8 image, as float32.

    Parameters
    ----------
    image : ndarray of uint8, shape (H, W, C)
        H and W multiples of `factor`.
    factor : int
        Block size in px, 1 to 16.

    Returns
    -------
    ndarray of float32, shape (H // factor, W // factor, C)
    """
    if not 1 <= factor <= 16:
        raise ValueError(f"`factor` must be in 1..16, got {factor!r}")
    out = block_sums(image, factor).astype(np.float32)
    out /= factor * factor
    return out


def block_mean_uint8(image: np.ndarray, factor: int, pad_value: int = 255) -> np.ndarray:
    """Rounded mean of `factor` × `factor` blocks of a uint8 image; partial blocks padded.

    Blocks that run past the image edge are filled with `pad_value` (white glass
    for thumbnails) before averaging.
    """
    if factor == 1:
        return image
    h, w = image.shape[:2]
    ph, pw = -h % factor, -w % factor
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=pad_value)
    n = factor * factor
    sums = block_sums(image, factor).astype(np.uint32)
    return ((sums + n // 2) // n).astype(np.uint8)
