"""``bench read --formats``: the same synthetic content in several slide formats.

One synthetic slide (16384² px with ``--quick``, else 32768², as ``bench read``) is written again
as each format below, level by level (2× levels down to about 1024 px, 256 px
tiles, JPEG quality 90 where the format is JPEG), and each file is measured as
``bench read --slide FILE`` would (viewport windows through the lazy pyramid
against raw openslide-python ``read_region`` of the same windows):

* ``svs``: the synthetic Aperio SVS itself (levels 4× apart, as written);
* ``tiff_jpeg`` / ``tiff_zstd``: a generic tiled TIFF (OpenSlide
  "generic-tiff") with JPEG / ZSTD tiles;
* ``dicom``: a DICOM WSI series, when :mod:`napari_histo.io.dicom` can write
  one (it is skipped otherwise).

No writer for Hamamatsu NDPI, Philips TIFF or MIRAX exists here, so those
formats are not measured. ``direct`` says whether the direct tile decoder
(:mod:`napari_histo.io.tiff_tiles`) served the reads.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo.io.slide import Slide

TILE_PX = 256
TOP_PX = 1024


def _levels(image: np.ndarray) -> list[np.ndarray]:
    """`image` and its 2× area-averaged reductions down to about :data:`TOP_PX`."""
    levels = [image]
    while max(levels[-1].shape[:2]) > TOP_PX:
        data = levels[-1]
        h, w = data.shape[0] // 2, data.shape[1] // 2
        view = data[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).astype(np.uint16)
        levels.append(((view.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8))
    return levels


def _tiles(image: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    for y in range(0, image.shape[0], tile):
        for x in range(0, image.shape[1], tile):
            block = np.zeros((tile, tile, 3), np.uint8)
            part = image[y : y + tile, x : x + tile]
            block[: part.shape[0], : part.shape[1]] = part
            yield block


def write_generic_tiff(path: Path, image: np.ndarray, mpp: float, compression: str) -> Path:
    """A generic tiled pyramidal TIFF of `image` with `compression` ("jpeg" or "zstd")."""
    import tifffile

    args = {"level": 90} if compression == "jpeg" else {"level": 3}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for level, data in enumerate(_levels(image)):
            per_cm = 1e4 / (mpp * 2**level)
            tw.write(
                _tiles(data, TILE_PX), shape=data.shape, dtype=np.uint8,
                tile=(TILE_PX, TILE_PX), photometric="rgb", compression=compression,
                compressionargs=args, subfiletype=0 if level == 0 else 1, metadata=None,
                resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
            )  # fmt: skip
    return path


def _dicom_writer():
    """The DICOM WSI writer of :mod:`napari_histo.io.dicom`, None where there is none."""
    try:
        from napari_histo.io import dicom
    except ImportError:
        return None
    return getattr(dicom, "write_dicom_wsi", None)


def bench_formats(*, quick: bool = False) -> dict[str, Any]:
    """Measure every format; ``{"formats": {name: {...}}, "cmu": {...}}``."""
    from napari_histo.bench import bench_slide
    from napari_histo.bench.read import bench_read

    source = bench_slide(16384 if quick else 32768)
    with Slide(source) as slide:
        width, height = slide.dimensions
        image = slide.read_region(0, 0, 0, width, height)
        mpp = slide.mpp or 0.25
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"svs": source}
        for compression in ("jpeg", "zstd"):
            path = Path(tmp) / f"content_{compression}.tiff"
            files[f"tiff_{compression}"] = write_generic_tiff(path, image, mpp, compression)
        writer = _dicom_writer()
        if writer is not None:
            files["dicom"] = writer(Path(tmp) / "dicom", _levels(image), mpp=mpp)
        del image
        for name, path in files.items():
            results[name] = _summary(bench_read(quick=quick, slide=str(path)))
    cmu = Path(__file__).resolve().parents[2] / "tests" / "data" / "cmu_small_region.svs"
    out: dict[str, Any] = {"formats": results}
    if cmu.exists():
        out["cmu"] = _summary(bench_read(quick=quick, slide=str(cmu)))
    return out


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "ratio_1t": result["ratio_1t"],
        "ratio_parallel": result["ratio_parallel"],
        "direct": result["direct_tile_decoding"],
        "raw_windows_s": result["raw_windows_s"],
    }
