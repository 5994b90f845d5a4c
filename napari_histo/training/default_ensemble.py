"""Train the default tumor ensemble from synthetic slides (``napari-histo train --synthetic``).

Reproducible from a seed on a CPU: synthetic training slides and held-out
slides (seeds never used in training) are generated, balanced tumor/non-tumor
patches are sampled from the tissue, each member is trained with dihedral and
colour augmentation and the DigiPathAI loss, then scored on the held-out
slides by the same engine users run; the Dice goes into each model card.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from napari_histo.generators import mapped
from napari_histo.models import ModelCard, build_model, load_model, save_model
from napari_histo.models.receptive import with_measured_margin
from napari_histo.synthetic import read_truth, write_synthetic_slide
from napari_histo.training.data import PatchSet, sample_patches
from napari_histo.training.trainer import TrainProgress, train_model

__all__ = [
    "DEFAULT_MEMBERS",
    "HELD_OUT_SEEDS",
    "TRAIN_SEEDS",
    "EnsembleRecipe",
    "heldout_dice",
    "synthetic_slides",
    "train_default_ensemble",
]

#: Architectures and configurations of the default ensemble (diverse, small, fast on CPU).
DEFAULT_MEMBERS: tuple[tuple[str, dict], ...] = (
    ("resunet", {"width": 8, "depth": 4}),
    ("denseunet", {"width": 8, "depth": 4, "layers": 2}),
    ("deeplabv3plus", {"width": 8}),
)
TRAIN_SEEDS = (1000, 1001, 1002, 1003)
HELD_OUT_SEEDS = (2000, 2001)
TRAINING_DATA = (
    "SYNTHETIC ONLY: napari-histo procedural H&E-like slides (napari_histo.synthetic, "
    "seeds {seeds}, {size} px at 0.25 µm/px); never trained or validated on real tissue"
)


@dataclass(frozen=True)
class EnsembleRecipe:
    """Everything that determines the trained weights (besides the code)."""

    seed: int = 0
    steps: int = 1200
    batch_size: int = 8
    lr: float = 2e-3
    patches_per_slide: int = 600
    train_patch_px: int = 128
    infer_patch_px: int = 256
    model_mpp: float = 2.0
    slide_px: int = 8192
    version: str = "1.0"


def tumor_member_card(
    recipe,
    architecture: str,
    config: dict,
    normalisation: dict,
    *,
    training_data: str,
    metrics: dict | None = None,
    notes: str = "",
    parent_version: str | None = None,
) -> ModelCard:
    """The card of a two-class (background, tumor) member a recipe trains.

    `recipe` gives ``version``, ``model_mpp`` and ``infer_patch_px`` (the synthetic
    :class:`EnsembleRecipe` and the real-tissue ``RealRecipe`` alike).
    """
    return ModelCard(
        name=architecture,
        version=recipe.version,
        parent_version=parent_version,
        architecture=architecture,
        config={**config, "num_classes": 2},
        input_mpp=recipe.model_mpp,
        patch_px=recipe.infer_patch_px,
        normalisation=normalisation,
        classes=("background", "tumor"),
        training_data=training_data,
        metrics=metrics or {},
        notes=notes,
    )


def synthetic_slides(work_dir: Path, seeds: Sequence[int], size: int) -> list[Path]:
    """Synthetic slides of `seeds` in `work_dir`, generated when missing."""
    paths = []
    for seed in seeds:
        path = work_dir / f"synthetic_{size}px_seed{seed}.svs"
        if not path.exists():
            write_synthetic_slide(path, size=size, seed=seed)
        paths.append(path)
    return paths


def _patches(paths: Sequence[Path], recipe: EnsembleRecipe, count: int, seed: int) -> PatchSet:
    sets = []
    for i, path in enumerate(paths):
        truth = read_truth(path.with_suffix(".truth.zarr"))
        sets.append(
            sample_patches(
                path,
                np.asarray(truth.tumor),
                np.asarray(truth.tissue),
                truth.downsample,
                count=count,
                patch_px=recipe.train_patch_px,
                model_mpp=recipe.model_mpp,
                seed=seed * 7919 + i,
            )
        )
    return PatchSet.concat(sets)


def _normalisation(patches: PatchSet) -> dict[str, list[float]]:
    pixels = patches.images.reshape(-1, 3).astype(np.float64) / 255
    return {"mean": pixels.mean(0).round(4).tolist(), "std": pixels.std(0).round(4).tolist()}


def heldout_dice(slide_paths: Sequence[Path], card_paths: Sequence[Path], *, tta: int = 1) -> float:
    """Tumor Dice of an ensemble's whole-slide result against the synthetic truth.

    The engine's probability (at the model's resolution) is area-averaged to
    the truth masks' downsample and thresholded at 0.5; Dice is pooled over
    all slides.
    """
    from napari_histo.inference.engine import EngineConfig, infer_slide, run

    members = [load_model(p) for p in card_paths]
    inter = total = 0
    with tempfile.TemporaryDirectory() as out:
        for path in slide_paths:
            truth = read_truth(path.with_suffix(".truth.zarr"))
            config = EngineConfig(tta=tta, amp=False)  # card figures: float32 everywhere
            result = run(infer_slide(path, members, config=config, out_dir=out))
            prob = np.asarray(result.run.array("probability")[...])
            i, t = truth_overlap(prob, result.geometry.downsample, truth)
            inter, total = inter + i, total + t
    return 2 * inter / total if total else 1.0


def truth_overlap(probability: np.ndarray, downsample: float, truth) -> tuple[int, int]:
    """``(|pred ∩ tumor|, |pred| + |tumor|)`` of a probability map against synthetic truth.

    `probability` is at `downsample` (level-0 px per pixel); it is area-averaged
    to the truth masks' downsample and thresholded at 0.5.
    """
    factor = truth.downsample / downsample
    f = round(factor)
    if abs(factor - f) > 1e-6 or f < 1:
        raise ValueError(f"truth downsample {truth.downsample} is not a multiple of the result's")
    h, w = probability.shape[0] // f, probability.shape[1] // f
    pooled = probability[: h * f, : w * f].reshape(h, f, w, f).mean(axis=(1, 3))
    tumor = np.asarray(truth.tumor)[:h, :w].astype(bool)
    pred = pooled[: tumor.shape[0], : tumor.shape[1]] > 0.5
    return int((pred & tumor).sum()), int(pred.sum()) + int(tumor.sum())


def train_default_ensemble(
    out_dir: str | os.PathLike[str],
    recipe: EnsembleRecipe | None = None,
    *,
    work_dir: str | os.PathLike[str] | None = None,
    members: Sequence[tuple[str, dict]] = DEFAULT_MEMBERS,
    cancel: threading.Event | None = None,
    log: Callable[[str], None] = print,
) -> Generator[tuple[str, TrainProgress], None, list[Path]]:
    """Train, score and save every default member; yields ``(member, progress)``.

    Returns
    -------
    list of Path
        Model card paths written to `out_dir`.
    """
    recipe = recipe or EnsembleRecipe()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="histo-train-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"generating {len(TRAIN_SEEDS)} training, {len(HELD_OUT_SEEDS)} held-out slides in {work}")
    train_slides = synthetic_slides(work, TRAIN_SEEDS, recipe.slide_px)
    heldout_slides = synthetic_slides(work, HELD_OUT_SEEDS, recipe.slide_px)
    train = _patches(train_slides, recipe, recipe.patches_per_slide, recipe.seed)
    val = _patches(heldout_slides[:1], recipe, 96, recipe.seed + 1)
    normalisation = _normalisation(train)
    log(f"{len(train)} training and {len(val)} validation patches; normalisation {normalisation}")
    cards = []
    for index, (architecture, config) in enumerate(members):
        torch.manual_seed(recipe.seed * 1000 + index)
        model = build_model(architecture, config)
        steps = train_model(
            model,
            train,
            steps=recipe.steps,
            normalisation=normalisation,
            batch_size=recipe.batch_size,
            lr=recipe.lr,
            seed=recipe.seed * 1000 + index,
            val=val,
            eval_every=max(1, recipe.steps // 4),
            cancel=cancel,
        )
        result = yield from mapped(steps, lambda event, name=architecture: (name, event))
        if result.cancelled:
            log(f"{architecture}: cancelled; nothing saved")
            return cards
        card = tumor_member_card(
            recipe,
            architecture,
            config,
            normalisation,
            training_data=TRAINING_DATA.format(seeds=list(TRAIN_SEEDS), size=recipe.slide_px),
            metrics={"val_patch_dice_tumor": round(float(result.val_dice or 0.0), 4)},
            notes=(
                f"Trained by `napari-histo train --synthetic` with {recipe}; {result.steps_done} "
                f"steps in {result.seconds:.0f} s. Held-out slides: seeds {list(HELD_OUT_SEEDS)}."
            ),
        )
        with tempfile.TemporaryDirectory() as scratch:
            scored = heldout_dice(heldout_slides, [save_model(model, card, scratch)])
        final = replace(card, metrics={**card.metrics, "heldout_dice_tumor": round(scored, 4)})
        cards.append(save_model(model, final, out_dir))
        margin = with_measured_margin(cards[-1])  # for the engine's large tiles
        log(f"{architecture}: held-out tumor Dice {scored:.4f}, margin {margin} px -> {cards[-1]}")
    return cards
