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
    path: Path,
    image: np.ndarray,
    levels: int = 1,
    tile: int = 256,
    mpp: float | None = None,
    compression: str | None = "jpeg",
) -> None:
    """Plain tiled TIFF (OpenSlide "generic-tiff"); levels downsampled by 2.

    With `mpp`, resolution tags in centimetres give OpenSlide its mpp.
    `compression` is a tifffile compression name (None: uncompressed).
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
                photometric="rgb", compression=compression,
                compressionargs={"level": 90} if compression == "jpeg" else None,
                subfiletype=0 if level == 0 else 1, metadata=None, **extra,
            )


#: VL Whole Slide Microscopy Image Storage, and CT Image Storage.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"


# The DICOM WSI writer lives in the package (bench read --formats writes DICOM too).
from napari_histo.bench.formats import dicom_base as _dicom_base  # noqa: E402
from napari_histo.bench.formats import write_dicom_wsi  # noqa: E402, F401


def write_dicom_ct(path: Path, size: int = 64) -> Path:
    """A small CT-like DICOM image (16-bit signed, uncompressed): DICOM, but no slide."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = _dicom_base(CT_SOP_CLASS, ExplicitVRLittleEndian, generate_uid())
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelSpacing = [0.7, 0.7]
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    ds.PixelData = np.where(disc, 1064, 24).astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_single_channel_tiff(
    path: Path,
    levels: list[np.ndarray],
    tile: int = 256,
    mpp: float | None = None,
    compression: str = "zlib",
) -> None:
    """Tiled single-channel (minisblack) pyramidal TIFF of any integer dtype.

    `levels` are the arrays to store, largest first (sizes need not halve).
    """
    import tifffile

    width = levels[0].shape[1]
    with tifffile.TiffWriter(path) as tw:
        for index, data in enumerate(levels):
            extra = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * width / data.shape[1])
                extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tw.write(
                data, tile=(tile, tile), photometric="minisblack", compression=compression,
                subfiletype=0 if index == 0 else 1, metadata=None, **extra,
            )


def fluorescence_like(height: int, width: int, peak: float, dtype, seed: int = 0) -> np.ndarray:
    """Dark background (a few counts of noise) with sparse bright blurred spots up to `peak`."""
    rng = np.random.default_rng(seed)
    spots = np.zeros((height, width))
    count = max(1, height * width // 4000)
    spots[rng.integers(0, height, count), rng.integers(0, width, count)] = 1
    spots = ndimage.gaussian_filter(spots, 3)
    image = spots / spots.max() * peak + rng.normal(0, peak * 0.01, (height, width)) + peak * 0.02
    return np.clip(image, 0, np.iinfo(dtype).max).astype(dtype)
