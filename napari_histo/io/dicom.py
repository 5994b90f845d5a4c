"""DICOM whole-slide images: cheap checks and finding the file OpenSlide opens.

OpenSlide (4.0 and later) reads DICOM WSI (VL Whole Slide Microscopy Image
Storage) through libdicom. Given any one file of a series it scans that
file's folder for the other files of the same SeriesInstanceUID (one file per
pyramid level, plus label / overview / thumbnail images). This module only
decides whether a file or folder holds such a series and which file to hand to
OpenSlide; pixels are always OpenSlide's.

Only the file meta group (and, for folders, a handful of header elements) is
read, never pixel data, so the checks are cheap even for gigapixel files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from napari_histo.errors import SlideError

__all__ = [
    "WSI_SOP_CLASS",
    "DicomLevelFile",
    "folder_has_dicom",
    "has_dicom_magic",
    "is_dicom_wsi",
    "read_level_file",
    "series_file",
    "wsi_problem",
]

#: SOP class UID of VL Whole Slide Microscopy Image Storage.
WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"

#: "DICM" follows a 128-byte preamble in every DICOM Part 10 file.
_MAGIC_OFFSET = 128
_MAGIC = b"DICM"

#: Header elements read from each file of a folder to pick the file to open.
_FOLDER_TAGS = (
    "SOPClassUID",
    "SeriesInstanceUID",
    "ImageType",
    "TotalPixelMatrixColumns",
    "TotalPixelMatrixRows",
)


def has_dicom_magic(path: Path) -> bool:
    """Whether `path` is a regular file with "DICM" at byte 128 (a DICOM Part 10 file)."""
    try:
        with path.open("rb") as f:
            f.seek(_MAGIC_OFFSET)
            return f.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else "an unknown SOP class"


def wsi_problem(path: Path) -> str | None:
    """Why the DICOM file `path` is not a whole-slide image, or None when it is one.

    Reads the file meta group only (the first few hundred bytes).

    Parameters
    ----------
    path : Path
        A file with the DICOM magic (see :func:`has_dicom_magic`).

    Returns
    -------
    str or None
        A short reason ("is a DICOM CT Image Storage object (SOP class ...), not a
        whole-slide image", "is a corrupt or truncated DICOM file (...)"), or None.
    """
    from pydicom.errors import InvalidDicomError
    from pydicom.filereader import read_file_meta_info

    try:
        meta = read_file_meta_info(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as err:
        return f"is a corrupt or truncated DICOM file ({_one_line(err)})"
    uid = str(meta.get("MediaStorageSOPClassUID", "") or "")
    if not uid:
        return "is a corrupt DICOM file (no SOP class UID in its file meta)"
    if uid != WSI_SOP_CLASS:
        return (
            f"is a DICOM {_sop_class_name(uid)} object (SOP class {uid}), not a whole-slide image"
        )
    return None


def is_dicom_wsi(path: Path) -> bool:
    """Cheap check: a DICOM file whose SOP class is VL Whole Slide Microscopy Image Storage."""
    return has_dicom_magic(path) and wsi_problem(path) is None


@dataclass(frozen=True)
class DicomLevelFile:
    """Header facts about one DICOM WSI file of a folder.

    Attributes
    ----------
    path : Path
        The file.
    series_uid : str
        SeriesInstanceUID: the slide it belongs to.
    image_type : tuple of str
        ImageType values; the third is VOLUME for pyramid levels, LABEL,
        OVERVIEW or THUMBNAIL for associated images.
    width, height : int
        TotalPixelMatrixColumns and TotalPixelMatrixRows in px.
    """

    path: Path
    series_uid: str
    image_type: tuple[str, ...]
    width: int
    height: int

    @property
    def is_volume(self) -> bool:
        """Whether this file is a pyramid level (ImageType VOLUME)."""
        return len(self.image_type) > 2 and self.image_type[2].upper() == "VOLUME"


def read_level_file(path: Path) -> DicomLevelFile | None:
    """Header facts of `path`, or None when it is not a readable DICOM WSI file."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    if not path.is_file() or not is_dicom_wsi(path):
        return None
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=list(_FOLDER_TAGS))
        image_type = ds.get("ImageType", ())
        image_type = (image_type,) if isinstance(image_type, str) else tuple(image_type)
        return DicomLevelFile(
            path=path,
            series_uid=str(ds.get("SeriesInstanceUID", "")),
            image_type=tuple(str(v) for v in image_type),
            width=int(ds.get("TotalPixelMatrixColumns", 0) or 0),
            height=int(ds.get("TotalPixelMatrixRows", 0) or 0),
        )
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
        return None


def series_file(folder: Path) -> Path:
    """The file of the DICOM WSI series in `folder` that OpenSlide should open.

    That is the largest pyramid level (ImageType VOLUME, largest
    TotalPixelMatrix): OpenSlide finds the series' other files itself.

    Parameters
    ----------
    folder : Path
        A folder holding the files of one DICOM WSI series (other files are ignored).

    Returns
    -------
    Path
        The level-0 file.

    Raises
    ------
    SlideError
        If the folder holds no DICOM WSI level, or more than one series.
    """
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        raise SlideError(folder, f"cannot be listed ({err.strerror or err})") from err
    files = [f for f in map(read_level_file, entries) if f is not None]
    volumes = [f for f in files if f.is_volume and f.width > 0 and f.height > 0]
    if not volumes:
        what = "DICOM WSI files but no pyramid level (VOLUME)" if files else "no DICOM WSI files"
        raise SlideError(folder, f"is a directory with {what}, not a slide")
    series = sorted({f.series_uid for f in volumes})
    if len(series) > 1:
        raise SlideError(
            folder,
            f"holds {len(series)} DICOM WSI series ({', '.join(series)}); "
            "open one of its .dcm files instead",
        )
    return max(volumes, key=lambda f: (f.width * f.height, f.path.name)).path


def folder_has_dicom(folder: Path) -> bool:
    """Cheap check for the reader: does `folder` hold at least one DICOM WSI file?"""
    try:
        return any(p.is_file() and is_dicom_wsi(p) for p in folder.iterdir())
    except OSError:
        return False


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__
