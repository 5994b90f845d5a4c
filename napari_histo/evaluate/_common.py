"""Checks shared by evaluate_folder and evaluate_slide: settings, output folder, members, JSON."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from napari_histo.evaluate.files import EvaluationError
from napari_histo.models import LoadedModel


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationError(f"{out_dir}: exists and is not a folder")
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise EvaluationError(f"{out_dir}: cannot be written ({probe} is not a writable folder)")


def _check_settings(mpp: object, tta: object) -> float:
    if isinstance(mpp, bool) or not isinstance(mpp, int | float) or not math.isfinite(mpp):
        raise ValueError(f"`mpp` must be a number of µm/px in [0.05, 50], got {mpp!r}")
    if not 0.05 <= mpp <= 50:
        raise ValueError(f"`mpp` must be a number of µm/px in [0.05, 50], got {mpp!r}")
    if tta not in (1, 2, 4, 8) or isinstance(tta, bool):
        raise ValueError(f"`tta` must be 1, 2, 4 or 8, got {tta!r}")
    return float(mpp)


def _load_members(members: object) -> list[LoadedModel]:
    """LoadedModel of each member (card paths are loaded); tumor segmentation models only."""
    from napari_histo.models import load_model

    if isinstance(members, str | os.PathLike) or not isinstance(members, Sequence) or not members:
        raise ValueError("`members` must be a non-empty sequence of models or card paths")
    loaded = []
    for m in members:
        if isinstance(m, str | os.PathLike):
            m = load_model(m)
        if not isinstance(m, LoadedModel):
            raise TypeError(
                f"`members` must hold LoadedModel or card paths, got {type(m).__name__}"
            )
        if m.card.task != "segmentation":
            raise ValueError(
                f"{m.card_path}: a {m.card.task} model, not a tumor segmentation model"
            )
        loaded.append(m)
    return loaded


