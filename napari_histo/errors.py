"""Error hierarchy.

Every error raised for bad *data* (a file, a weights blob, an annotation) derives
from :class:`HistoError` and names the offending file and the problem in one
line. Programming mistakes (wrong argument types or values) raise the built-in
``TypeError`` / ``ValueError`` instead.
"""

from __future__ import annotations

from os import PathLike


class HistoError(Exception):
    """Base class for napari-histo data errors."""


class SlideError(HistoError):
    """A slide file cannot be opened or read.

    Parameters
    ----------
    path : str or PathLike
        The slide file.
    reason : str
        What is wrong, in a few words; line breaks (from library messages)
        are folded so the message stays one line.
    """

    def __init__(self, path: str | PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{self.path}: {reason}")


class WeightsError(HistoError):
    """Model weights or a model card are missing, corrupt or unsafe."""


class AnnotationError(HistoError):
    """An annotation file is malformed."""


class StoreError(HistoError):
    """A result store is unreadable, unwritable or inconsistent."""


class RegionError(HistoError, ValueError):
    """A level-0 region ``(x, y, w, h)`` is malformed or does not lie inside the slide.

    One type for every job that takes a region (inference, nuclei, fine-tuning
    views); a :class:`ValueError` too, so callers catching either see it.
    Raised by :func:`napari_histo.frames.check_region_l0`.
    """


class ExportError(HistoError):
    """A result, a lesion file or a report cannot be written (the message names the path)."""


class NoRunError(StoreError):
    """A slide has no complete tumor run in its result store ("run napari-histo infer first")."""
