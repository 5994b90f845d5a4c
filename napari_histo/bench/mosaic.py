"""Gigapixel test slides in seconds: a mosaic of real synthetic tiles.

Rendering a 100 000² synthetic slide takes minutes; what opening, memory and
first-frame benchmarks need is the file structure of such a slide (150 000
tiles on level 0, four levels, Aperio metadata), not unique pixels. This
copies the already-encoded JPEG tiles of a small synthetic slide into a large
Aperio SVS: tissue islands of real H&E tiles on glass, written tile by tile
with the byte strings reused, so memory stays small and writing is I/O bound.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["write_mosaic_slide"]


def _source_tiles(path: Path) -> list[list[bytes]]:
    """Encoded JPEG tiles of each tiled level of `path`, level 0 first."""
    levels = []
    with tifffile.TiffFile(path) as tif, path.open("rb") as f:
        for page in tif.pages:
            if not page.is_tiled or page.tilewidth != 256 or page.compression != 7:
                continue
            tiles = []
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                f.seek(offset)
                tiles.append(f.read(count))
            levels.append(tiles)
    if not levels:
        raise ValueError(f"{path}: no 256 px JPEG-tiled levels to copy")
    return levels


def _tissue_layout(cols: int, rows: int, fraction: float, seed: int) -> np.ndarray:
    """Bool (rows, cols) tile mask of a few smooth islands covering ~`fraction`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    field = np.zeros((rows, cols))
    for _ in range(6):
        cx, cy = rng.uniform(0.15, 0.85) * cols, rng.uniform(0.15, 0.85) * rows
        rx, ry = rng.uniform(0.08, 0.25) * cols, rng.uniform(0.08, 0.25) * rows
        field = np.maximum(field, 1 - ((xx - cx) / rx) ** 2 - ((yy - cy) / ry) ** 2)
    threshold = np.quantile(field, 1 - fraction)
    return field > threshold


def write_mosaic_slide(
    path: str | os.PathLike[str],
    source: str | os.PathLike[str],
    size_px: int = 100_000,
    *,
    tissue_fraction: float = 0.3,
    seed: int = 0,
) -> Path:
    """Write a `size_px`² Aperio SVS whose tissue tiles are copied from `source`.

    Parameters
    ----------
    path : str or PathLike
        Output .svs (written to a temporary name, then renamed).
    source : str or PathLike
        A synthetic slide (:func:`napari_histo.synthetic.write_synthetic_slide`)
        with 256 px JPEG tiles; its glass tile is reused for glass.
    size_px : int
        Width and height of level 0, px.
    tissue_fraction : float
        Fraction of level-0 tiles that are tissue, in (0, 1].

    Returns
    -------
    Path
        `path`.
    """
    if not 0 < tissue_fraction <= 1:
        raise ValueError(f"`tissue_fraction` must be in (0, 1], got {tissue_fraction}")
    if size_px < 1024:
        raise ValueError(f"`size_px` must be >= 1024, got {size_px}")
    path = Path(path)
    levels_src = _source_tiles(Path(source))
    tile = 256
    sizes = [size_px]
    while sizes[-1] > 2048:
        sizes.append(sizes[-1] // 4)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for level, side in enumerate(sizes):
                pool = levels_src[min(level, len(levels_src) - 1)]
                glass, tissue_pool = pool[0], pool[len(pool) // 3 :]
                cols = rows = -(-side // tile)
                layout = _tissue_layout(cols, rows, tissue_fraction, seed)

                def tiles(layout=layout, glass=glass, tissue_pool=tissue_pool):
                    for index, is_tissue in enumerate(layout.ravel()):
                        yield tissue_pool[index % len(tissue_pool)] if is_tissue else glass

                if level == 0:
                    desc = (
                        f"Aperio Image Library v12.0.0\n{side}x{side} [0,0 {side}x{side}] "
                        f"({tile}x{tile}) JPEG/RGB Q=85|AppMag = 40|MPP = 0.25"
                    )
                else:
                    desc = f"Aperio Image Library v12.0.0\n{size_px}x{size_px} -> {side}x{side}"
                tw.write(
                    tiles(),
                    shape=(side, side, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",
                    compression="jpeg",
                    description=desc,
                    subfiletype=0 if level == 0 else 1,
                    metadata=None,
                )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
