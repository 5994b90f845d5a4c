"""Benchmarks of retraining: training-step throughput, "it helps", granularity study.

* :func:`bench_train`: patches/s of :func:`~napari_histo.training.trainer.train_model`
  against bare forward + backward + Adam on random tensors of the same shape
  (``efficiency`` ≥ 0.85 means batch preparation is hidden), and the held-out
  Dice gain of :func:`it_helps`.
* :func:`bench_granularity`: the same small network trained from pixel, ellipse
  and bbox labels derived from one synthetic ground truth, scored on a
  held-out band against the true pixel labels (ccRCC study: 0.94 / 0.89 / 0.86).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_histo.annotations import Annotation, mask_to_bbox, mask_to_ellipse, mask_to_polygons
from napari_histo.models import ModelCard, build_model, save_model
from napari_histo.synthetic import read_truth, truth_path_for, write_synthetic_slide
from napari_histo.training.annotations import labels_from_annotations, plan_split
from napari_histo.training.data import PatchSet, sample_patches
from napari_histo.training.finetune import FinetuneConfig, ensemble_dice, finetune_ensemble
from napari_histo.training.losses import IGNORE, segmentation_loss
from napari_histo.training.trainer import train_model

__all__ = [
    "bench_granularity",
    "bench_train",
    "it_helps",
    "truth_annotations",
    "weak_model",
]

#: Synthetic stain seeds far apart in H&E optical density (H norm 0.86 / E 1.20 vs 1.06 / 0.85).
SOURCE_SEED, TARGET_SEED = 25, 31
NORM = {"mean": [0.77, 0.63, 0.71], "std": [0.17, 0.19, 0.15]}
MODEL_MPP = 2.0


def _slide(work: Path, seed: int, size: int) -> Path:
    path = work / f"synthetic_{size}px_seed{seed}.svs"
    if not path.exists():
        write_synthetic_slide(path, size, seed=seed, workers=1, artefacts=False)
    return path


def _drain(generator: Any) -> Any:
    """Run a generator to the end; its return value."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def truth_annotations(
    slide_path: Path, derive: Callable[..., list[Annotation]] = mask_to_polygons
) -> list[Annotation]:
    """Tumor and non-tumor annotations derived from a synthetic slide's ground truth.

    Non-tumor tissue is outlined at pixel granularity (its polygons have the
    tumor as holes); the tumor is outlined with `derive`, so a coarse tumor
    shape labels surrounding non-tumor pixels as tumor (the label noise of
    coarse annotations) and tumor it misses stays unlabelled.

    Parameters
    ----------
    slide_path : Path
        Synthetic slide (its truth beside it).
    derive : callable
        Tumor outline: :func:`mask_to_polygons` (pixel), :func:`mask_to_ellipse` or
        :func:`mask_to_bbox`.
    """
    truth = read_truth(truth_path_for(slide_path))
    tumor = np.asarray(truth.tumor).astype(bool)
    tissue = np.asarray(truth.tissue).astype(bool)
    ds = truth.downsample
    return mask_to_polygons(tissue & ~tumor, ds, label="non-tumor") + derive(
        tumor, ds, label="tumor"
    )


def _truth_patches(slide_path: Path, count: int, seed: int, patch_px: int = 128) -> PatchSet:
    truth = read_truth(truth_path_for(slide_path))
    return sample_patches(
        slide_path, np.asarray(truth.tumor), np.asarray(truth.tissue), truth.downsample,
        count=count, patch_px=patch_px, model_mpp=MODEL_MPP, seed=seed,
    )  # fmt: skip


def weak_model(
    slide_path: Path, out_dir: Path, *, steps: int, seed: int = 0, width: int = 8
) -> Path:
    """A deliberately weak deeplabv3plus: trained briefly on one slide (one stain); card path."""
    torch.manual_seed(seed)
    model = build_model("deeplabv3plus", {"width": width})
    patches = _truth_patches(slide_path, 128, seed)
    result = _drain(
        train_model(model, patches, steps=steps, normalisation=NORM, batch_size=8, lr=2e-3,
                    seed=seed)
    )  # fmt: skip
    card = ModelCard(
        name="weak", version="1.0", architecture="deeplabv3plus",
        config={"width": width, "num_classes": 2}, input_mpp=MODEL_MPP, patch_px=256,
        normalisation=NORM, classes=("background", "tumor"),
        training_data=f"synthetic slide {slide_path.name} only ({result.steps_done} steps)",
    )  # fmt: skip
    return save_model(result.model, card, out_dir)


def it_helps(
    work_dir: str | Path,
    *,
    slide_px: int = 4096,
    weak_steps: int = 150,
    finetune_steps: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Weak model → correct a different-stain slide from its truth → fine-tune → Dice gain.

    The weak model sees one slide of stain seed :data:`SOURCE_SEED` for
    `weak_steps` steps; the target slide (:data:`TARGET_SEED`) is corrected
    with pixel annotations of tumor and non-tumor tissue; the held-out band of
    the target is scored before and after.

    Returns
    -------
    dict
        ``dice_before``, ``dice_after``, ``dice_gain``, ``finetune_s``.
    """
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    source = _slide(work, SOURCE_SEED, slide_px)
    target = _slide(work, TARGET_SEED, slide_px)
    card = weak_model(source, work / "models", steps=weak_steps, seed=seed)
    start = time.monotonic()
    cards = _drain(
        finetune_ensemble(
            [card], target, truth_annotations(target), out_dir=work / "models",
            steps=finetune_steps, seed=seed, config=FinetuneConfig(lr=2e-3),
        )
    )  # fmt: skip
    seconds = time.monotonic() - start
    from napari_histo.models import read_card

    metrics = read_card(cards[0]).metrics
    before, after = metrics["heldout_dice_before"], metrics["heldout_dice_after"]
    return {
        "dice_before": before,
        "dice_after": after,
        "dice_gain": round(after - before, 4),
        "finetune_s": round(seconds, 1),
    }


def _throughput(quick: bool) -> dict[str, float]:
    """Patches/s of train_model vs bare forward/backward/Adam on random tensors.

    The two alternate in short rounds and each keeps its median step time, so
    load from other processes on a shared machine hits both alike.
    """
    batch, px = 8, 128
    rounds, per_round = (6, 5) if quick else (20, 5)
    rng = np.random.default_rng(0)
    patches = PatchSet(
        images=rng.integers(0, 256, (64, px, px, 3), dtype=np.uint8),
        masks=rng.integers(0, 2, (64, px, px), dtype=np.uint8),
        origins_l0=np.zeros((64, 2), int),
        model_mpp=MODEL_MPP,
    )
    torch.manual_seed(0)
    config = {"width": 8, "depth": 4}
    trainer = train_model(
        build_model("resunet", config), patches, steps=(rounds + 1) * per_round,
        normalisation=NORM, batch_size=batch,
    )  # fmt: skip
    model = build_model("resunet", config).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, px, px)
    y = torch.randint(0, 2, (batch, px, px))

    def bare_step() -> None:
        loss = segmentation_loss(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    train_times, bare_times = [], []
    for r in range(rounds + 1):
        for _ in range(per_round):
            t0 = time.perf_counter()
            next(trainer)
            t1 = time.perf_counter()
            bare_step()
            t2 = time.perf_counter()
            if r:  # the first round warms up
                train_times.append(t1 - t0)
                bare_times.append(t2 - t1)
    trainer.close()
    train_s, bare_s = float(np.median(train_times)), float(np.median(bare_times))
    return {
        "train_patches_s": round(batch / train_s, 1),
        "bare_patches_s": round(batch / bare_s, 1),
        "efficiency": round(bare_s / train_s, 3),
    }


def bench_train(quick: bool = False) -> dict[str, Any]:
    """Training throughput and the Dice gain of :func:`it_helps`.

    Returns
    -------
    dict
        ``train_patches_s``, ``bare_patches_s``, ``efficiency`` (≥ 0.85 wanted),
        ``dice_before``, ``dice_after``, ``dice_gain`` (≥ 0.10 wanted), ``finetune_s``.
    """
    out: dict[str, Any] = dict(_throughput(quick))
    with tempfile.TemporaryDirectory(prefix="histo-bench-train-") as work:
        if quick:
            helps = it_helps(work, slide_px=4096, weak_steps=100, finetune_steps=150)
        else:
            helps = it_helps(work, slide_px=8192, weak_steps=150, finetune_steps=600)
    out.update(helps)
    out["efficiency_ok"] = out["efficiency"] >= 0.85
    out["gain_ok"] = out["dice_gain"] >= 0.10
    return out


def _granularity_dice(
    slide: Path, derive: Callable[..., list[Annotation]], truth_labels: np.ndarray, *,
    steps: int, seed: int, split: Any, ds: float,
) -> float:  # fmt: skip
    from napari_histo.training.annotations import sample_label_patches

    with_derived = labels_from_annotations(truth_annotations(slide, derive), _dims(slide), ds)
    train_labels = np.where(split.band_mask(with_derived.shape, ds), IGNORE, with_derived)
    patches = sample_label_patches(
        slide, train_labels.astype(np.uint8), ds, patch_px=128, model_mpp=MODEL_MPP,
        count=256, seed=seed, avoid=split,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = build_model("deeplabv3plus", {"width": 8})
    _drain(
        train_model(model, patches, steps=steps, normalisation=NORM, batch_size=8, lr=2e-3,
                    seed=seed)
    )  # fmt: skip
    held = np.where(split.band_mask(truth_labels.shape, ds), truth_labels, IGNORE)
    return ensemble_dice([(model, NORM)], slide, held.astype(np.uint8), ds)


def _dims(slide: Path) -> tuple[int, int]:
    from napari_histo.io.slide import Slide

    with Slide(slide) as s:
        return s.dimensions


def bench_granularity(quick: bool = False, seeds: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Held-out Dice of one network trained from pixel, ellipse and bbox labels.

    Labels come from the same synthetic truth (tumor and non-tumor tissue via
    :func:`mask_to_polygons`, :func:`mask_to_ellipse`, :func:`mask_to_bbox`);
    the score is against the true pixel labels on a held-out band of the slide.

    Returns
    -------
    dict
        ``dice_pixel``, ``dice_ellipse``, ``dice_bbox``, ``order_ok`` (pixel > ellipse > bbox).
    """
    size, steps = (4096, 150) if quick else (8192, 800)
    seeds = seeds or ((0,) if quick else (0, 1, 2))
    scores: dict[str, list[float]] = {"pixel": [], "ellipse": [], "bbox": []}
    derives = {"pixel": mask_to_polygons, "ellipse": mask_to_ellipse, "bbox": mask_to_bbox}
    with tempfile.TemporaryDirectory(prefix="histo-bench-gran-") as work:
        slide = _slide(Path(work), TARGET_SEED, size)
        ds = MODEL_MPP / 0.25
        truth_labels = labels_from_annotations(truth_annotations(slide), _dims(slide), ds)
        for seed in seeds:
            split = plan_split(truth_labels, ds, seed=seed)
            for name, derive in derives.items():
                scores[name].append(
                    _granularity_dice(
                        slide, derive, truth_labels, steps=steps, seed=seed, split=split, ds=ds
                    )
                )
    out: dict[str, Any] = {f"dice_{k}": round(float(np.mean(v)), 4) for k, v in scores.items()}
    out["order_ok"] = out["dice_pixel"] > out["dice_ellipse"] > out["dice_bbox"]
    out["slide_px"], out["steps"], out["seeds"] = size, steps, len(seeds)
    return out
