"""napari-histo: whole-slide histopathology in napari.

The package root imports neither Qt nor napari, so the core (``io``, ``tissue``,
``tiling``, ``inference``, ``training``) runs from scripts, tests and workers
without a display.
"""

from napari_histo.errors import (
    AnnotationError,
    HistoError,
    RegionError,
    SlideError,
    StoreError,
    WeightsError,
)

__version__ = "0.1.0"

__all__ = [
    "AnnotationError",
    "HistoError",
    "RegionError",
    "SlideError",
    "StoreError",
    "WeightsError",
    "__version__",
]
