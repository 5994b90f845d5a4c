"""The training loop as a generator: yields progress, returns the trained model."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from napari_histo._malloc import tune_malloc
from napari_histo.inference.plan import autocast_dtype
from napari_histo.training.augment import augment_batch
from napari_histo.training.data import PatchSet
from napari_histo.training.losses import IGNORE, segmentation_loss
from napari_histo.training.progress import TrainProgress, TrainResult

#: Largest Gaussian blur sigma (px) used when fine-tuning from annotations. The
#: default ensemble in napari_histo/resources/models was trained without blur (blur_px=0).
BLUR_SIGMA_PX = 1.0

__all__ = [
    "TrainProgress",
    "TrainResult",
    "bundled_start",
    "evaluate_dice",
    "train_model",
    "train_step",
    "trains_in_bfloat16",
]


def bundled_start(card_file: str, config: Mapping[str, object]):
    """The bundled model `card_file` to start training from (a recipe's warm start).

    Raises
    ------
    ValueError
        If its architecture config is not `config` (weights of another shape).
    WeightsError
        If the card or its weights are missing or corrupt.
    """
    from napari_histo.models import default_models_dir, load_model

    loaded = load_model(default_models_dir() / card_file)
    if loaded.card.config != dict(config):
        raise ValueError(f"{card_file}: config {loaded.card.config} != the recipe's {dict(config)}")
    return loaded


def _normalise(x: torch.Tensor, normalisation: Mapping[str, Sequence[float]]) -> torch.Tensor:
    mean = torch.tensor(normalisation["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(normalisation["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


@torch.inference_mode()
def evaluate_dice(
    model: nn.Module,
    patches: PatchSet,
    normalisation: Mapping[str, Sequence[float]],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> float:
    """Foreground Dice of `model`'s argmax over all labelled pixels of `patches`."""
    model.eval()
    inter = total = 0
    for start in range(0, len(patches), batch_size):
        x = _normalise(
            _to_tensor(patches.images[start : start + batch_size]).to(device), normalisation
        )
        pred = model(x).argmax(dim=1).cpu().numpy() == 1
        truth = patches.masks[start : start + batch_size]
        valid = truth != IGNORE
        fg = (truth == 1) & valid
        pred &= valid
        inter += int((pred & fg).sum())
        total += int(pred.sum()) + int(fg.sum())
    return 2 * inter / total if total else 1.0


def train_model(
    model: nn.Module,
    train: PatchSet,
    *,
    steps: int,
    normalisation: Mapping[str, Sequence[float]],
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    val: PatchSet | None = None,
    eval_every: int = 200,
    device: str | torch.device = "cpu",
    cancel: threading.Event | None = None,
    blur_px: float = 0.0,
    amp: bool = False,
) -> Generator[TrainProgress, None, TrainResult]:
    """Train `model` on `train` with augmentation, Adam and cosine learning-rate decay.

    Parameters
    ----------
    model : nn.Module
        Segmentation model with 2 output classes; trained in place.
    train : PatchSet
        Training patches.
    steps : int
        Optimiser steps.
    normalisation : mapping
        ``{"mean": [r, g, b], "std": [r, g, b]}`` for RGB in [0, 1].
    batch_size, lr, seed : int, float, int
        Batch size, initial learning rate, random seed (sampling, augmentation).
    val : PatchSet, optional
        Held-out patches; Dice reported every `eval_every` steps and at the end.
    device : str or torch.device
        Where to train.
    cancel : threading.Event, optional
        Set to stop after the current step.
    blur_px : float
        Largest Gaussian blur sigma of the augmentation, px (0: no blur).
    amp : bool
        Forward passes under bfloat16 autocast where :func:`trains_in_bfloat16`
        (weights, gradients, loss and optimiser stay float32; docs/retraining.md
        has the speed measured).

    Yields
    ------
    TrainProgress

    Returns
    -------
    TrainResult
    """
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    if len(train) == 0:
        raise ValueError("`train` holds no patches")
    tune_malloc()  # activations and gradients reused from the heap: CPU steps 7–37 % faster
    generator = torch.Generator().manual_seed(seed)
    # Backward through channels_last convolutions crashes on CPU in torch 2.13
    # (load_model uses channels_last for faster inference): train in NCHW.
    model.to(device=device, memory_format=torch.contiguous_format)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    images = torch.from_numpy(train.images)
    masks = torch.from_numpy(train.masks)
    bf16 = trains_in_bfloat16(device, amp)

    def prepare() -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, len(train), (batch_size,), generator=generator)
        x = images[index].permute(0, 3, 1, 2).float().div_(255.0)
        x, y = augment_batch(x, masks[index], generator, blur=blur_px)
        return _normalise(x, normalisation), y

    history: list[TrainProgress] = []
    start = time.monotonic()
    val_dice = None
    step = 0
    # Batches are sampled and augmented on a prefetch thread while the model
    # trains on the previous one (one thread: the random stream stays in order).
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="histo-train-prefetch")
    try:
        pending = prefetch.submit(prepare)
        for step in range(1, steps + 1):
            if cancel is not None and cancel.is_set():
                step -= 1
                break
            model.train()
            x, y = pending.result()
            if step < steps:
                pending = prefetch.submit(prepare)
            loss = train_step(model, optimiser, x.to(device), y.to(device), bf16)
            schedule.step()
            elapsed = time.monotonic() - start
            if val is not None and (step % eval_every == 0 or step == steps):
                val_dice = evaluate_dice(model, val, normalisation, device=device)
            event = TrainProgress(
                step=step,
                steps=steps,
                loss=loss,
                elapsed_s=elapsed,
                eta_s=elapsed / step * (steps - step),
                val_dice=val_dice if (val is not None and step % eval_every == 0) else None,
            )
            history.append(event)
            yield event
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)
    model.eval()
    return TrainResult(
        model=model,
        steps_done=step,
        seconds=time.monotonic() - start,
        cancelled=step < steps,
        history=history,
        val_dice=val_dice,
    )


def trains_in_bfloat16(device: str | torch.device, amp: bool) -> bool:
    """Whether :func:`train_model` runs its forwards in bfloat16 on `device` with `amp`.

    On a CPU with bfloat16 in hardware, as inference
    (:func:`~napari_histo.inference.plan.autocast_dtype`); float32 elsewhere, CUDA
    included (float16 training would need loss scaling).
    """
    return autocast_dtype(torch.device(device), amp) == torch.bfloat16  # CUDA: float16


def train_step(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    bf16: bool = False,
) -> float:
    """One forward (bfloat16 autocast with `bf16`), backward and optimiser step; the loss.

    What :func:`train_model` runs per step (``napari-histo train --minutes`` times it).
    """
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    loss = segmentation_loss(logits.float(), y)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return float(loss.detach())
