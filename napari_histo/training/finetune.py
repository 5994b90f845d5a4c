"""Fine-tune every ensemble member on a slide's annotations; save new model versions.

The loop of "retrain from corrections": annotations → targets at the models'
µm/px (:mod:`napari_histo.training.annotations`) → a held-out band of the
slide → class-balanced, perturbed training patches outside the band → Adam on
the DigiPathAI loss (ignore/unlabelled masked), optionally with the encoder
frozen for the first steps → ensemble Dice on the held-out band before and
after → one new version per member (``1.0`` → ``1.1``; never overwritten,
``parent_version`` set). A cancelled run writes nothing.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Generator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from napari_histo.annotations.model import Annotation
from napari_histo.generators import mapped
from napari_histo.models import ModelCard, load_model, save_model
from napari_histo.models.versions import next_version
from napari_histo.models.versions import taken_versions as _taken_versions
from napari_histo.training.annotations import (
    SpatialSplit,
    plan_split,
    sample_label_patches,
    slide_labels,
)
from napari_histo.training.data import PatchSet
from napari_histo.training.losses import IGNORE
from napari_histo.training.scoring import engine_dice
from napari_histo.training.settings import FinetuneConfig
from napari_histo.training.trainer import (
    BLUR_SIGMA_PX,
    TrainProgress,
    TrainResult,
    train_model,
    trains_in_bfloat16,
)

__all__ = [
    "ENCODER_PREFIXES",
    "FinetuneConfig",
    "annotation_dice",
    "finetune_ensemble",
    "next_version",
    "set_encoder_trainable",
]

#: Parameter-name prefixes of each architecture's encoder (frozen when asked).
ENCODER_PREFIXES: dict[str, tuple[str, ...]] = {
    "resunet": ("stem.", "down."),
    "denseunet": ("stem.", "blocks.", "transitions."),
    "deeplabv3plus": ("stem.", "layer1.", "layer2.", "layer3.", "layer4."),
}


def set_encoder_trainable(model: nn.Module, architecture: str, trainable: bool) -> int:
    """Set ``requires_grad`` of the encoder's parameters; returns how many tensors changed.

    Raises
    ------
    ValueError
        If `architecture` has no known encoder (see :data:`ENCODER_PREFIXES`).
    """
    if architecture not in ENCODER_PREFIXES:
        raise ValueError(
            f"`architecture` {architecture!r} has no known encoder; freezing needs one of "
            f"{sorted(ENCODER_PREFIXES)}"
        )
    prefixes = ENCODER_PREFIXES[architecture]
    changed = 0
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(trainable)
            changed += 1
    return changed


def _held_labels(labels: np.ndarray, downsample: float, split: SpatialSplit) -> np.ndarray:
    return np.where(split.band_mask(labels.shape, downsample), labels, IGNORE).astype(np.uint8)


def _train_labels(labels: np.ndarray, downsample: float, split: SpatialSplit) -> np.ndarray:
    return np.where(split.band_mask(labels.shape, downsample), IGNORE, labels).astype(np.uint8)


def _common_mpp(cards: Sequence[ModelCard]) -> float:
    mpps = {card.input_mpp for card in cards}
    if len(mpps) != 1:
        raise ValueError(
            f"ensemble members must share `input_mpp` to be fine-tuned together, got {sorted(mpps)}"
        )
    return mpps.pop()


def annotation_dice(
    card_paths: Sequence[str | os.PathLike[str]],
    slide_path: str | os.PathLike[str],
    annotations: Sequence[Annotation],
    region: SpatialSplit | Literal["all"] | None = None,
    *,
    granularity: str | None = None,
    seed: int = 0,
    held_out_fraction: float = 0.25,
    tile_px: int = 256,
    patch_px: int = 128,
    slide_mpp: float | None = None,
) -> float:
    """The ensemble's tumor Dice against rasterised annotation labels (255 ignored).

    Parameters
    ----------
    card_paths : sequence of path
        Model cards of the ensemble members.
    slide_path : str or PathLike
        The annotated slide.
    annotations : sequence of Annotation
        Level-0 annotations (tumor / non-tumor / ignore).
    region : SpatialSplit, "all" or None
        Scored region: None is the held-out band :func:`finetune_ensemble` uses
        with the same `seed`, `held_out_fraction` and `patch_px` (its
        ``config.train_patch_px``); "all" scores every label.
    granularity : str, optional
        Label granularity (see :func:`~napari_histo.training.annotations.labels_from_annotations`).
    slide_mpp : float, optional
        µm per level-0 px of a slide without a plausible one of its own (``--mpp``).

    Returns
    -------
    float
        Dice in [0, 1], computed with the inference engine
        (:func:`~napari_histo.training.scoring.engine_dice`; `tile_px` is unused).
    """
    loaded = [load_model(p) for p in card_paths]
    if not loaded:
        raise ValueError("`card_paths` must name at least one model card")
    mpp = _common_mpp([m.card for m in loaded])
    labels, ds = slide_labels(
        slide_path, annotations, model_mpp=mpp, granularity=granularity, slide_mpp=slide_mpp
    )
    if region is None:
        region = plan_split(
            labels, ds, held_out_fraction=held_out_fraction, seed=seed, patch_px=patch_px
        )
    if region != "all":
        labels = _held_labels(labels, ds, region)
    return engine_dice(
        [(m.model, m.card) for m in loaded], slide_path, labels, ds, slide_mpp=slide_mpp
    )


def _drive(
    name: str, steps: Generator[TrainProgress, None, TrainResult], offset: int, total: int
) -> Generator[tuple[str, TrainProgress], None, TrainResult]:
    """Re-yield a training generator's progress as ``(name, progress)`` on a global step count."""

    def globally(event: TrainProgress) -> tuple[str, TrainProgress]:
        step = offset + event.step
        eta = event.elapsed_s / max(1, event.step) * (total - step)
        return name, dataclasses.replace(event, step=step, steps=total, eta_s=eta)

    return (yield from mapped(steps, globally))


def _finetune_member(
    name: str,
    model: nn.Module,
    card: ModelCard,
    train: PatchSet,
    val: PatchSet,
    *,
    steps: int,
    freeze_encoder_steps: int,
    seed: int,
    config: FinetuneConfig,
    cancel: threading.Event | None,
) -> Generator[tuple[str, TrainProgress], None, tuple[bool, int]]:
    """Train one member in up to two phases (encoder frozen, then all); (cancelled, steps)."""
    frozen = min(max(0, freeze_encoder_steps), steps)
    phases = [(frozen, False), (steps - frozen, True)]
    done = 0
    for phase_steps, encoder_trainable in phases:
        if phase_steps == 0:
            continue
        if not encoder_trainable:
            set_encoder_trainable(model, card.architecture, False)
        trainer = train_model(
            model,
            train,
            blur_px=BLUR_SIGMA_PX,
            steps=phase_steps,
            normalisation=card.normalisation,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=seed + done,
            val=val,
            eval_every=max(1, steps // 4),
            cancel=cancel,
            amp=config.amp,
        )
        result = yield from _drive(name, trainer, done, steps)
        for param in model.parameters():
            param.requires_grad_(True)
        done += result.steps_done
        if result.cancelled:
            return True, done
    return False, done


def finetune_ensemble(
    card_paths: Sequence[str | os.PathLike[str]],
    slide_path: str | os.PathLike[str],
    annotations: Sequence[Annotation],
    *,
    out_dir: str | os.PathLike[str],
    steps: int,
    granularity: str | None = "pixel",
    freeze_encoder_steps: int = 0,
    seed: int = 0,
    cancel: threading.Event | None = None,
    config: FinetuneConfig | None = None,
    slide_mpp: float | None = None,
) -> Generator[tuple[str, TrainProgress], None, list[Path]]:
    """Fine-tune every member on a slide's annotations; yields ``(member name, progress)``.

    Parameters
    ----------
    card_paths : sequence of path
        Model cards of the members (same ``input_mpp``); they are left untouched.
    slide_path : str or PathLike
        The annotated slide (needs mpp metadata).
    annotations : sequence of Annotation
        Level-0 corrections: ``tumor``, ``non-tumor``, ``ignore`` (excluded).
    out_dir : str or PathLike
        Where the new versions are written (may be the cards' own folder).
    steps : int
        Optimiser steps per member (batch ``config.batch_size``).
    granularity : {"pixel", "polygon", "ellipse", "bbox"} or None
        Label granularity; None or "pixel" uses the annotations as drawn.
    freeze_encoder_steps : int
        The first steps train only the decoder (see :data:`ENCODER_PREFIXES`).
    seed : int
        Seeds the split, patch sampling and training.
    cancel : threading.Event, optional
        Set to stop; nothing is written then.
    config : FinetuneConfig, optional
        Batch size, learning rate, patch counts, held-out fraction.
    slide_mpp : float, optional
        µm per level-0 px of a slide without a plausible one of its own (``--mpp``).

    Yields
    ------
    (str, TrainProgress)
        Member name and its progress (``step`` of ``steps``).

    Returns
    -------
    list of Path
        The new cards, one per member, or ``[]`` when cancelled.

    Raises
    ------
    HistoError
        No annotations, only one class, annotations outside the slide or tissue,
        or no held-out band with both classes.
    WeightsError
        A card or its weights cannot be loaded.
    """
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    config = config or FinetuneConfig()
    slide_path = Path(slide_path)
    out = Path(out_dir)
    loaded = [load_model(p) for p in card_paths]
    if not loaded:
        raise ValueError("`card_paths` must name at least one model card")
    mpp = _common_mpp([m.card for m in loaded])
    labels, ds = slide_labels(
        slide_path, annotations, model_mpp=mpp, granularity=granularity, slide_mpp=slide_mpp
    )
    split = plan_split(
        labels, ds, held_out_fraction=config.held_out_fraction, seed=seed,
        patch_px=config.train_patch_px,
    )  # fmt: skip
    held = _held_labels(labels, ds, split)
    train_labels = _train_labels(labels, ds, split)
    common = {"patch_px": config.train_patch_px, "model_mpp": mpp, "slide_mpp": slide_mpp}
    train = sample_label_patches(
        slide_path, train_labels, ds, count=config.train_patches, seed=seed, jitter=config.jitter,
        avoid=split, **common,
    )  # fmt: skip
    val = sample_label_patches(
        slide_path, held, ds, count=config.val_patches, seed=seed + 1, jitter=0.0, **common
    )

    def score(models: Sequence[tuple[nn.Module, ModelCard]]) -> float:
        return engine_dice(models, slide_path, held, ds, slide_mpp=slide_mpp)

    pairs = [(m.model, m.card) for m in loaded]
    before = {c.name: score([(m, c)]) for m, c in pairs}
    ensemble_before = score(pairs) if len(pairs) > 1 else next(iter(before.values()))
    seconds = {}
    for index, (model, card) in enumerate(pairs):
        start = time.monotonic()
        torch.manual_seed(seed * 1000 + index)
        cancelled, _ = yield from _finetune_member(
            card.name, model, card, train, val, steps=steps,
            freeze_encoder_steps=freeze_encoder_steps, seed=seed * 1000 + index, config=config,
            cancel=cancel,
        )  # fmt: skip
        if cancelled:
            return []
        seconds[card.name] = time.monotonic() - start
    after = {c.name: score([(m, c)]) for m, c in pairs}
    ensemble_after = score(pairs) if len(pairs) > 1 else next(iter(after.values()))
    counts = {
        name: sum(a.label == name and a.kind != "point" for a in annotations)
        for name in ("tumor", "non-tumor", "ignore")
    }
    written = []
    for (model, card), path in zip(pairs, (m.card_path for m in loaded), strict=True):
        version = next_version(card.version, _taken_versions(card.name, [out, path.parent]))
        new_card = dataclasses.replace(
            card,
            version=version,
            parent_version=card.version,
            temperature=None,  # new weights: the parent's calibration no longer holds
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            training_data=(
                f"{card.training_data} | fine-tuned on {slide_path.name}: "
                f"{counts['tumor']} tumor, {counts['non-tumor']} non-tumor, {counts['ignore']} "
                f"ignore annotations at {granularity or 'pixel'} granularity; "
                f"held out {split.describe()}"
            ),
            metrics={
                "heldout_dice_before": round(before[card.name], 4),
                "heldout_dice_after": round(after[card.name], 4),
                "ensemble_heldout_dice_before": round(ensemble_before, 4),
                "ensemble_heldout_dice_after": round(ensemble_after, 4),
            },
            notes=(
                f"Fine-tuned from {card.name} {card.version} by napari-histo: {steps} steps "
                f"({freeze_encoder_steps} with the encoder frozen) in "
                f"{seconds[card.name]:.0f} s, {config} (forwards in "
                f"{'bfloat16' if trains_in_bfloat16('cpu', config.amp) else 'float32'}), "
                f"seed {seed}; "
                f"{len(train)} training patches outside the held-out band."
            ),
        )
        written.append(save_model(model, new_card, out))
    return written
