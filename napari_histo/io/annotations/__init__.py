"""Annotation files: QuPath-compatible GeoJSON, ASAP XML, atomic writes, autosave.

Coordinates in every file are level-0 pixel (x, y), as QuPath and ASAP write
them. Readers never write anything; writers replace files atomically (temp file
+ fsync + rename), so a crash leaves either the old or the new file, never a
partial one. See ``docs/annotations.md``.

:mod:`.geojson` and :mod:`.asap` hold the two formats; this package picks one by
suffix; :mod:`.autosave` saves in the background.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from napari_histo.annotations.model import Annotation
from napari_histo.io.annotations._common import (
    MAX_COORD_PX,
    MAX_FILE_BYTES,
    AnnotationFile,
    PathLike,
)
from napari_histo.io.annotations.asap import read_asap_xml, write_asap_xml
from napari_histo.io.annotations.geojson import read_geojson, write_geojson

__all__ = [
    "MAX_COORD_PX",
    "MAX_FILE_BYTES",
    "AnnotationFile",
    "read_annotations",
    "read_asap_xml",
    "read_geojson",
    "write_annotations",
    "write_asap_xml",
    "write_geojson",
]


def read_annotations(path: PathLike) -> AnnotationFile:
    """Read ``.xml`` as ASAP XML, anything else as GeoJSON."""
    path = Path(path)
    return read_asap_xml(path) if path.suffix.lower() == ".xml" else read_geojson(path)


def write_annotations(path: PathLike, annotations: Iterable[Annotation], backups: int = 0) -> Path:
    """Write ``.xml`` as ASAP XML, anything else as GeoJSON."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        return write_asap_xml(path, annotations, backups)
    return write_geojson(path, annotations, backups)
