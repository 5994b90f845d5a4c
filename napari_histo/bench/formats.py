"""``bench read --formats``: the same synthetic content in several slide formats.

One synthetic slide (16384² px with ``--quick``, else 32768², as ``bench read``) is written again
as each format below, level by level (2× levels down to about 1024 px, 256 px
tiles, JPEG quality 90 where the format is JPEG), and each file is measured as
``bench read --slide FILE`` would (viewport windows through the lazy pyramid
against raw openslide-python ``read_region`` of the same windows):

* ``svs``: the synthetic Aperio SVS itself (levels 4× apart, as written);
* ``tiff_jpeg`` / ``tiff_zstd``: a generic tiled TIFF (OpenSlide
  "generic-tiff") with JPEG / ZSTD tiles;
* ``philips``: a Philips TIFF (:func:`write_philips_tiff`: JPEG tiles, levels padded
  to whole tiles, sizes from the XML's pixel spacings, as Philips writes them);
* ``dicom``: a DICOM WSI series (:func:`write_dicom_wsi`: one file per level,
  JPEG frames, ``TILED_FULL``).

No writer for Hamamatsu NDPI or MIRAX exists here, so those
formats are not measured; ``openslide_only`` stands in for them: the JPEG TIFF
read with direct decoding switched off (``Slide(..., direct=False)``), every
window through OpenSlide, as formats without a direct decoder are. ``direct``
says whether the direct tile decoder (:mod:`napari_histo.io.tiff_tiles`) served
the reads.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo.io.dicom import WSI_SOP_CLASS
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


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """`image` area-averaged by `factor` (trailing rows and columns dropped)."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    view = image[: h * factor, : w * factor].reshape(h, factor, w, factor, 3)
    return view.mean(axis=(1, 3)).round().astype(np.uint8)


def _levels_shapes(image: np.ndarray) -> list[tuple[int, int]]:
    """Shapes of `image`'s 2× levels down to about :data:`TOP_PX`."""
    shapes = [image.shape[:2]]
    while max(shapes[-1]) > TOP_PX:
        shapes.append((shapes[-1][0] // 2, shapes[-1][1] // 2))
    return shapes


def _tiles(image: np.ndarray, tile: int, fill: int = 0) -> Iterator[np.ndarray]:
    for y in range(0, image.shape[0], tile):
        for x in range(0, image.shape[1], tile):
            block = np.full((tile, tile, 3), fill, np.uint8)
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


def _philips_xml(spacings_mm: list[float]) -> str:
    """The ImageDescription of a Philips TIFF: a DPUfsImport holding one WSI image
    whose pixel data representations give each level's pixel spacing (mm)."""

    def spacing(mm: float) -> str:
        return (
            f'<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" '
            f'PMSVR="IDoubleArray">&quot;{mm:.9g}&quot; &quot;{mm:.9g}&quot;</Attribute>'
        )

    levels = "".join(
        f'<DataObject ObjectType="PixelDataRepresentation">{spacing(mm)}'
        f'<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_NUMBER" PMSVR="IUInt16">{i}'
        "</Attribute></DataObject>"
        for i, mm in enumerate(spacings_mm)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
        '<Attribute Name="PIM_DP_SCANNED_IMAGES" PMSVR="IDataObjectArray"><Array>'
        '<DataObject ObjectType="DPScannedImage">'
        f"{spacing(spacings_mm[0])}"
        '<Attribute Name="PIM_DP_IMAGE_TYPE" PMSVR="IString">WSI</Attribute>'
        '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" PMSVR="IDataObjectArray">'
        f"<Array>{levels}</Array></Attribute>"
        "</DataObject></Array></Attribute></DataObject>"
    )


def write_philips_tiff(
    path: Path, image: np.ndarray, mpp: float, levels: int | None = None
) -> Path:
    """A Philips TIFF (OpenSlide "philips") of `image`: JPEG tiles, 2× levels, and,
    as Philips writes them, every level padded to whole tiles (white) and the
    levels' true sizes known only from their pixel spacings in the XML."""
    import tifffile

    data = _levels(image)[: levels or None]
    spacings = [mpp * 2**level / 1000 for level in range(len(data))]
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        for level, pixels in enumerate(data):
            h, w = (-(-n // TILE_PX) * TILE_PX for n in pixels.shape[:2])
            tw.write(
                _tiles(pixels, TILE_PX, fill=255), shape=(h, w, 3), dtype=np.uint8,
                tile=(TILE_PX, TILE_PX), photometric="rgb", compression="jpeg",
                compressionargs={"level": 90}, subfiletype=0 if level == 0 else 1,
                description=_philips_xml(spacings) if level == 0 else None,
                software="Philips DP v1.0" if level == 0 else None, metadata=None,
            )  # fmt: skip
    return path


def dicom_base(sop_class: str, transfer_syntax: str, series_uid: str):
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
            for block in _tiles(data, tile, fill=255)
        ]
        ds = dicom_base(WSI_SOP_CLASS, JPEGBaseline8Bit, series_uid)
        ds.Modality = "SM"
        ds.ImageType = [
            "ORIGINAL" if level == 0 else "DERIVED",
            "PRIMARY",
            "VOLUME",
            "NONE" if level == 0 else "RESAMPLED",
        ]
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
        files["philips"] = write_philips_tiff(Path(tmp) / "content.tiff", image, mpp)
        folder = Path(tmp) / "dicom"
        write_dicom_wsi(folder, image, levels=len(_levels_shapes(image)), mpp=mpp, quality=90)
        files["dicom"] = folder / "level-0.dcm"
        del image
        for name, path in files.items():
            results[name] = _summary(bench_read(quick=quick, slide=str(path)))
        results["openslide_only"] = _summary(
            bench_read(quick=quick, slide=str(files["tiff_jpeg"]), direct=False)
        )
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
        "dask_ratio_1t": result["dask_ratio_1t"],
        "dask_ratio_parallel": result["dask_ratio_parallel"],
    }
