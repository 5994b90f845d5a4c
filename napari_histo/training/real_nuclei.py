"""Training the learned nuclei model on real MoNuSeg tiles plus synthetic slides.

No Qt, no napari. The tiles, their fixed split and the scoring on it come from
:mod:`napari_histo.training.real_nuclei_data`; its public names are re-exported here.
:func:`train_real_nuclei` trains the HoVer-Net-style model (:class:`RealNucleiRecipe`:
patches resampled to the model's µm/px with scale jitter, HED stain jitter, JPEG) on the
12 training tiles plus synthetic slides, scores it (:func:`score_nuclei_model`) and saves
it with its card (:func:`real_nuclei_card`).
"""

from __future__ import annotations

import dataclasses
import io
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from napari_histo._malloc import tune_malloc
from napari_histo.models import (
    LoadedModel,
    ModelCard,
    build_model,
    save_model,
)
from napari_histo.training.real_nuclei_data import (
    HELDOUT_TILES,
    MONUSEG_DIR,
    MONUSEG_MPP,
    ORGANS,
    PANNUKE_DIR,
    PANNUKE_MPP,
    SPLITS,
    VALIDATION_TILES,
    RealNucleiTile,
    learned_segmenter,
    load_monuseg,
    load_pannuke,
    monuseg_split,
    real_nuclei_quality,
    score_tiles,
)
from napari_histo.training.trainer import bundled_start

__all__ = [
    "HELDOUT_TILES",
    "MONUSEG_DIR",
    "MONUSEG_MPP",
    "ORGANS",
    "PANNUKE_DIR",
    "PANNUKE_MPP",
    "SPLITS",
    "VALIDATION_TILES",
    "RealNucleiRecipe",
    "RealNucleiTile",
    "load_monuseg",
    "load_pannuke",
    "monuseg_split",
    "real_nuclei_quality",
    "score_nuclei_model",
    "score_tiles",
    "train_real_nuclei",
]


@dataclass(frozen=True)
class RealNucleiRecipe:
    """Everything that determines a real-data nuclei training run.

    Attributes
    ----------
    seed : int
        Seeds weights, patch sampling and augmentation.
    steps : int
        Optimiser steps (length of the cosine schedule).
    batch_size : int
        Patches per step.
    synthetic_per_batch : int
        Of them, patches from synthetic slides (the rest from real training tiles).
    patch_px : int
        Patch side at `model_mpp` (multiple of 32).
    lr : float
        Peak Adam learning rate (cosine decay to 5 % of it, after a 3 % warm-up).
    model_mpp : float
        Resolution the model works at (µm/px).
    scale_jitter : float
        Each patch is cut at ``model_mpp * (1 ± scale_jitter)`` (uniform).
    width, depth : int
        :class:`~napari_histo.models.hovernet.HoverNet` size.
    synthetic_seeds : tuple of int
        Synthetic slides (from :data:`napari_histo.training.nuclei.TRAIN_SEEDS`).
    slide_px : int
        Side of each synthetic slide (px at 0.25 µm/px).
    jpeg_p : float
        Share of patches JPEG-compressed (quality 30-90).
    init_card : str, optional
        Start from this bundled model's weights and input normalisation (a card name in
        :func:`~napari_histo.models.default_models_dir`, e.g. ``"hovernet-1.0.json"``;
        `width` and `depth` must match it) instead of random weights.
    bf16 : bool
        Forward pass under bfloat16 autocast (faster on CPUs with AVX512-BF16 or AMX;
        weights and loss stay float32, inference runs in float32).
    version : str
        Card version.
    """

    seed: int = 0
    steps: int = 5000
    batch_size: int = 8
    synthetic_per_batch: int = 1
    patch_px: int = 128
    lr: float = 1e-3
    model_mpp: float = 0.5
    scale_jitter: float = 0.15
    width: int = 12
    depth: int = 3
    synthetic_seeds: tuple[int, ...] = (300, 301, 302)
    slide_px: int = 2048
    jpeg_p: float = 0.3
    bf16: bool = True
    init_card: str | None = "hovernet-1.0.json"
    version: str = "2.1"

    def __post_init__(self) -> None:
        from napari_histo.training.nuclei import HELDOUT_SEEDS

        for name in ("steps", "batch_size", "patch_px", "slide_px", "width", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        if self.patch_px % 32:
            raise ValueError(f"`patch_px` must be a multiple of 32, got {self.patch_px}")
        if not 0 <= self.synthetic_per_batch <= self.batch_size:
            raise ValueError("`synthetic_per_batch` must be in [0, batch_size]")
        if not 0.25 <= self.model_mpp <= 1.0:
            raise ValueError(f"`model_mpp` must be in [0.25, 1], got {self.model_mpp!r}")
        if not 0 <= self.scale_jitter < 0.5:
            raise ValueError(f"`scale_jitter` must be in [0, 0.5), got {self.scale_jitter!r}")
        if set(self.synthetic_seeds) & set(HELDOUT_SEEDS):
            raise ValueError(f"`synthetic_seeds` must avoid the held-out seeds {HELDOUT_SEEDS}")


class _ScaledSampler:
    """Random patches of (rgb, labels, mpp) images, resampled to the model's µm/px ± jitter."""

    def __init__(self, images, patch_px, model_mpp, jitter, rng, nucleus_fraction=0.0) -> None:
        self.images = images
        self.patch = patch_px
        self.model_mpp = model_mpp
        self.jitter = jitter
        self.rng = rng
        self.nucleus_fraction = nucleus_fraction
        self.centres = []
        for _, labels, _ in images:
            ids = np.unique(labels[labels > 0])
            found = ndi.center_of_mass(labels > 0, labels, ids) if len(ids) else []
            self.centres.append(np.asarray(found, float).reshape(-1, 2))

    def one(self) -> tuple[np.ndarray, np.ndarray]:
        from napari_histo.training.nuclei import resize_labels

        k = int(self.rng.integers(len(self.images)))
        rgb, labels, mpp = self.images[k]
        scale = self.model_mpp * (1 + self.rng.uniform(-self.jitter, self.jitter)) / mpp
        side = min(round(self.patch * scale), *labels.shape)
        h, w = labels.shape
        centres = self.centres[k]
        if len(centres) and self.rng.random() < self.nucleus_fraction:
            cy, cx = centres[self.rng.integers(len(centres))] + self.rng.uniform(
                -side / 4, side / 4, 2
            )
            y0, x0 = int(cy) - side // 2, int(cx) - side // 2
        else:
            y0, x0 = int(self.rng.integers(h - side + 1)), int(self.rng.integers(w - side + 1))
        y0, x0 = min(max(y0, 0), h - side), min(max(x0, 0), w - side)
        crop = rgb[y0 : y0 + side, x0 : x0 + side]
        lab = labels[y0 : y0 + side, x0 : x0 + side]
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float()
        x = F.interpolate(
            x, size=(self.patch, self.patch), mode="bilinear", align_corners=False,
            antialias=True,
        )  # fmt: skip
        out_rgb = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
        out_lab = resize_labels(lab, self.patch / side)[: self.patch, : self.patch]
        return out_rgb, out_lab


#: skimage's rgb2hed matrices (Ruifrok & Johnston), optical density in log10 units.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float32
)
_RGB_FROM_HED[2] = torch.linalg.cross(_RGB_FROM_HED[0], _RGB_FROM_HED[1])
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def hed_jitter(
    x: torch.Tensor, generator: torch.Generator, *, scale: float = 0.25, shift: float = 0.04
) -> torch.Tensor:
    """Per-sample HED-space stain jitter of RGB in [0, 1] (B, 3, H, W).

    Haematoxylin, eosin and DAB concentrations are each scaled by ``1 ± scale`` and
    shifted by ``± shift`` optical density (uniform), then mixed back to RGB.
    """
    b = x.shape[0]
    od = -torch.log10(x.clamp(min=1 / 255))
    hed = torch.einsum("bchw,cd->bdhw", od, _HED_FROM_RGB)
    alpha = 1 + (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1) * scale
    beta = (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1) * shift
    tissue = (od.sum(dim=1, keepdim=True) > 0.15).float()  # keep glass white
    hed = hed * alpha + beta * tissue
    od = torch.einsum("bdhw,dc->bchw", hed, _RGB_FROM_HED).clamp(min=0)
    return torch.pow(10.0, -od).clamp(0, 1)


def _jpeg(x: torch.Tensor, rng: np.random.Generator, p: float) -> torch.Tensor:
    """JPEG-compress a share `p` of the samples (quality 30-90), RGB in [0, 1]."""
    from PIL import Image

    out = x.clone()
    for i in range(x.shape[0]):
        if rng.random() >= p:
            continue
        rgb = (x[i].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=int(rng.integers(30, 91)))
        with Image.open(buffer) as image:
            decoded = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        out[i] = torch.from_numpy(decoded).permute(2, 0, 1)
    return out


def _augment(x, labels, generator, rng, recipe):
    from napari_histo.training.augment import augment_batch

    x = hed_jitter(x, generator)
    x, labels = augment_batch(
        x, labels, generator, brightness=0.12, contrast=0.25, saturation=0.25, hue=0.05,
        stain=0.1, blur=1.2,
    )  # fmt: skip
    return _jpeg(x, rng, recipe.jpeg_p), labels


def _normalisation(images) -> dict[str, tuple[float, float, float]]:
    pixels = np.concatenate([rgb.reshape(-1, 3)[::97] for rgb, _, _ in images]) / 255.0
    return {
        "mean": tuple(round(float(v), 4) for v in pixels.mean(axis=0)),
        "std": tuple(round(float(v), 4) for v in pixels.std(axis=0)),
    }


def lr_factor(done: float) -> float:
    """Learning-rate factor at the share `done` of a run: 3 % warm-up, cosine to 5 %.

    The share is of the steps, or of the wall time when a run is capped by it (so the
    learning rate decays fully however busy the machine is).
    """
    if done < 0.03:
        return (done + 1e-3) / 0.03
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (done - 0.03) / 0.97)))


def training_batch(recipe, real_sampler, synth_sampler, n_synth, generator, rng):
    """One augmented batch: `n_synth` synthetic patches, then real ones, with targets.

    Returns
    -------
    x : Tensor of float (B, 3, H, W)
        RGB in [0, 1], not yet normalised.
    foreground : Tensor of int (B, H, W)
    hv : Tensor of float (B, 2, H, W)
    """
    from napari_histo.training.nuclei import training_targets

    pairs = [synth_sampler.one() if i < n_synth else real_sampler.one()
             for i in range(recipe.batch_size)]  # fmt: skip
    images = np.stack([p[0] for p in pairs])
    labels = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    x, labels = _augment(x, labels, generator, rng, recipe)
    foreground, hv = training_targets(labels)
    return x, foreground, hv


def _train(recipe, real, synthetic, normalisation, *, minutes, stop_after, progress, init):
    from napari_histo.training.nuclei import hovernet_loss

    tune_malloc()  # activations and gradients reused from the heap: CPU steps 7–37 % faster
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    real_sampler = _ScaledSampler(real, recipe.patch_px, recipe.model_mpp, recipe.scale_jitter, rng)
    synth_sampler = _ScaledSampler(
        synthetic or real, recipe.patch_px, recipe.model_mpp, recipe.scale_jitter, rng, 0.7
    )
    model = build_model("hovernet", {"width": recipe.width, "depth": recipe.depth})
    if init is not None:
        model.load_state_dict(init)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)

    mean = torch.tensor(normalisation["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(normalisation["std"]).view(1, 3, 1, 1)
    n_synth = recipe.synthetic_per_batch if synthetic else 0
    start, losses, step = time.perf_counter(), [], 0
    for step in range(1, recipe.steps + 1):
        done = (step - 1) / recipe.steps
        if minutes is not None:
            done = max(done, (time.perf_counter() - start) / (60 * minutes))
            if done >= 1:
                step -= 1
                break
        for group in optimiser.param_groups:
            group["lr"] = recipe.lr * lr_factor(done)
        x, foreground, hv = training_batch(
            recipe, real_sampler, synth_sampler, n_synth, generator, rng
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
            output = model(((x - mean) / std).contiguous())
        loss = hovernet_loss(output.float(), foreground, hv)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, recipe.steps, losses[-1])
        if stop_after is not None and step >= stop_after:
            break
    return model.eval(), step, time.perf_counter() - start, losses


TRAINING_DATA = (
    "MoNuSeg 2018 training set (Kumar et al., IEEE TMI 2017; monuseg.grand-challenge.org), "
    "CC BY-NC-SA 4.0: 12 of its tiles (1000² px, 0.25 µm/px, TCGA; liver, breast, kidney, "
    "prostate, bladder, colon, stomach) with nucleus instance labels; its non-commercial, "
    "share-alike terms apply to these weights. Plus napari-histo synthetic H&E-like slides "
    "(napari_histo.synthetic, seeds {seeds}, {slide_px} px at 0.25 µm/px; no licence terms)."
    "{init}"
)


def train_real_nuclei(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    minutes: float | None = None,
    recipe: RealNucleiRecipe | None = None,
    stop_after: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    workdir: str | Path | None = None,
    hv_params=None,
    run_note: str = "",
) -> Path:
    """Train the learned nuclei model on real MoNuSeg training tiles plus synthetic slides.

    Scores it on the validation and held-out tiles (and PanNuke when present) and on
    held-out synthetic slides, then saves ``hovernet-<version>.{safetensors,json}``.

    Parameters
    ----------
    data_dir : str or Path
        Folder with ``monuseg2018_train20`` (and optionally ``nuclei_pannuke_minitest10``).
    out_dir : str or Path
        Where the weights and card go.
    seed : int
        Training seed (the recipe's other fields stay as given).
    minutes : float, optional
        Wall-time budget of the optimisation: the learning-rate schedule then follows
        the elapsed share of it (or of ``recipe.steps``, whichever is further), so it
        decays fully on a busy machine; such a run is not bit-reproducible (the card
        says how many steps ran). Without it the run is reproducible from the seed.
    recipe : RealNucleiRecipe, optional
        Default :class:`RealNucleiRecipe`.
    stop_after : int, optional
        Stop after this many steps (schedule still ``recipe.steps`` long).
    progress : callable, optional
        ``progress(step, steps, loss)`` after every step.
    workdir : str or Path, optional
        Folder for the synthetic slides (default a temporary one).
    hv_params : HVParams, optional
        Post-processing used for the card's scores and kept as its ``postprocess``
        (default: the shipped defaults, and no ``postprocess``).
    run_note : str
        Extra text for the card's notes (machine, threads).

    Returns
    -------
    Path
        The saved card.
    """
    from napari_histo.nuclei.learned import HVParams
    from napari_histo.training.nuclei import HELDOUT_SEEDS, load_synthetic_nuclei

    recipe = dataclasses.replace(recipe or RealNucleiRecipe(), seed=seed)
    # Parameters given here are the card's: its metrics are measured with them.
    postprocess = None if hv_params is None else dict(hv_params.__dict__)
    hv_params = HVParams() if hv_params is None else hv_params
    real = [(t.rgb, t.labels, t.mpp) for t in load_monuseg(data_dir, "train")]
    if not real:
        raise FileNotFoundError(f"{data_dir}: no MoNuSeg training tiles")
    with tempfile.TemporaryDirectory(prefix="napari-histo-real-nuclei-") as tmp:
        work = Path(tmp) if workdir is None else Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        synthetic = [
            (rgb, labels.astype(np.int32), 0.25)
            for rgb, labels in load_synthetic_nuclei(
                recipe.synthetic_seeds, recipe.slide_px, 0.25, work
            )
        ]
        if recipe.init_card is None:
            normalisation, init = _normalisation(real + synthetic), None
        else:
            start = bundled_start(
                recipe.init_card, {"width": recipe.width, "depth": recipe.depth, "norm": "batch"}
            )
            normalisation, init = start.card.normalisation, start.model.state_dict()
        model, steps, seconds, losses = _train(
            recipe, real, synthetic, normalisation, minutes=minutes, stop_after=stop_after,
            progress=progress, init=init,
        )  # fmt: skip
        card = real_nuclei_card(recipe, normalisation)
        loaded = LoadedModel(model, card, Path("<memory>"))
        metrics = score_nuclei_model(loaded, data_dir, hv_params=hv_params, workdir=work)
    notes = (
        f"Trained by napari_histo.training.real_nuclei.train_real_nuclei(seed={seed}): "
        f"{steps} of {recipe.steps} scheduled steps in {seconds:.0f} s on the CPU "
        f"({torch.get_num_threads()} torch threads){'; ' + run_note if run_note else ''}; "
        f"final loss (mean of last 100 steps) {np.mean(losses[-100:]):.3f}. "
        f"Recipe: {recipe}. Split (fixed, by organ and tile): held out, never trained on "
        f"nor used for tuning: {list(HELDOUT_TILES)}; validation (post-processing "
        f"thresholds): {list(VALIDATION_TILES)}; the other 12 MoNuSeg tiles train. "
        f"Augmentation: random dihedral, HED stain jitter (±25 % scale, ±0.04 OD shift), "
        f"per-channel OD scaling, brightness/contrast/saturation/hue, Gaussian blur "
        f"(σ ≤ 1.2 px), JPEG (quality 30-90, {recipe.jpeg_p:.0%} of patches), scale jitter "
        f"±{recipe.scale_jitter:.0%} around {recipe.model_mpp} µm/px. Scores: mean over "
        f"tiles, post-processing {hv_params}; PanNuke (pannuke_cc_*): 10 mini-test tiles, "
        f"instances approximated by connected components of the masks (touching nuclei "
        f"merged), never trained on; heldout_synthetic_*: 16 level-0 512² tiles of synthetic "
        f"seeds {list(HELDOUT_SEEDS)}. MoNuSeg labels miss ~20 % of nuclei, which caps "
        f"AJI/PQ."
    )
    card = dataclasses.replace(card, metrics=metrics, notes=notes, postprocess=postprocess)
    return save_model(model, card, out_dir)


def score_nuclei_model(
    loaded: LoadedModel,
    data_dir: str | Path,
    *,
    hv_params=None,
    workdir: str | Path | None = None,
) -> dict[str, float]:
    """The card metrics of a nuclei model: real validation / held-out, PanNuke, synthetic.

    Keys ``val_real_*``, ``heldout_real_*``, ``pannuke_cc_*`` (when that folder is
    there) and ``heldout_synthetic_*`` for ``aji, pq, dq, sq`` (means over tiles), as
    ``segment_nuclei(..., "learned")`` segments (default size limits).
    """
    from napari_histo.nuclei.evaluate import score_synthetic_tiles
    from napari_histo.training.nuclei import HELDOUT_SEEDS

    segment = learned_segmenter(loaded, hv_params)
    metrics = {}
    for split, prefix in (("validation", "val"), ("heldout", "heldout")):
        scores = score_tiles(segment, load_monuseg(data_dir, split))
        metrics |= {f"{prefix}_real_{k}": scores[k] for k in ("aji", "pq", "dq", "sq")}
    try:
        scores = score_tiles(segment, load_pannuke(data_dir))
        metrics |= {f"pannuke_cc_{k}": scores[k] for k in ("aji", "pq", "dq", "sq")}
    except FileNotFoundError:
        pass
    with tempfile.TemporaryDirectory(prefix="napari-histo-nuclei-eval-") as tmp:
        work = Path(tmp) if workdir is None else Path(workdir)
        scores = score_synthetic_tiles(
            lambda rgb: segment(rgb, 0.25), HELDOUT_SEEDS, 16, 512, 2048, work
        )
    return metrics | {f"heldout_synthetic_{k}": round(v, 4) for k, v in scores.items()}


def _parent(init_card: str | None) -> str | None:
    return None if init_card is None else init_card.removesuffix(".json").rsplit("-", 1)[-1]


def _init_text(init_card: str | None) -> str:
    """What the card says of the starting weights (hovernet-1.x saw synthetic slides only)."""
    if init_card is None:
        return ""
    synthetic = Path(init_card).name.startswith("hovernet-1.")
    return f" Initialised from the weights of {init_card}" + (
        " (synthetic slides only)." if synthetic else "."
    )


def real_nuclei_card(recipe: RealNucleiRecipe, normalisation: dict) -> ModelCard:
    """The card of a model trained by :func:`train_real_nuclei` (weights not yet saved)."""
    return ModelCard(
        name="hovernet",
        version=recipe.version,
        parent_version=_parent(recipe.init_card),
        architecture="hovernet",
        config={"width": recipe.width, "depth": recipe.depth, "norm": "batch"},
        input_mpp=recipe.model_mpp,
        patch_px=256,
        normalisation=normalisation,
        classes=("background", "nucleus"),
        training_data=TRAINING_DATA.format(
            seeds=list(recipe.synthetic_seeds),
            slide_px=recipe.slide_px,
            init=_init_text(recipe.init_card),
        ),
    )
