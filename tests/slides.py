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


def _dicom_base(sop_class: str, transfer_syntax: str, series_uid: str):
    """A pydicom Dataset with file meta and the patient/study/series modules."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = "Test^Slide"
    ds.PatientID = "T1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.StudyID = ds.ReferringPhysicianName = ""
    ds.SeriesNumber = ds.InstanceNumber = 1
    return ds


def write_dicom_wsi(
    folder: Path,
    image: np.ndarray,
    levels: int = 2,
    tile: int = 256,
    mpp: float = 0.25,
    quality: int = 95,
    series_uid: str | None = None,
) -> list[Path]:
    """One DICOM WSI series (one file per level, downsampled by 2): JPEG baseline
    frames (YBR_FULL_422), TILED_FULL, PixelSpacing from `mpp`. Returns the files."""
    import imagecodecs
    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    height, width = image.shape[:2]
    paths = []
    for level in range(levels):
        data = image if level == 0 else _reduce(image, 2**level)
        h, w = data.shape[:2]
        frames = [
            imagecodecs.jpeg8_encode(block, level=quality, colorspace="RGB", outcolorspace="YCBCR")
            for block in _tiles(data, tile)
        ]
        ds = _dicom_base(WSI_SOP_CLASS, JPEGBaseline8Bit, series_uid)
        ds.Modality = "SM"
        ds.ImageType = ["ORIGINAL" if level == 0 else "DERIVED", "PRIMARY", "VOLUME",
                        "NONE" if level == 0 else "RESAMPLED"]
        ds.FrameOfReferenceUID = frame_uid
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.Rows = ds.Columns = tile
        ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = h, w
        ds.TotalPixelMatrixFocalPlanes = 1
        ds.NumberOfFrames = len(frames)
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.LossyImageCompression = "01"
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = width * mpp / 1000, height * mpp / 1000
        ds.ImagedVolumeDepth = 0.001
        spacing = mpp * 2**level / 1000  # mm
        measures = Dataset()
        measures.PixelSpacing = [spacing, spacing]  # row, column spacing
        measures.SliceThickness = 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
        optical = Dataset()
        optical.OpticalPathIdentifier = "1"
        optical.ObjectiveLensPower = 10.0 / mpp
        ds.OpticalPathSequence = [optical]
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
        path = folder / f"level-{level}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


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
