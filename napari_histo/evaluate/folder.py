"""Score an ensemble on a folder of labelled tiles: ``evaluate_folder``."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo._atomic import json_safe
from napari_histo.evaluate._common import (
    _check_out_dir,
    _check_settings,
    _load_members,
)
from napari_histo.evaluate.files import check_pair, find_pairs
from napari_histo.evaluate.report import Evaluation, write_outputs
from napari_histo.evaluate.scores import (
    LabelledTile,
    pooled_scores,
    reliability_table,
    score_tiles,
)
from napari_histo.models import LoadedModel
from napari_histo.stain import StainNormaliser


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else float("nan")


def evaluate_folder(
    images_dir: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str],
    members: Sequence[LoadedModel | str | os.PathLike[str]],
    *,
    mpp: float,
    tta: int = 1,
    stain: object = "card",
    out_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score an ensemble on a folder of labelled tiles.

    Parameters
    ----------
    images_dir, masks_dir : str or PathLike
        Folders of RGB tiles and of binary tumor masks, paired by name
        (:func:`find_pairs`; masks as :func:`read_mask` describes).
    members : sequence of LoadedModel or card paths
        Tumor segmentation models (any versions) with the same ``input_mpp``;
        card paths are loaded after the input files are checked.
    mpp : float
        µm per pixel of the tiles, 0.05–50; tiles are resampled to the models'.
    tta : {1, 2, 4, 8}
        Dihedral test-time transforms.
    stain : {"card", "none", "macenko", "reinhard"}
        Stain normalisation, fitted per tile (see :func:`napari_histo.stain.resolve`).
    out_dir : str or PathLike, optional
        Where to write ``tiles.csv`` (:data:`CSV_COLUMNS`), ``summary.json``
        and ``reliability.png`` (each atomically; the folder is created).
    progress : callable(done, total), optional
        Called after each tile.

    Returns
    -------
    Evaluation

    Raises
    ------
    EvaluationError
        Bad input files, one line naming the file and the problem; every pair
        is read and checked before any model runs, and nothing is written.
    ValueError, TypeError
        Bad `mpp`, `tta`, `stain` or `members`.
    """
    from napari_histo.stain import resolve as resolve_stain

    start = time.monotonic()
    mpp = _check_settings(mpp, tta)
    if stain is not None and not isinstance(stain, str | StainNormaliser):
        raise TypeError(f"`stain` must be a setting name or StainNormaliser, got {stain!r}")
    resolve_stain(stain, ())  # a known setting
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out_dir(out)
    pairs = find_pairs(images_dir, masks_dir)
    for pair in pairs:  # check everything first: no model time spent on a bad folder
        check_pair(pair)
    members = _load_members(members)
    normaliser = resolve_stain(stain, [m.card for m in members])

    def tiles() -> Iterator[LabelledTile]:
        for pair in pairs:
            rgb, mask = check_pair(pair)
            yield LabelledTile(pair.name, rgb, mask, mpp)

    rows, pooled = score_tiles(
        tiles(),
        members,
        tta=tta,
        stain=normaliser,
        progress=(lambda done: progress(done, len(pairs))) if progress else None,
    )
    summary: dict[str, Any] = {
        "images_dir": str(Path(images_dir)),
        "masks_dir": str(Path(masks_dir)),
        "models": [
            {"name": m.card.name, "version": m.card.version, "sha256": m.card.sha256}
            for m in members
        ],
        "mpp": mpp,
        "model_mpp": members[0].card.input_mpp,
        "tta": tta,
        "stain": None if normaliser is None else normaliser.spec(),
        "tiles": len(rows),
        "pooled": pooled_scores(pooled),
        "mean_per_tile": {
            k: _mean(getattr(r, k) for r in rows)
            for k in ("dice", "iou", "auroc", "ece", "epistemic_error_auroc")
        },
        "reliability": reliability_table(pooled),
        "notes": [f"{r.name}: {r.note}" for r in rows if r.note],
        "threshold": 0.5,
        "seconds": round(time.monotonic() - start, 2),
    }
    evaluation = Evaluation(rows, json_safe(summary))
    if out is not None:
        return Evaluation(rows, evaluation.summary, write_outputs(evaluation, out))
    return evaluation
