"""Training of the HoVer-Net-style nuclei model on synthetic slides (no Qt, no napari).

Patches are cut from synthetic slides (:mod:`napari_histo.synthetic`, 0.25 µm/px level
0, full-resolution nucleus labels) rescaled to the model's µm/px; each batch gets a
random dihedral transform and colour jitter (:func:`~napari_histo.training.augment_batch`,
applied to the image and the instance labels together), then its targets: nuclear
pixels and the HV maps (:func:`~napari_histo.nuclei.learned.hv_targets`). The loss is
HoVer-Net's: cross-entropy + Dice on the nuclear-pixel branch, MSE of the HV maps
everywhere + MSE of their gradients (MSGE) within nuclei. Adam with a cosine schedule.

The same seed and step count give the same weights on the same machine (torch's CPU
kernels are deterministic for a fixed thread count).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn

from napari_histo._malloc import tune_malloc
from napari_histo.models import LoadedModel, ModelCard, build_model, save_model
from napari_histo.nuclei.learned import hv_targets
from napari_histo.training.augment import augment_batch

__all__ = [
    "HELDOUT_SEEDS",
    "NucleiRecipe",
    "NucleiTrainResult",
    "hovernet_loss",
    "load_synthetic_nuclei",
    "save_nuclei_model",
    "train_default_nuclei",
    "train_nuclei_model",
]

#: Synthetic slide seeds of the bundled model's training and validation data; the
#: held-out seeds of :data:`HELDOUT_SEEDS` are never used by training.
TRAIN_SEEDS = (300, 301, 302, 303, 304, 305)
VALIDATION_SEEDS = (400, 401)
HELDOUT_SEEDS = (5, 500, 501, 502)

#: Level-0 resolution of the synthetic slides (µm/px).
SYNTHETIC_MPP = 0.25


@dataclass(frozen=True)
class NucleiRecipe:
    """Everything that determines a nuclei training run.

    Attributes
    ----------
    seed : int
        Seeds weights, patch sampling and augmentation.
    steps : int
        Optimiser steps (the length of the learning-rate schedule).
    batch_size : int
        Patches per step.
    patch_px : int
        Patch side (px at `model_mpp`), a multiple of 32.
    lr : float
        Peak Adam learning rate (cosine decay to 5 % of it).
    model_mpp : float
        Resolution the model works at (µm/px).
    train_seeds : tuple of int
        Synthetic slide seeds to train on.
    slide_px : int
        Side of each synthetic slide at level 0 (px).
    width, depth : int
        :class:`~napari_histo.models.hovernet.HoverNet` size.
    nucleus_fraction : float
        Share of patches centred on a nucleus (the rest anywhere on the slide).
    version : str
        Model card version.
    """

    seed: int = 0
    steps: int = 1600
    batch_size: int = 8
    patch_px: int = 96
    lr: float = 2e-3
    model_mpp: float = 0.5
    train_seeds: tuple[int, ...] = TRAIN_SEEDS
    slide_px: int = 2048
    width: int = 12
    depth: int = 3
    nucleus_fraction: float = 0.7
    version: str = "1.0"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "patch_px", "slide_px", "width", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        if self.patch_px % 32:
            raise ValueError(f"`patch_px` must be a multiple of 32, got {self.patch_px}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"`lr` must be a finite number > 0, got {self.lr!r}")
        if not SYNTHETIC_MPP <= self.model_mpp <= 4 * SYNTHETIC_MPP:
            raise ValueError(f"`model_mpp` must be in [0.25, 1] µm/px, got {self.model_mpp!r}")
        if not 0 <= self.nucleus_fraction <= 1:
            raise ValueError(f"`nucleus_fraction` must be in [0, 1], got {self.nucleus_fraction}")
        if not self.train_seeds or set(self.train_seeds) & set(HELDOUT_SEEDS):
            raise ValueError(
                f"`train_seeds` must be non-empty and avoid the held-out seeds {HELDOUT_SEEDS}, "
                f"got {self.train_seeds}"
            )


@dataclass(frozen=True)
class NucleiTrainResult:
    """A finished (or time-capped) training run."""

    model: nn.Module
    steps_done: int
    seconds: float
    losses: list[float] = field(repr=False)


# -- data ----------------------------------------------------------------------------------


def _resize_rgb(rgb: np.ndarray, scale: float) -> np.ndarray:
    """Antialiased bilinear rescale (as at inference), uint8."""
    if abs(scale - 1) < 1e-3:
        return rgb
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    size = (round(rgb.shape[0] * scale), round(rgb.shape[1] * scale))
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_labels(labels: np.ndarray, scale: float) -> np.ndarray:
    """Nearest-neighbour rescale of labels, sampled at the new pixels' centres."""
    if abs(scale - 1) < 1e-3:
        return labels
    rows = np.minimum(((np.arange(round(labels.shape[0] * scale)) + 0.5) / scale).astype(int),
                      labels.shape[0] - 1)  # fmt: skip
    cols = np.minimum(((np.arange(round(labels.shape[1] * scale)) + 0.5) / scale).astype(int),
                      labels.shape[1] - 1)  # fmt: skip
    return labels[np.ix_(rows, cols)]


def load_synthetic_nuclei(
    seeds: Sequence[int], slide_px: int, mpp: float, workdir: str | Path
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic slides as (RGB, instance labels) pairs at `mpp`.

    Parameters
    ----------
    seeds : sequence of int
        Slide seeds; each slide is written to `workdir` (or reused if there).
    slide_px : int
        Level-0 side (px at 0.25 µm/px).
    mpp : float
        Output resolution (µm/px).
    workdir : str or Path
        Folder for the slide files.

    Returns
    -------
    list of (ndarray of uint8 (H, W, 3), ndarray of uint32 (H, W))
    """
    from napari_histo.io.slide import Slide
    from napari_histo.synthetic import read_truth, write_synthetic_slide

    out = []
    for seed in seeds:
        path = Path(workdir) / f"nuclei-{seed}-{slide_px}.svs"
        if not path.exists():
            write_synthetic_slide(path, slide_px, seed=int(seed), workers=1)
        labels = np.asarray(read_truth(path.with_name(path.stem + ".truth.zarr")).nuclei[...])
        with Slide(path) as slide:
            rgb = np.ascontiguousarray(slide.read_region(0, 0, 0, slide_px, slide_px))
        scale = SYNTHETIC_MPP / mpp
        out.append((_resize_rgb(rgb, scale), resize_labels(labels, scale)))
    return out


class _PatchSampler:
    """Random patches, a share of them centred (±¼ patch) on a random nucleus."""

    def __init__(self, slides, patch_px: int, nucleus_fraction: float, seed: int) -> None:
        self.slides = slides
        self.patch = patch_px
        self.nucleus_fraction = nucleus_fraction
        self.rng = np.random.default_rng(seed)
        self.centres = []
        for _, labels in slides:
            found = ndi.center_of_mass(labels > 0, labels, np.unique(labels[labels > 0]))
            self.centres.append(np.asarray(found, float).reshape(-1, 2))

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch
        images = np.empty((size, p, p, 3), np.uint8)
        labels = np.empty((size, p, p), np.int64)
        for i in range(size):
            k = int(self.rng.integers(len(self.slides)))
            rgb, lab = self.slides[k]
            h, w = lab.shape
            centres = self.centres[k]
            if len(centres) and self.rng.random() < self.nucleus_fraction:
                jitter = self.rng.uniform(-p / 4, p / 4, 2)
                cy, cx = centres[self.rng.integers(len(centres))] + jitter
                y0, x0 = int(cy) - p // 2, int(cx) - p // 2
            else:
                y0, x0 = int(self.rng.integers(h - p + 1)), int(self.rng.integers(w - p + 1))
            y0, x0 = min(max(y0, 0), h - p), min(max(x0, 0), w - p)
            images[i] = rgb[y0 : y0 + p, x0 : x0 + p]
            labels[i] = lab[y0 : y0 + p, x0 : x0 + p]
        return images, labels


def _normalisation(slides) -> dict[str, tuple[float, float, float]]:
    pixels = np.concatenate([rgb.reshape(-1, 3)[::97] for rgb, _ in slides]) / 255.0
    mean, std = pixels.mean(axis=0), pixels.std(axis=0)
    return {
        "mean": tuple(round(float(v), 4) for v in mean),
        "std": tuple(round(float(v), 4) for v in std),
    }


# -- loss ------------------------------------------------------------------------------------


def _sobel_kernels(size: int = 5) -> torch.Tensor:
    """HoVer-Net's normalised Sobel kernels (d/dx, d/dy), shape (2, 1, size, size)."""
    r = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    denominator = (xx * xx + yy * yy).clamp(min=1e-15)
    return torch.stack([xx / denominator, yy / denominator])[:, None]


def hovernet_loss(
    output: torch.Tensor, foreground: torch.Tensor, hv: torch.Tensor, *, eps: float = 1.0
) -> torch.Tensor:
    """HoVer-Net loss: CE + Dice (nuclear pixels) + MSE (HV) + MSGE (HV gradient in nuclei).

    Parameters
    ----------
    output : Tensor, shape (B, 4, H, W)
        Model output: NP logits then h, v.
    foreground : Tensor of int, shape (B, H, W)
        1 on nuclear pixels, else 0.
    hv : Tensor of float, shape (B, 2, H, W)
        Target HV maps.
    eps : float
        Smoothing of the soft Dice (px).

    Returns
    -------
    Tensor
        Scalar loss.
    """
    logits, pred_hv = output[:, :2], output[:, 2:4]
    target = foreground.long()
    ce = F.cross_entropy(logits, target)
    prob = logits.softmax(dim=1)[:, 1]
    truth = target.float()
    dice = (2 * (prob * truth).sum() + eps) / (prob.sum() + truth.sum() + eps)
    mse = F.mse_loss(pred_hv, hv)
    kernels = _sobel_kernels().to(device=output.device, dtype=output.dtype)

    def gradient(maps: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(maps[:, :1], kernels[:1], padding=2)
        v = F.conv2d(maps[:, 1:], kernels[1:], padding=2)
        return torch.cat([h, v], dim=1)

    focus = truth[:, None].expand(-1, 2, -1, -1)
    msge = ((gradient(pred_hv) - gradient(hv)) ** 2 * focus).sum() / focus.sum().clamp(min=1)
    return ce + (1 - dice) + mse + msge


def training_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground (0/1) and horizontal/vertical distance targets of a batch of label maps."""
    maps = np.stack([hv_targets(lab) for lab in labels.numpy()])
    return (labels > 0).long(), torch.from_numpy(maps)


# -- training ------------------------------------------------------------------------------------


def train_nuclei_model(
    recipe: NucleiRecipe,
    slides: Sequence[tuple[np.ndarray, np.ndarray]],
    normalisation: dict[str, tuple[float, float, float]],
    *,
    minutes: float | None = None,
    stop_after: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    device: str | torch.device = "cpu",
) -> NucleiTrainResult:
    """Train a :class:`~napari_histo.models.hovernet.HoverNet` on (RGB, labels) pairs.

    Parameters
    ----------
    recipe : NucleiRecipe
        Steps, batch, seed, sizes.
    slides : sequence of (ndarray of uint8 (H, W, 3), ndarray of int (H, W))
        Images at ``recipe.model_mpp`` with their instance labels, each larger than a patch.
    normalisation : dict
        ``{"mean": (r, g, b), "std": (r, g, b)}`` as in the model card.
    minutes : float, optional
        Stop early after this much wall time (the run is then not reproducible).
    stop_after : int, optional
        Stop after this many steps, the schedule still being ``recipe.steps`` long
        (reproduces a run that `minutes` stopped).
    progress : callable, optional
        ``progress(step, steps, loss)`` after every step.
    device : str or torch.device
        Where the model trains (patches are cut and augmented on the CPU).

    Returns
    -------
    NucleiTrainResult
        The model (eval mode, on the CPU) and the run's statistics.
    """
    tune_malloc()  # activations and gradients reused from the heap: CPU steps 7–37 % faster
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    sampler = _PatchSampler(slides, recipe.patch_px, recipe.nucleus_fraction, recipe.seed)
    device = torch.device(device)
    model = build_model("hovernet", {"width": recipe.width, "depth": recipe.depth})
    model = model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / recipe.steps))
    )
    mean = torch.tensor(normalisation["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(normalisation["std"], device=device).view(1, 3, 1, 1)
    start, losses, step = time.perf_counter(), [], 0
    for step in range(1, recipe.steps + 1):
        images, labels = sampler.batch(recipe.batch_size)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        x, lab = augment_batch(x, torch.from_numpy(labels), generator)
        foreground, hv = (t.to(device) for t in training_targets(lab))
        x = x.to(device)
        # Contiguous (not channels_last): backward through channels_last convs crashes on CPU.
        loss = hovernet_loss(model(((x - mean) / std).contiguous()), foreground, hv)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, recipe.steps, losses[-1])
        if minutes is not None and time.perf_counter() - start > 60 * minutes:
            break
        if stop_after is not None and step >= stop_after:
            break
    return NucleiTrainResult(model.cpu().eval(), step, time.perf_counter() - start, losses)


def nuclei_card(recipe: NucleiRecipe, normalisation: dict, **changes) -> ModelCard:
    """The model card of a nuclei model trained with `recipe` (weights not yet saved)."""
    seeds = list(recipe.train_seeds)
    fields = {
        "name": "hovernet",
        "version": recipe.version,
        "architecture": "hovernet",
        "config": {"width": recipe.width, "depth": recipe.depth, "norm": "batch"},
        "input_mpp": recipe.model_mpp,
        "patch_px": 256,
        "normalisation": normalisation,
        "classes": ("background", "nucleus"),
        "training_data": (
            f"SYNTHETIC ONLY: napari-histo procedural H&E-like slides (napari_histo.synthetic, "
            f"seeds {seeds}, {recipe.slide_px} px at 0.25 µm/px) with their nucleus instance "
            "labels; never trained or validated on real tissue"
        ),
    }
    return ModelCard(**(fields | changes))


def save_nuclei_model(
    model: nn.Module,
    recipe: NucleiRecipe,
    normalisation: dict,
    out_dir: str | Path,
    *,
    run: str,
    workdir: str | Path,
) -> Path:
    """Score a trained nuclei model on the validation and held-out slides, save it and its card.

    Parameters
    ----------
    model : nn.Module
        The trained :class:`~napari_histo.models.hovernet.HoverNet` (eval mode).
    recipe : NucleiRecipe
        How it was trained.
    normalisation : dict
        Its input normalisation.
    out_dir : str or Path
        Where ``hovernet-<version>.safetensors`` and ``.json`` go.
    run : str
        How it was trained (steps, time, machine), for the card's notes.
    workdir : str or Path
        Folder for the synthetic slides.

    Returns
    -------
    Path
        The card.
    """
    from napari_histo.nuclei.evaluate import quality_of

    card = nuclei_card(recipe, normalisation)
    loaded = LoadedModel(model.eval(), card, Path("<memory>"))
    metrics = {}
    for prefix, seeds in (("val", VALIDATION_SEEDS), ("heldout", HELDOUT_SEEDS)):
        scores = quality_of(loaded, seeds, 16, workdir=workdir)
        metrics |= {f"{prefix}_{k}": round(v, 4) for k, v in scores.items()}
    notes = (
        f"{run} Recipe: {recipe}. Scores: mean over 512² level-0 tiles (16 each) of "
        f"validation slides (seeds {list(VALIDATION_SEEDS)}) and held-out slides never used "
        f"in training or tuning (seeds {list(HELDOUT_SEEDS)}), default HVParams."
    )
    return save_model(model, dataclasses.replace(card, metrics=metrics, notes=notes), out_dir)


def train_default_nuclei(
    out_dir: str | Path,
    seed: int = 0,
    *,
    steps: int | None = None,
    minutes: float | None = None,
    stop_after: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    workdir: str | Path | None = None,
) -> Path:
    """Train the bundled nuclei model (``hovernet-1.0``) and save it with its card.

    About 8 minutes on 2 unshared CPU cores at the defaults (1600 steps of 8
    patches of 96² px), plus a minute of data and scoring.

    Parameters
    ----------
    out_dir : str or Path
        Folder for ``hovernet-<version>.safetensors`` and ``.json``.
    seed : int
        Training seed.
    steps : int, optional
        Optimiser steps (default :attr:`NucleiRecipe.steps`).
    minutes : float, optional
        Wall-time cap on the optimisation.
    stop_after : int, optional
        Stop after this many steps (see :func:`train_nuclei_model`).
    progress : callable, optional
        ``progress(step, steps, loss)``.
    workdir : str or Path, optional
        Where the synthetic slides are written (default a temporary folder).

    Returns
    -------
    Path
        The saved card.
    """
    recipe = NucleiRecipe(seed=seed) if steps is None else NucleiRecipe(seed=seed, steps=steps)
    with tempfile.TemporaryDirectory(prefix="napari-histo-nuclei-") as tmp:
        work = Path(tmp) if workdir is None else Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        slides = load_synthetic_nuclei(recipe.train_seeds, recipe.slide_px, recipe.model_mpp, work)
        normalisation = _normalisation(slides)
        result = train_nuclei_model(
            recipe,
            slides,
            normalisation,
            minutes=minutes,
            stop_after=stop_after,
            progress=progress,
        )
        run = (
            f"Trained by napari_histo.training.nuclei.train_default_nuclei: "
            f"{result.steps_done} steps in {result.seconds:.0f} s on the CPU "
            f"({torch.get_num_threads()} threads)."
        )
        return save_nuclei_model(
            result.model, recipe, normalisation, out_dir, run=run, workdir=work
        )
