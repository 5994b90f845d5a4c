"""Writers for small real slide files used by the tests (tifffile, no mocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage


def textured_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour texture (H, W, 3) uint8 with a white border region."""
    rng = np.random.default_rng(seed)
    small = rng.random((height // 16 + 2, width // 16 + 2, 3))
    field = ndimage.zoom(small, (16, 16, 1), order=1)[:height, :width]
    fine = ndimage.gaussian_filter(rng.random((height, width)), 1.5)[..., None]
    image = 60 + 150 * field + 120 * (fine - 0.5)
    image[: height // 10] = 250  # a band of "glass"
    return np.clip(image, 0, 255).astype(np.uint8)


def _tiles(image: np.ndarray, tile: int):
    height, width = image.shape[:2]
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            block = np.full((tile, tile, 3), 255, np.uint8)
            part = image[y : y + tile, x : x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            yield block


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[0] // factor, image.shape[1] // factor
    view = image[: h * factor, : w * factor].reshape(h, factor, w, factor, 3)
    return view.mean(axis=(1, 3)).round().astype(np.uint8)


def write_aperio_svs(
    path: Path, image: np.ndarray, levels: int = 2, tile: int = 256, mpp: float = 0.25
) -> None:
    """Aperio-style SVS (OpenSlide vendor "aperio"): levels downsampled by 4."""
    import tifffile

    height, width = image.shape[:2]
    with tifffile.TiffWriter(path) as tw:
        for level in range(levels):
            data = image if level == 0 else _reduce(image, 4**level)
            h, w = data.shape[:2]
            if level == 0:
                desc = (
                    f"Aperio Image Library v12.0.0\n{width}x{height} [0,0 {width}x{height}] "
                    f"({tile}x{tile}) JPEG/RGB Q=90|AppMag = 40|MPP = {mpp}"
                )
            else:
                desc = f"Aperio Image Library v12.0.0\n{width}x{height} -> {w}x{h}"
            tw.write(
                _tiles(data, tile), shape=data.shape, dtype=np.uint8, tile=(tile, tile),
                photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                description=desc, subfiletype=0 if level == 0 else 1, metadata=None,
            )


def write_generic_tiff(
    path: Path, image: np.ndarray, levels: int = 1, tile: int = 256, mpp: float | None = None
) -> None:
    """Plain tiled TIFF (OpenSlide "generic-tiff"); levels downsampled by 2.

    With `mpp`, resolution tags in centimetres give OpenSlide its mpp.
    """
    import tifffile

    with tifffile.TiffWriter(path) as tw:
        for level in range(levels):
            data = image if level == 0 else _reduce(image, 2**level)
            extra = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2**level)
                extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tw.write(
                _tiles(data, tile), shape=data.shape, dtype=np.uint8, tile=(tile, tile),
                photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                subfiletype=0 if level == 0 else 1, metadata=None, **extra,
            )
