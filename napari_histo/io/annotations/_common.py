"""What the GeoJSON and ASAP readers/writers share: limits, the result type, colours, checks."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_histo.annotations.model import DEFAULT_CLASSES, Annotation
from napari_histo.errors import AnnotationError

__all__ = [
    "CLASS_COLORS",
    "GRAY",
    "MAX_COORD_PX",
    "MAX_FILE_BYTES",
    "AnnotationFile",
    "PathLike",
    "Skip",
    "class_color",
    "is_jsonable",
    "nonfinite",
    "read_limited",
]

#: Files larger than this are refused (bytes).
MAX_FILE_BYTES = 200 * 1024 * 1024
#: Largest accepted |coordinate|, level-0 px.
MAX_COORD_PX = 1e7
CLASS_COLORS = {c.name: c.color for c in DEFAULT_CLASSES}
GRAY = (128, 128, 128)
PathLike = str | os.PathLike[str]


@dataclass
class AnnotationFile:
    """What a reader found.

    Attributes
    ----------
    annotations : list of Annotation
        Every feature that could be read.
    problems : list of str
        One line per problem, ``"feature 17: skipped: ..."`` for a feature that
        was not loaded, ``"feature 17: warning: ..."`` for one loaded anyway.
    """

    annotations: list[Annotation] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Skip(Exception):
    """A feature cannot be loaded (internal; becomes one line of `problems`)."""


def class_color(ann: Annotation) -> tuple[int, int, int]:
    return ann.color or CLASS_COLORS.get(ann.label, GRAY)


def nonfinite(_name: str) -> float:
    return math.nan  # rejected per feature by the finiteness check on coordinates


def read_limited(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise AnnotationError(
                f"{path}: file is {size / 2**20:.0f} MB, larger than the "
                f"{MAX_FILE_BYTES / 2**20:.0f} MB limit"
            )
        return path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def is_jsonable(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(is_jsonable(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return all(is_jsonable(v, depth + 1) for v in value)
    return True
