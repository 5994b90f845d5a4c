"""Glue shared by ``napari-histo train`` and the Retrain widget (no Qt, no napari).

Finding a slide's annotations, choosing the members to fine-tune, turning
epochs or a time budget into optimiser steps.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_histo.annotations.model import Annotation
from napari_histo.errors import HistoError
from napari_histo.training.annotations import TRAIN_GRANULARITIES
from napari_histo.training.settings import FinetuneConfig

if TYPE_CHECKING:
    from napari_histo.io.store import ResultGeometry

__all__ = [
    "GRANULARITIES",
    "estimate_steps",
    "finetune_in_worker",
    "parent_card",
    "read_slide_annotations",
    "region_probability",
    "resolve_cards",
    "steps_per_epoch",
]

#: Label granularities offered by the CLI and the widget.
GRANULARITIES = TRAIN_GRANULARITIES


def read_slide_annotations(
    slide_path: str | os.PathLike[str], annotations_path: str | os.PathLike[str] | None = None
) -> tuple[list[Annotation], Path, list[str]]:
    """Annotations of a slide: `annotations_path`, else its autosave file beside it.

    Returns
    -------
    (list of Annotation, Path, list of str)
        The annotations, the file they came from, and the reader's problem lines.

    Raises
    ------
    HistoError
        The file is missing or unreadable, or holds no usable annotation.
    """
    from napari_histo.io.annotations import read_annotations
    from napari_histo.io.annotations.autosave import autosave_path

    path = Path(annotations_path) if annotations_path else autosave_path(slide_path)
    if not path.is_file():
        hint = "" if annotations_path else " (the annotation widget's autosave; pass --annotations)"
        raise HistoError(f"{path}: no annotation file{hint}")
    found = read_annotations(path)
    if not any(a.kind != "point" for a in found.annotations):
        raise HistoError(f"{path}: no annotations to train from (only points, or none)")
    return found.annotations, path, found.problems


def resolve_cards(names: Sequence[str] | None = None) -> list[Path]:
    """Card paths to fine-tune: the active version of each model, or of `names`.

    `names` are model names (see :func:`~napari_histo.models.versions.active_cards`)
    or card ``.json`` paths.

    Raises
    ------
    ValueError
        A name matches no model; or there are no models at all.
    """
    from napari_histo.models import select_cards
    from napari_histo.models.versions import active_cards, model_dirs

    available = active_cards()
    if not names:
        if not available:
            where = ", ".join(str(d) for d in model_dirs())
            raise ValueError(f"no model cards (*.json) found in {where}")
        return list(available.values())
    return select_cards(names, available)


def finetune_in_worker(*, cancel: threading.Event, **kwargs):
    """:func:`~napari_histo.training.finetune.finetune_ensemble` for a worker process.

    What the Retrain dock hands its worker: importing it keeps the viewer free of
    torch, which the fine-tuning code imports only here, in the worker.
    """
    from napari_histo.training.finetune import finetune_ensemble

    return (yield from finetune_ensemble(cancel=cancel, **kwargs))


def steps_per_epoch(config: FinetuneConfig | None = None) -> int:
    """Optimiser steps in one pass over the training patches."""
    config = config or FinetuneConfig()
    return max(1, math.ceil(config.train_patches / config.batch_size))


def estimate_steps(
    card_paths: Sequence[str | os.PathLike[str]],
    seconds: float,
    config: FinetuneConfig | None = None,
    *,
    share: float = 0.7,
) -> int:
    """Steps per member that fit all members' training into `seconds` (≥ 1).

    Times two forward + backward + Adam steps of each member on random tensors
    of the training shape; `share` of the budget goes to training (the rest to
    reading patches and scoring the held-out band before and after).
    """
    import torch

    from napari_histo.models import load_model
    from napari_histo.training.trainer import train_step, trains_in_bfloat16

    if not seconds > 0:
        raise ValueError(f"`seconds` must be > 0, got {seconds}")
    config = config or FinetuneConfig()
    bf16 = trains_in_bfloat16("cpu", config.amp)
    px = config.train_patch_px
    x = torch.randn(config.batch_size, 3, px, px)
    y = torch.randint(0, 2, (config.batch_size, px, px))
    per_step = 0.0
    for card in card_paths:
        model = load_model(card).model.to(memory_format=torch.contiguous_format).train()
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            train_step(model, optimiser, x, y, bf16)  # in the precision training uses
            times.append(time.perf_counter() - start)
        per_step += min(times)
    return max(1, int(seconds * share / per_step))


def parent_card(card_path: str | os.PathLike[str]) -> Path | None:
    """The card of `card_path`'s parent version (same model), or None."""
    from napari_histo.models import read_card
    from napari_histo.models.versions import all_versions, model_dirs

    card = read_card(card_path)
    if card.parent_version is None:
        return None
    dirs = [Path(card_path).parent, *model_dirs()]
    versions = all_versions(dirs).get(card.name, [])
    return next((v.card_path for v in versions if v.version == card.parent_version), None)


def region_probability(
    card_paths: Sequence[str | os.PathLike[str]],
    slide_path: str | os.PathLike[str],
    region_l0: Sequence[int],
    *,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray, ResultGeometry] | None:
    """Tumor probability of the ensemble `card_paths` over a level-0 region.

    Runs :func:`~napari_histo.inference.engine.infer_slide` (no TTA) into a
    temporary store, so the numbers are what the inference widget shows.

    Returns
    -------
    (ndarray of float32, ResultGeometry) or None
        Probability at the models' µm/px and where it sits; None when cancelled.
    """
    import tempfile

    from napari_histo.inference.engine import infer_slide, run
    from napari_histo.models import load_model

    members = [load_model(c) for c in card_paths]
    with tempfile.TemporaryDirectory(prefix="histo-compare-") as work:
        result = run(
            infer_slide(slide_path, members, region=tuple(region_l0), out_dir=work, cancel=cancel)
        )
        if result is None or result.cancelled or result.run is None:
            return None
        probability = np.asarray(result.run.array("probability")[...], dtype=np.float32)
    return probability, result.geometry
