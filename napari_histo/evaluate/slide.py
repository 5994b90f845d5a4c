"""Score an ensemble on an annotated slide (QuPath GeoJSON or ASAP XML): ``evaluate_slide``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo._atomic import json_safe
from napari_histo.evaluate._common import (
    _check_out_dir,
    _check_settings,
    _load_members,
)
from napari_histo.evaluate.files import EvaluationError
from napari_histo.evaluate.report import Evaluation, write_outputs
from napari_histo.evaluate.scores import (
    UNKNOWN,
    TileScore,
    reliability_table,
    score_maps,
    top_fifth,
)
from napari_histo.models import LoadedModel

#: Annotation classes of an evaluated slide, in drawing order (later wins):
#: tumor inside a large non-tumor region counts as tumor; ``ignore`` always wins.
_SLIDE_CLASSES = (("non-tumor", 0), ("tumor", 1), ("ignore", UNKNOWN))
#: Labelled pixels kept for the pooled AUROC / ECE / reliability of a slide.
_SLIDE_POOL_PX = 200_000


def slide_labels(
    annotations: Sequence[Any],
    shape: tuple[int, int],
    downsample: float,
    origin_l0: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Tumor labels of annotations on a grid: 1 tumor, 0 non-tumor, 255 unknown.

    ``tumor`` drawn over ``non-tumor``, ``ignore`` over both; other classes and
    points are left out (unknown).

    Parameters
    ----------
    annotations : sequence of Annotation
        Level-0 annotations.
    shape : (rows, cols)
        Grid shape, px.
    downsample : float
        Level-0 px per grid px.
    origin_l0 : (x, y)
        Level-0 position of the grid's top-left corner.

    Returns
    -------
    ndarray of uint8, `shape`
    """
    from napari_histo.annotations.model import rasterize

    labels = np.full(tuple(shape), UNKNOWN, dtype=np.uint8)
    for name, value in _SLIDE_CLASSES:
        group = [a for a in annotations if a.label == name and a.kind != "point"]
        if group:
            drawn = rasterize(group, shape, downsample, origin=origin_l0, classes={name: 1})
            labels[drawn.astype(bool)] = value
    return labels


def _slide_annotations(path: Path) -> tuple[list[Any], list[str]]:
    from napari_histo.io.annotations import read_annotations

    if not path.is_file():
        raise EvaluationError(f"{path}: no such annotation file")
    found = read_annotations(path)
    anns = [a for a in found.annotations if a.kind != "point"]
    names = {name for name, _ in _SLIDE_CLASSES}
    for i, ann in enumerate(anns):
        if ann.label not in names:
            raise EvaluationError(
                f"{path}: annotation {i} ({ann.id}): class {ann.label!r} is not one of "
                f"{sorted(names)}"
            )
    if not any(a.label in ("tumor", "non-tumor") for a in anns):
        raise EvaluationError(f"{path}: no tumor or non-tumor region to evaluate against")
    return anns, [f"{path.name}: {p}" for p in found.problems]


def evaluate_slide(
    slide_path: str | os.PathLike[str],
    annotations_path: str | os.PathLike[str],
    members: Sequence[LoadedModel | str | os.PathLike[str]],
    *,
    tta: int = 1,
    stain: str | None = "card",
    out_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score an ensemble on an annotated slide (QuPath GeoJSON or ASAP XML).

    The engine (:func:`~napari_histo.inference.engine.infer_slide`) runs over
    the bounding box of the annotations, into a temporary result store; the
    annotations are rasterised on the result grid (µm/px of the models):
    ``tumor`` → tumor, ``non-tumor`` → not, ``ignore`` and unannotated pixels
    are left out. One row (the slide) plus pooled figures, written like
    :func:`evaluate_folder`'s.

    Parameters
    ----------
    slide_path : str or PathLike
        A slide with its µm/px in the metadata.
    annotations_path : str or PathLike
        Level-0 annotations of classes ``tumor``, ``non-tumor``, ``ignore``.
    members, tta, stain, out_dir
        As :func:`evaluate_folder`; stain normalisation is fitted once per slide.
    device : str
        Engine device ("auto", "cpu", "cuda", ...).
    progress : callable(done, total), optional
        Tiles done of total.

    Raises
    ------
    EvaluationError
        Missing or unreadable annotations, an unknown class, no tumor or
        non-tumor region, annotations outside the slide.
    HistoError
        The slide cannot be read or has no µm/px.
    """
    import tempfile

    from napari_histo.inference.engine import EngineConfig, infer_slide
    from napari_histo.io.slide import Slide
    from napari_histo.stain import resolve as resolve_stain

    start = time.monotonic()
    _check_settings(1.0, tta)
    slide_path, annotations_path = Path(slide_path), Path(annotations_path)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out_dir(out)
    anns, notes = _slide_annotations(annotations_path)
    with Slide(slide_path) as slide:
        slide.require_mpp()
        width, height = slide.dimensions
    x0 = max(0, math.floor(min(a.bounds[0] for a in anns)))
    y0 = max(0, math.floor(min(a.bounds[1] for a in anns)))
    x1 = min(width, math.ceil(max(a.bounds[2] for a in anns)))
    y1 = min(height, math.ceil(max(a.bounds[3] for a in anns)))
    if x1 <= x0 or y1 <= y0:
        raise EvaluationError(
            f"{annotations_path}: the annotations lie outside the slide ({width} x {height} px)"
        )
    members = _load_members(members)
    # float32, as evaluate on tiles: scores do not depend on the CPU they ran on
    config = EngineConfig(
        tta=tta, stain="none" if stain is None else stain, device=device, amp=False
    )
    resolve_stain(config.stain, [m.card for m in members])
    with tempfile.TemporaryDirectory(prefix="napari-histo-evaluate-") as tmp:
        generator = infer_slide(
            slide_path, members, region=(x0, y0, x1 - x0, y1 - y0), config=config, out_dir=tmp
        )
        while True:
            try:
                event = next(generator)
            except StopIteration as stop:
                result = stop.value
                break
            if progress is not None:
                progress(event.done, event.total)
        geometry = result.run.geometry
        prob = np.asarray(result.run.array("probability")[...], dtype=np.float32)
        epistemic = np.asarray(result.run.array("epistemic")[...], dtype=np.float32)
        stain_setting = result.run.settings.get("stain")
    labels = slide_labels(anns, geometry.shape, geometry.downsample, geometry.origin_l0)
    known = labels != UNKNOWN
    if not known.any():
        raise EvaluationError(
            f"{annotations_path}: the annotations cover no pixel at the models' "
            f"{members[0].card.input_mpp:g} µm/px"
        )
    p, t, e = prob[known], labels[known] == 1, epistemic[known]
    figures = score_maps(p, t, e)
    row = TileScore(
        name=slide_path.name,
        **figures,
        mean_probability=float(p.mean()),
        tile_score=top_fifth(p),
        tile_label=None,
    )
    stride = max(1, p.size // _SLIDE_POOL_PX)
    pooled = {
        "probability": p[::stride],
        "truth": t[::stride],
        "epistemic": e[::stride],
        "tile_score": np.zeros(0),
        "tile_label": np.zeros(0, np.int64),
    }
    figures_json = {k: round(float(v), 4) for k, v in figures.items()}
    summary: dict[str, Any] = {
        "slide": str(slide_path),
        "annotations": str(annotations_path),
        "models": [
            {"name": m.card.name, "version": m.card.version, "sha256": m.card.sha256}
            for m in members
        ],
        "model_mpp": members[0].card.input_mpp,
        "region_l0": [x0, y0, x1 - x0, y1 - y0],
        "tta": tta,
        "stain": None if not stain_setting else {
            "method": stain_setting["method"], "target": stain_setting["target"]
        },
        "tiles": 1,
        "pooled": figures_json,
        "mean_per_tile": figures_json,
        "reliability": reliability_table(pooled),
        "notes": notes,
        "threshold": 0.5,
        "seconds": round(time.monotonic() - start, 2),
    }  # fmt: skip
    evaluation = Evaluation([row], json_safe(summary))
    if out is not None:
        return Evaluation([row], evaluation.summary, write_outputs(evaluation, out))
    return evaluation
