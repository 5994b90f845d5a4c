"""Associated images of the synthetic SVS: the slide label and the macro photo."""

from __future__ import annotations

import numpy as np


def fit(img: np.ndarray, max_px: int) -> np.ndarray:
    """Resize (area-like) so that the longer side is <= ``max_px``."""
    from skimage.transform import resize

    s = max_px / max(img.shape[:2])
    if s >= 1:
        return np.ascontiguousarray(img)
    shape = (max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s)))
    out = resize(img, shape, anti_aliasing=True, preserve_range=True)
    return np.rint(out).astype(np.uint8)


def label_image(seed: int, text: str, size: tuple[int, int] = (560, 560)) -> np.ndarray:
    """A slide label: white card, pseudo-text lines and a 2D barcode-like block."""
    rng = np.random.default_rng([seed, 0x1ABE1])
    h, w = size
    img = np.full((h, w, 3), 250, np.uint8)
    cells = rng.random((24, 24)) < 0.5
    cells[:7, :7] = cells[:7, -7:] = cells[-7:, :7] = True
    img[40:280, 40:280] = np.where(np.kron(cells, np.ones((10, 10), bool))[..., None], 20, 250)
    y = 320
    for word_len in [len(s) for s in text.split()][:6] or [8]:
        x = 40
        for _ in range(int(rng.integers(2, 5))):
            n = min(word_len * 18, w - x - 40)
            if n <= 0:
                break
            img[y : y + 26, x : x + n] = 30
            x += n + 22
        y += 40
        if y > h - 40:
            break
    return img


def macro_image(overview: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Low-resolution photo of the whole glass slide: label on the left, tissue on the right."""
    h, w = 432, 1280
    img = np.full((h, w, 3), 228, np.uint8)
    img[:, :320] = _pad_to(fit(label, 300), (h, 320), 200)
    pic = fit(overview, 900)
    s = min(1.0, (h - 24) / pic.shape[0], (w - 360) / pic.shape[1])
    if s < 1:
        pic = fit(pic, int(max(pic.shape[:2]) * s))
    ph, pw = pic.shape[:2]
    y, x = (h - ph) // 2, 320 + (w - 320 - pw) // 2
    img[y : y + ph, x : x + pw] = pic
    return img


def _pad_to(img: np.ndarray, shape: tuple[int, int], fill: int) -> np.ndarray:
    out = np.full((*shape, 3), fill, np.uint8)
    y, x = (shape[0] - img.shape[0]) // 2, (shape[1] - img.shape[1]) // 2
    out[y : y + img.shape[0], x : x + img.shape[1]] = img
    return out
