"""Direct frame decoding for DICOM WSI levels (the fast path of Slide, as for TIFF).

A DICOM whole-slide image is a series of files, one per pyramid level, each
holding its tiles as the frames of a multi-frame image. When a level is
``TILED_FULL`` (frames in row-major tile order, one focal plane, one optical
path) and its frames are JPEG baseline, JPEG 2000 or uncompressed, the byte
range of every frame is found once from the encapsulated Pixel Data's item
headers (never its pixels), and a frame is decoded with imagecodecs straight
from the file. The result is a :class:`~napari_histo.io.tiff_tiles.TiffLevelTiles`
whose ``decode`` decodes a DICOM frame; Slide verifies it against OpenSlide on
the first read of each level and falls back to OpenSlide on any difference.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from napari_histo.io.dicom import read_level_file
from napari_histo.io.tiff_tiles import TiffLevelTiles

__all__ = ["find_dicom_level_tiles"]

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
UNCOMPRESSED = ("1.2.840.10008.1.2.1",)  # explicit VR little endian
_ITEM = 0xE000FFFE  # (FFFE,E000) read as a little-endian uint32


def _decoder(transfer_syntax: str) -> Callable[..., tuple[np.ndarray, None, None]] | None:
    """A tifffile-style ``decode(data, index, jpegtables=None)`` for the syntax, or None."""
    import imagecodecs

    if transfer_syntax == JPEG_BASELINE:
        codec: Callable[[bytes], np.ndarray] = imagecodecs.jpeg8_decode
    elif transfer_syntax in JPEG_2000:
        codec = imagecodecs.jpeg2k_decode
    else:
        return None

    def decode(data: bytes, index: int, jpegtables: bytes | None = None) -> tuple[Any, None, None]:
        return codec(data), None, None

    return decode


def _raw_decoder(tile_h: int, tile_w: int) -> Callable[..., tuple[np.ndarray, None, None]]:
    def decode(data: bytes, index: int, jpegtables: bytes | None = None) -> tuple[Any, None, None]:
        return np.frombuffer(data, np.uint8).reshape(tile_h, tile_w, 3), None, None

    return decode


def _frame_table(f: BinaryIO, frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Offsets and lengths of the frames of encapsulated Pixel Data at the file position.

    The position is the Pixel Data element's tag. Only one fragment per frame is
    supported (the rule for JPEG baseline tiles); anything else returns None.
    """
    header = f.read(12)
    if len(header) != 12 or header[4:6] not in (b"OB", b"OW"):
        return None
    if struct.unpack("<I", header[8:12])[0] != 0xFFFFFFFF:
        return None  # not encapsulated
    offsets, lengths = [], []
    first = True
    while True:
        item = f.read(8)
        if len(item) != 8:
            return None
        tag, length = struct.unpack("<II", item)
        if tag == 0xE0DDFFFE:  # sequence delimiter
            break
        if tag != _ITEM or length == 0xFFFFFFFF:
            return None
        position = f.tell()
        if first:  # the basic offset table, possibly empty
            first = False
        else:
            offsets.append(position)
            lengths.append(length)
        f.seek(length, os.SEEK_CUR)
    if len(offsets) != frames:
        return None
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


def _level_tiles(path: Path, key: int) -> tuple[tuple[int, int, int, int], TiffLevelTiles] | None:
    """``((width, height, tile_w, tile_h), tiles)`` of one WSI level file, or None.

    `path` is a pyramid level of the series (:func:`~napari_histo.io.dicom.read_level_file`).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with path.open("rb") as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            if str(ds.get("DimensionOrganizationType", "")).upper() != "TILED_FULL":
                return None
            if int(ds.get("TotalPixelMatrixFocalPlanes", 1)) != 1:
                return None
            if len(ds.get("OpticalPathSequence", [])) > 1:
                return None
            if int(ds.get("SamplesPerPixel", 0)) != 3 or int(ds.get("BitsAllocated", 0)) != 8:
                return None
            width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
            tile_w, tile_h = int(ds.Columns), int(ds.Rows)
            frames = int(ds.get("NumberOfFrames", 1))
            across, down = -(-width // tile_w), -(-height // tile_h)
            if frames != across * down:
                return None
            syntax = str(ds.file_meta.TransferSyntaxUID)
            if syntax in UNCOMPRESSED:
                if str(ds.get("PhotometricInterpretation", "")) != "RGB":
                    return None
                if int(ds.get("PlanarConfiguration", 0)) != 0:
                    return None
                start = f.tell() + 12
                size = tile_w * tile_h * 3
                offsets = start + size * np.arange(frames, dtype=np.int64)
                lengths = np.full(frames, size, np.int64)
                decode = _raw_decoder(tile_h, tile_w)
            else:
                decode = _decoder(syntax)
                table = _frame_table(f, frames) if decode is not None else None
                if table is None:
                    return None
                offsets, lengths = table
    except (InvalidDicomError, OSError, ValueError, AttributeError, KeyError, TypeError,
            ZeroDivisionError, struct.error):  # fmt: skip
        return None
    if int((offsets + lengths).max(initial=0)) > path.stat().st_size:
        return None  # truncated: OpenSlide reports it
    tiles = TiffLevelTiles(
        path=path, page_index=key, width=width, height=height, tile_w=tile_w, tile_h=tile_h,
        offsets=offsets, bytecounts=lengths, jpegtables=None, decode=decode,
    )  # fmt: skip
    return (width, height, tile_w, tile_h), tiles


def find_dicom_level_tiles(
    path: Path,
    level_dimensions: tuple[tuple[int, int], ...],
    tile_sizes: tuple[tuple[int, int] | None, ...],
) -> tuple[TiffLevelTiles | None, ...]:
    """Match each slide level to a DICOM file of the series in `path`'s folder.

    Parameters
    ----------
    path : Path
        One ``.dcm`` file of the series (the one OpenSlide opened).
    level_dimensions : tuple of (int, int)
        ``(width, height)`` of each level, as OpenSlide reports.
    tile_sizes : tuple of (int, int) or None
        ``(tile_w, tile_h)`` of each level as OpenSlide reports, None if unknown.

    Returns
    -------
    tuple
        One frame table per level (``page_index`` = level, the tile cache's
        key), or None where no file matches unambiguously.
    """
    opened = read_level_file(path)
    if not hasattr(os, "pread") or opened is None:
        return (None,) * len(level_dimensions)
    try:
        # Any file of the folder (series are often written without a .dcm suffix).
        others = sorted(p for p in path.parent.iterdir() if p.name[0] != ".")
    except OSError:
        return (None,) * len(level_dimensions)
    levels = [read_level_file(p) for p in others]
    candidates = [f.path for f in levels if f and f.is_volume and f.series_uid == opened.series_uid]
    described = [d for d in (_level_tiles(c, 0) for c in candidates) if d is not None]
    found: list[TiffLevelTiles | None] = []
    for level, ((width, height), tile) in enumerate(zip(level_dimensions, tile_sizes, strict=True)):
        matches = [
            tiles
            for (w, h, tw, th), tiles in described
            if (w, h) == (width, height) and (tile is None or (tw, th) == tuple(tile))
        ]
        # page_index is the tile cache's key: one per level, as every file's frames start at 0.
        found.append(replace(matches[0], page_index=level) if len(matches) == 1 else None)
    return tuple(found)
