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
* ``ndpi``: a Hamamatsu NDPI (:func:`write_ndpi`: one JPEG per level with restart
  markers every 256 columns, McuStarts);
* ``dicom``: a DICOM WSI series (:func:`write_dicom_wsi`: one file per level,
  JPEG frames, ``TILED_FULL``).

No writer for MIRAX exists here, so it and other formats without raw tiles in a
TIFF are not measured; ``openslide_only`` stands in for them: the JPEG TIFF
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


def _jpeg_with_restarts(pixels: np.ndarray, tile_px: int) -> tuple[bytes, list[int]]:
    """A JPEG (quality 90, 4:2:2) with a restart marker every `tile_px` columns, and
    the byte offset where each restart interval's data starts."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    # 4:2:2: MCUs of 16 × 8 px. OpenSlide reads restart intervals of 4:2:0 JPEGs
    # (16 × 16 MCUs) wrongly ("found marker 0xd9 instead of RST0"): not what NDPI holds.
    Image.fromarray(pixels).save(
        buffer, "JPEG", quality=90, subsampling=1, restart_marker_blocks=tile_px // 16
    )
    data = buffer.getvalue()
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    raw = np.frombuffer(data, np.uint8)
    ff = np.flatnonzero(raw[:-1] == 0xFF)
    restarts = ff[(raw[ff + 1] >= 0xD0) & (raw[ff + 1] <= 0xD7) & (ff > start)]
    return data, [start] + [int(r) + 2 for r in restarts]


def write_ndpi(path: Path, image: np.ndarray, mpp: float, levels: int | None = None) -> Path:
    """A Hamamatsu NDPI of `image`: one JPEG per 2× level with a restart marker every
    :data:`TILE_PX` columns (OpenSlide's and tifffile's tiles: 256 × 8 px), their
    offsets in McuStarts (65426), NDPI's 64-bit IFD layout, white padding so every
    level is whole tiles, mpp in the resolution tags, source lens 20×."""
    import struct

    out = bytearray(b"II" + struct.pack("<HQ", 42, 0))
    pointer = 4  # where the next IFD's offset goes (8 bytes in NDPI)

    def blob(data: bytes) -> int:
        at = len(out)
        out.extend(data + b"\0" * (len(data) % 2))
        return at

    # Level 0 padded (white) so that every level is whole tiles and exactly 2× the next.
    count = len(_levels_shapes(image)[: levels or None])
    unit = TILE_PX << (count - 1)
    h0, w0 = (-(-n // unit) * unit for n in image.shape[:2])
    base = np.full((h0, w0, 3), 255, np.uint8)
    base[: image.shape[0], : image.shape[1]] = image
    lens = struct.unpack("<I", struct.pack("<f", 20.0))[0]
    for level, padded in enumerate(_levels(base)[:count]):
        jpeg, starts = _jpeg_with_restarts(padded, TILE_PX)
        h, w = padded.shape[:2]
        strip = blob(jpeg)
        per_cm = 1e4 / (mpp * 2**level)
        # (tag, type, count, value or offset): 2 ASCII, 3 SHORT, 4 LONG, 5 RATIONAL,
        # 9 SLONG, 11 FLOAT; sorted by tag.
        entries = [
            (256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, blob(struct.pack("<3H", 8, 8, 8))),
            (259, 3, 1, 7), (262, 3, 1, 6), (271, 2, 10, blob(b"Hamamatsu\0")),
            (273, 4, 1, strip), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(jpeg)),
            (282, 5, 1, blob(struct.pack("<II", round(per_cm * 1000), 1000))),
            (283, 5, 1, blob(struct.pack("<II", round(per_cm * 1000), 1000))),
            (296, 3, 1, 3), (65420, 4, 1, 1), (65421, 11, 1, lens), (65422, 9, 1, 0),
            (65423, 9, 1, 0), (65424, 9, 1, 0),
            (65426, 4, len(starts), blob(struct.pack(f"<{len(starts)}I", *starts))),
        ]  # fmt: skip
        ifd = len(out)
        struct.pack_into("<Q", out, pointer, ifd)
        out.extend(struct.pack("<H", len(entries)))
        for tag, kind, count, value in entries:
            out.extend(struct.pack("<HHII", tag, kind, count, value))
        pointer = len(out)
        out.extend(struct.pack("<Q", 0) + b"\0" * (4 * len(entries)))  # next IFD, high bits
    Path(path).write_bytes(bytes(out))
    return Path(path)


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
        files["ndpi"] = write_ndpi(Path(tmp) / "content.ndpi", image, mpp)
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
