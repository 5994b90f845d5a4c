"""Score a tumor model version on labelled tiles: Dice, IoU, AUROC, ECE, uncertainty.

Plain functions over arrays: :func:`score_tiles` runs an ensemble on each tile
(:func:`~napari_histo.inference.tiles.predict_tile`) and returns one row per
tile plus pooled figures; pooled figures count every labelled pixel of every
tile once (pixels labelled 255 are unknown and left out).

On files: :func:`evaluate_folder` pairs a folder of images with a folder of
binary tumor masks by file name, checks every pair before any model runs (one
:class:`EvaluationError` line naming the file and the problem), scores them and
writes a per-tile CSV, a summary JSON and a reliability diagram (PNG). It is
the ``napari-histo evaluate`` command; see :func:`read_mask` for what counts as
a binary mask. :func:`evaluate_slide` does the same on an annotated slide.

Modules, each importing only those above it:

- ``scores``: scoring of labelled tiles (numpy, no files);
- ``files``: image/mask pairs of two folders, reading and checking them;
- ``report``: :class:`Evaluation` and its CSV, JSON and PNG files;
- ``folder``: :func:`evaluate_folder`;
- ``slide``: :func:`evaluate_slide`, :func:`slide_labels`.
"""

from __future__ import annotations

from napari_histo.evaluate.files import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from napari_histo.evaluate.files import MASK_SUFFIXES as MASK_SUFFIXES
from napari_histo.evaluate.files import MAX_MID_GREY as MAX_MID_GREY
from napari_histo.evaluate.files import MAX_TILE_PIXELS as MAX_TILE_PIXELS
from napari_histo.evaluate.files import MID_GREY as MID_GREY
from napari_histo.evaluate.files import (
    EvaluationError,
    TilePair,
    find_pairs,
    read_image,
    read_mask,
)
from napari_histo.evaluate.folder import evaluate_folder
from napari_histo.evaluate.report import (
    CSV_COLUMNS,
    Evaluation,
    write_reliability_png,
)
from napari_histo.evaluate.report import write_outputs as write_outputs
from napari_histo.evaluate.scores import UNKNOWN as UNKNOWN
from napari_histo.evaluate.scores import (
    LabelledTile,
    TileScore,
    pooled_scores,
    reliability_table,
    score_maps,
    score_tiles,
)
from napari_histo.evaluate.slide import evaluate_slide, slide_labels

__all__ = [
    "CSV_COLUMNS",
    "Evaluation",
    "EvaluationError",
    "LabelledTile",
    "TilePair",
    "TileScore",
    "evaluate_folder",
    "evaluate_slide",
    "find_pairs",
    "pooled_scores",
    "read_image",
    "read_mask",
    "reliability_table",
    "score_maps",
    "score_tiles",
    "slide_labels",
    "write_reliability_png",
]

# The `X as X` imports are public names the single module had outside `__all__`.
