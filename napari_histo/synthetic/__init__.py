"""Deterministic procedural H&E-like whole-slide images with ground truth.

:func:`write_synthetic_slide` writes an Aperio-style pyramidal ``.svs`` (OpenSlide vendor
``aperio``, 40x, 0.25 µm/px by default) and a zarr v3 ground truth beside it
(:func:`truth_path_for`), read back with :func:`read_truth`. Everything is a function of
the seed: the same seed gives the same pixels whatever the number of worker processes.

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> slide = write_synthetic_slide(d / "s.svs", 1024, seed=1, workers=1)
>>> slide.width, slide.truth_path.name
(1024, 's.truth.zarr')
>>> read_truth(slide.truth_path).tissue.shape
(64, 64)
"""

from napari_histo.synthetic._render import CLASSES
from napari_histo.synthetic._truth import SyntheticTruth, read_truth, truth_path_for
from napari_histo.synthetic._write import SyntheticSlide, write_synthetic_slide

__all__ = [
    "CLASSES",
    "SyntheticSlide",
    "SyntheticTruth",
    "read_truth",
    "truth_path_for",
    "write_synthetic_slide",
]
