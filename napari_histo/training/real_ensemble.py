"""Train the tumor ensemble v2 on real H&E tiles plus synthetic slides.

``napari-histo train --real DATA_DIR`` runs :func:`train_real_ensemble`:
the training part of every real source (:mod:`napari_histo.training.realdata`)
and patches of synthetic slides are mixed by fixed source weights; each member
sees its own bootstrap of the tiles, its own data order and augmentation
strength (diversity, so the members disagree where the data is thin);
augmentation is strong on stain (HED jitter, colour, blur, JPEG) because real
slides differ most there. Tiles with only a tile-level label (oral SCC) enter
through a multiple-instance loss: the mean tumor probability of the top fifth
of the pixels must be high in a tumor tile. After training, the ensemble is
scored on the held-out tiles of every source and on held-out synthetic slides.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_histo._malloc import tune_malloc
from napari_histo.models import (
    ModelCard,
    build_model,
    default_models_dir,
    read_card,
    save_model,
)
from napari_histo.models.receptive import with_measured_margin
from napari_histo.training.augment import augment_batch, hed_jitter, jpeg_artefacts
from napari_histo.training.default_ensemble import (
    heldout_dice,
    synthetic_slides,
    tumor_member_card,
)
from napari_histo.training.losses import IGNORE, segmentation_loss
from napari_histo.training.realdata import (
    SOURCES,
    RealTile,
    load_tumor_tiles,
    resample_labels,
)
from napari_histo.training.trainer import TrainProgress, bundled_start

__all__ = [
    "REAL_MEMBERS",
    "RealRecipe",
    "real_training_data",
    "train_real_ensemble",
]

#: Members of ensemble v2: three architectures, each with its own seed, bootstrap
#: and augmentation strength.
REAL_MEMBERS: tuple[tuple[str, dict], ...] = (
    ("resunet", {"width": 8, "depth": 4}),
    ("denseunet", {"width": 8, "depth": 4, "layers": 2}),
    ("deeplabv3plus", {"width": 12}),
)
SYNTHETIC_TRAIN_SEEDS = (1000, 1001)
#: Added to a member's seed for the batches of the warm restart.
RESTART_SEED = 500
SYNTHETIC_HELDOUT_SEEDS = (2000, 2001)


@dataclass(frozen=True)
class RealRecipe:
    """Everything that determines the trained weights (besides code and data)."""

    seed: int = 0
    steps: int = 1500
    batch_size: int = 12
    lr: float = 6e-4
    train_patch_px: int = 192
    infer_patch_px: int = 256
    model_mpp: float = 1.0
    synthetic_slide_px: int = 8192
    synthetic_patches: int = 400
    weights: tuple[tuple[str, float], ...] = (
        ("camelyon16", 0.18),
        ("bcss", 0.13),
        ("glas", 0.14),
        ("ebhi", 0.08),
        ("kather2016", 0.05),
        ("oral_oscc", 0.2),
        ("synthetic", 0.22),
    )
    mil_weight: float = 0.5
    #: A warm restart after `steps`: this many more steps from `restart_lr`, with a
    #: fresh optimiser and a new draw of batches (0: none).
    restart_steps: int = 0
    restart_lr: float = 6e-4
    version: str = "2.1"
    members: tuple[tuple[str, dict], ...] = field(default=REAL_MEMBERS)
    #: Start each member from the bundled ``<architecture>-<init_version>`` weights
    #: (and their input normalisation) instead of random ones (None: from scratch).
    init_version: str | None = "2.0"
    #: Forward passes under bfloat16 autocast (weights, loss and optimiser stay
    #: float32): about 1.7x faster on CPUs with AVX512-BF16 or AMX.
    bf16: bool = True


#: The recipe of ensemble v2.0 (from scratch; v2.1, the default recipe above, starts
#: from its weights).
RECIPE_V2_0 = RealRecipe(
    steps=2000, lr=2e-3, train_patch_px=128, restart_steps=800, restart_lr=6e-4,
    version="2.0", init_version=None, bf16=False,
)  # fmt: skip


def real_training_data(recipe: RealRecipe) -> str:
    """The card's ``training_data`` text: every set with its licence and scale."""
    lines = [
        f"{SOURCES[s].citation} [{s}; {SOURCES[s].organ}; {SOURCES[s].mpp} µm/px "
        f"({SOURCES[s].mpp_note}); licence: {SOURCES[s].licence}]"
        for s, _ in recipe.weights
        if s in SOURCES
    ]
    lines.append(
        f"napari-histo synthetic slides (seeds {list(SYNTHETIC_TRAIN_SEEDS)}, "
        f"{recipe.synthetic_slide_px} px at 0.25 µm/px) [generated; BSD-3-Clause]"
    )
    return (
        "Real H&E, training split only (held-out tiles per source fixed in "
        "napari_histo.training.realdata): " + "; ".join(lines)
    )


def member_card(
    recipe: RealRecipe, architecture: str, config: dict, normalisation: dict, notes: str = ""
) -> ModelCard:
    """The card of a member the recipe trains (metrics come after scoring)."""
    return tumor_member_card(
        recipe,
        architecture,
        config,
        normalisation,
        training_data=real_training_data(recipe),
        notes=notes,
        parent_version=recipe.init_version,
    )


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class _Pool:
    """Training tiles of one source, and how often a batch draws from it."""

    name: str
    weight: float
    images: list[np.ndarray]
    masks: list[np.ndarray]
    tile_labels: list[int]  # -1: pixel labels only


def _synthetic_pool(recipe: RealRecipe, work: Path, weight: float) -> _Pool:
    from napari_histo.synthetic import read_truth
    from napari_histo.training.data import sample_patches

    images, masks = [], []
    size = round(recipe.train_patch_px * 1.3)
    slides = synthetic_slides(work, SYNTHETIC_TRAIN_SEEDS, recipe.synthetic_slide_px)
    for i, path in enumerate(slides):
        truth = read_truth(path.with_suffix(".truth.zarr"))
        patches = sample_patches(
            path,
            np.asarray(truth.tumor),
            np.asarray(truth.tissue),
            truth.downsample,
            count=recipe.synthetic_patches,
            patch_px=size,
            model_mpp=recipe.model_mpp,
            seed=recipe.seed * 7919 + i,
        )
        images += list(patches.images)
        masks += list(patches.masks)
    return _Pool("synthetic", weight, images, masks, [-1] * len(images))


def _pools(tiles: Sequence[RealTile], recipe: RealRecipe, work: Path) -> list[_Pool]:
    pools = []
    for name, weight in recipe.weights:
        if name == "synthetic":
            pools.append(_synthetic_pool(recipe, work, weight))
            continue
        chosen = [t for t in tiles if t.source == name]
        if not chosen:
            raise ValueError(f"no training tiles of source {name!r}")
        pools.append(
            _Pool(
                name,
                weight,
                [t.image for t in chosen],
                [t.mask for t in chosen],
                [
                    -1 if t.tile_label is None or t.source != "oral_oscc" else t.tile_label
                    for t in chosen
                ],
            )
        )
    return pools


def _normalisation(pools: Sequence[_Pool]) -> dict[str, list[float]]:
    """Per-channel mean and std of RGB in [0, 1], weighted like the batches."""
    mean = np.zeros(3)
    square = np.zeros(3)
    total = sum(p.weight for p in pools)
    for pool in pools:
        pixels = np.concatenate([im.reshape(-1, 3)[::7] for im in pool.images]) / 255.0
        mean += pool.weight / total * pixels.mean(0)
        square += pool.weight / total * (pixels**2).mean(0)
    std = np.sqrt(square - mean**2)
    return {"mean": mean.round(4).tolist(), "std": std.round(4).tolist()}


class _Batches:
    """Draws augmented batches: source by weight, tile by the member's bootstrap."""

    def __init__(self, pools: Sequence[_Pool], recipe: RealRecipe, seed: int, strength: float):
        self.pools = pools
        self.recipe = recipe
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.strength = strength
        weights = np.array([p.weight for p in pools])
        self.p = weights / weights.sum()
        # Bootstrap of each source's tiles (sources with few tiles keep them all).
        self.index = [
            self.rng.integers(0, len(p.images), len(p.images))
            if len(p.images) >= 8
            else np.arange(len(p.images))
            for p in pools
        ]

    def _crop(self, pool: _Pool, i: int) -> tuple[np.ndarray, np.ndarray, int]:
        size = self.recipe.train_patch_px
        image, mask = pool.images[i], pool.masks[i]
        side = round(size * float(np.exp(self.rng.uniform(np.log(0.8), np.log(1.25)))))
        h, w = mask.shape
        if h < side or w < side:  # small tiles: pad with white glass of unknown label
            ph, pw = max(0, side - h), max(0, side - w)
            top, left = self.rng.integers(0, ph + 1), self.rng.integers(0, pw + 1)
            pad = ((top, ph - top), (left, pw - left))
            image = np.pad(image, (*pad, (0, 0)), constant_values=255)
            mask = np.pad(mask, pad, constant_values=IGNORE)
            h, w = mask.shape
        y, x = self.rng.integers(0, h - side + 1), self.rng.integers(0, w - side + 1)
        image, mask = image[y : y + side, x : x + side], mask[y : y + side, x : x + side]
        if self.rng.random() < 0.3 * self.strength:
            image = jpeg_artefacts(image, self.rng, (30, 90))
        if side != size:
            t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
            t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=side > size)
            image = t[0].permute(1, 2, 0).clamp(0, 255).byte().numpy()
            mask = resample_labels(mask, (size, size))
        return image, mask, pool.tile_labels[i]

    def __call__(self, normalisation: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, labels = self.crops()
        x, y = self.augment(x, y, normalisation)
        return x, y, labels

    def crops(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch of crops as drawn (RGB uint8 (B, 3, H, W), labels, tile labels);
        numpy draws only."""
        n = self.recipe.batch_size
        sources = self.rng.choice(len(self.pools), size=n, p=self.p)
        crops = [self._crop(self.pools[s], int(self.rng.choice(self.index[s]))) for s in sources]
        x = torch.from_numpy(np.stack([c[0] for c in crops])).permute(0, 3, 1, 2)
        y = torch.from_numpy(np.stack([c[1] for c in crops]))
        labels = torch.tensor([c[2] for c in crops])
        return x, y, labels

    def augment(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        normalisation: dict,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stain, colour, blur and dihedral augmentation of `crops`, then normalisation,
        on `x`'s device; the draws come from `generator` (default: this member's)."""
        generator = generator or self.generator
        s = self.strength
        x = hed_jitter(x.float() / 255, generator, scale=0.3 * s, shift=0.06 * s)
        x, y = augment_batch(
            x,
            y,
            generator,
            brightness=0.12 * s,
            contrast=0.2 * s,
            saturation=0.25 * s,
            hue=0.04 * s,
            stain=0.1 * s,
            blur=1.2 * s,
        )
        mean = torch.tensor(normalisation["mean"], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(normalisation["std"], device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std, y


def _member_seed_strength(recipe: RealRecipe, index: int) -> tuple[int, float]:
    """Member `index`'s seed (bootstrap, data order, init) and augmentation strength."""
    return recipe.seed * 1000 + index, (1.0, 0.8, 1.2)[index % 3]


def _mil_loss(logits: torch.Tensor, tile_labels: torch.Tensor) -> torch.Tensor:
    """BCE of each labelled tile's top-fifth mean tumor probability against its label."""
    chosen = tile_labels >= 0
    if not bool(chosen.any()):
        return logits.new_zeros(())
    prob = logits[chosen].softmax(dim=1)[:, 1].flatten(1)
    k = max(1, prob.shape[1] // 5)
    top = prob.topk(k, dim=1).values.mean(dim=1).clamp(1e-4, 1 - 1e-4)
    return F.binary_cross_entropy(top, tile_labels[chosen].float())


def training_step(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    tile_labels: torch.Tensor,
    recipe: RealRecipe,
) -> torch.Tensor:
    """One optimiser step of the recipe's loss (DigiPathAI, plus MIL on tile labels)
    on a batch, forwards under bfloat16 autocast when ``recipe.bf16``; the loss."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
        logits = model(x)
    logits = logits.float()
    loss = segmentation_loss(logits, y) + recipe.mil_weight * _mil_loss(logits, tile_labels)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    return loss


def _train_member(
    model: torch.nn.Module,
    batches: _Batches,
    recipe: RealRecipe,
    normalisation: dict,
    cancel: threading.Event | None,
    snapshot: Callable[[int, torch.nn.Module], None] | None = None,
    snapshot_every: int = 500,
) -> Generator[TrainProgress, None, int]:
    tune_malloc()  # activations and gradients reused from the heap: CPU steps 7–37 % faster
    # Backward through channels_last convolutions crashes on CPU in torch 2.13
    # (load_model returns channels_last models): train in NCHW.
    model.to(memory_format=torch.contiguous_format)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    steps = recipe.steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: min(1.0, (s + 1) / 50) * (0.02 + 0.49 * (1 + math.cos(math.pi * s / steps))),
    )
    model.train()
    start = time.monotonic()
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="histo-real-prefetch")
    done = 0
    try:
        pending = prefetch.submit(batches, normalisation)
        for step in range(1, steps + 1):
            if cancel is not None and cancel.is_set():
                break
            x, y, labels = pending.result()
            if step < steps:
                pending = prefetch.submit(batches, normalisation)
            loss = training_step(model, optimiser, x, y, labels, recipe)
            schedule.step()
            done = step
            if snapshot is not None and step % snapshot_every == 0 and step < steps:
                model.eval()
                snapshot(step, model)
                model.train()
            elapsed = time.monotonic() - start
            yield TrainProgress(
                step=step,
                steps=steps,
                loss=float(loss.detach()),
                elapsed_s=elapsed,
                eta_s=elapsed / step * (steps - step),
            )
    finally:
        prefetch.shutdown(wait=True, cancel_futures=True)
    model.eval()
    return done


def train_real_ensemble(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    recipe: RealRecipe | None = None,
    *,
    work_dir: str | os.PathLike[str] | None = None,
    members: Sequence[int] | None = None,
    cancel: threading.Event | None = None,
    log: Callable[[str], None] = print,
    snapshots: str | os.PathLike[str] | None = None,
) -> Generator[tuple[str, TrainProgress], None, list[Path]]:
    """Train and save the members of ensemble v2; yields ``(member, progress)``.

    Parameters
    ----------
    data_dir : path
        The real-data folder (``shared/data/real``).
    out_dir : path
        Where the weights and cards go.
    recipe : RealRecipe, optional
        Defaults to ``RealRecipe()``.
    work_dir : path, optional
        Cache of the synthetic slides (generated when missing).
    members : sequence of int, optional
        Indices of ``recipe.members`` to train (default: all); each member's
        result depends only on the recipe and its index.
    snapshots : path, optional
        Save each member every 500 steps here as ``<name>-<version>.step<N>``
        (to watch held-out scores during a long run).

    Returns
    -------
    list of Path
        Card paths written to `out_dir`.
    """
    recipe = recipe or RealRecipe()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="histo-real-"))
    work.mkdir(parents=True, exist_ok=True)
    tiles = load_tumor_tiles(data_dir, recipe.model_mpp, split="train")
    pools = _pools(tiles, recipe, work)
    if recipe.init_version is None:
        normalisation = _normalisation(pools)
    else:  # the started members' own (every v2 member has the same)
        normalisation = read_card(default_models_dir() / _init_card(recipe, 0)).normalisation
    log(
        "training tiles: "
        + ", ".join(f"{p.name} {len(p.images)}" for p in pools)
        + f"; normalisation {normalisation}"
    )
    cards = []
    chosen = range(len(recipe.members)) if members is None else members
    for index in chosen:
        architecture, config = recipe.members[index]
        seed, strength = _member_seed_strength(recipe, index)
        torch.manual_seed(seed)
        if recipe.init_version is None:
            model = build_model(architecture, {**config, "num_classes": 2})
        else:
            model = _init_member(recipe, index).model
        batches = _Batches(pools, recipe, seed, strength)
        started = time.monotonic()
        card = member_card(recipe, architecture, config, normalisation)

        def snapshot(step: int, model: torch.nn.Module, card: ModelCard = card) -> None:
            if snapshots is not None:
                save_model(model, replace(card, version=f"{recipe.version}.{step}"), snapshots)

        phases = [(recipe, batches)]
        if recipe.restart_steps:
            restart = replace(recipe, steps=recipe.restart_steps, lr=recipe.restart_lr)
            phases.append((restart, _Batches(pools, recipe, seed + RESTART_SEED, strength)))
        done = 0
        for phase, phase_batches in phases:
            steps = _train_member(model, phase_batches, phase, normalisation, cancel, snapshot)
            while True:
                try:
                    yield architecture, next(steps)
                except StopIteration as stop:
                    finished = stop.value
                    break
            done += finished
            if finished < phase.steps:
                log(f"{architecture}: cancelled after {done} steps; nothing saved")
                return cards
        card = replace(
            card,
            notes=(
                f"Trained by `napari-histo train --real DATA_DIR` (member {index}, augmentation "
                f"strength {strength}, bootstrap seed {seed}) with {recipe}; {done} steps in "
                f"{time.monotonic() - started:.0f} s on torch {torch.__version__}."
            ),
        )
        cards.append(save_model(model, card, out))
        log(f"{architecture}: saved {cards[-1]}")
    if members is None:
        finalize_real_ensemble(data_dir, cards, work, log=log)
    return cards


def _init_card(recipe: RealRecipe, index: int) -> str:
    """Card file of the bundled member `index` of ``recipe.init_version``."""
    return f"{recipe.members[index][0]}-{recipe.init_version}.json"


def _init_member(recipe: RealRecipe, index: int):
    """The bundled member `index` of ``recipe.init_version``, checked against the recipe."""
    card_file = _init_card(recipe, index)
    loaded = bundled_start(card_file, {**recipe.members[index][1], "num_classes": 2})
    if loaded.card.input_mpp != recipe.model_mpp:
        raise ValueError(f"{card_file}: {loaded.card.input_mpp} µm/px != the recipe's")
    return loaded


def synthetic_heldout_dice(card_paths: Sequence[Path], work_dir: str | os.PathLike[str]) -> float:
    """Tumor Dice of the ensemble on the held-out synthetic slides (never trained on)."""
    slides = synthetic_slides(Path(work_dir), SYNTHETIC_HELDOUT_SEEDS, 8192)
    return heldout_dice(slides, card_paths)


def with_metrics(card_path: Path, metrics: dict[str, float]) -> Path:
    """Rewrite a saved member's card with `metrics` added (weights unchanged)."""
    from napari_histo.models import read_card, write_card

    card = read_card(card_path)
    updated = replace(card, metrics={**card.metrics, **metrics})
    write_card(card_path, updated)
    return card_path


def stain_reference(
    data_dir: str | os.PathLike[str], model_mpp: float, *, per_source: int = 40, seed: int = 0
):
    """Stain statistics of the training tiles, at most `per_source` from each source.

    Capping per source keeps one large source (1,000 oral photos) from defining
    what "typical" staining is.
    """
    from napari_histo.ood import fit_reference, stain_features

    rng = np.random.default_rng(seed)
    tiles = load_tumor_tiles(data_dir, model_mpp, split="train")
    features = []
    for source in sorted({t.source for t in tiles}):
        chosen = [t for t in tiles if t.source == source]
        if len(chosen) > per_source:
            chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), per_source, False))]
        features += [stain_features(t.image) for t in chosen]
    return fit_reference(features)


def finalize_real_ensemble(
    data_dir: str | os.PathLike[str],
    card_paths: Sequence[Path],
    work_dir: str | os.PathLike[str],
    *,
    tta: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Score the trained ensemble on held-out data and write the figures into its cards.

    Every member's card gets the ensemble's held-out figures per real source
    (``heldout_<source>_dice`` / ``_auroc`` / ``_epistemic_error_auroc`` /
    ``_tile_auroc``), the held-out synthetic Dice, and the stain reference of
    the training tiles (for the out-of-distribution warning).
    """
    from napari_histo.models import read_card, write_card
    from napari_histo.training.realdata import heldout_tumor_scores

    cards = [Path(p) for p in card_paths]
    model_mpp = read_card(cards[0]).input_mpp
    scores = heldout_tumor_scores(data_dir, cards, tta=tta)
    metrics = {}
    for source, figures in scores.items():
        for key in ("dice", "auroc", "epistemic_error_auroc", "tile_auroc"):
            value = figures.get(key)
            if (
                value is not None
                and value == value
                and not (key != "tile_auroc" and source == "oral_oscc")
            ):
                metrics[f"heldout_{source}_{key}"] = float(value)
    metrics["heldout_synthetic_dice_tumor"] = round(synthetic_heldout_dice(cards, work_dir), 4)
    reference = stain_reference(data_dir, model_mpp).to_dict()
    for path in cards:
        card = read_card(path)
        write_card(
            path,
            replace(card, metrics={**card.metrics, **metrics}, stain_reference=reference),
        )
        with_measured_margin(path)  # for the engine's large tiles
    log(f"held-out figures: {metrics}")
    return scores


def restart_member(
    data_dir: str | os.PathLike[str],
    card_path: Path,
    out_dir: str | os.PathLike[str],
    recipe: RealRecipe,
    index: int,
    *,
    work_dir: str | os.PathLike[str],
) -> Generator[TrainProgress, None, Path]:
    """Run only the warm-restart phase of member `index`, from its saved first phase.

    Gives the same member as :func:`train_real_ensemble` with ``restart_steps``
    (the first phase's weights are what `card_path` holds), so a long run can
    be split in two.
    """
    from napari_histo.models import load_model

    loaded = load_model(card_path)
    tiles = load_tumor_tiles(data_dir, recipe.model_mpp, split="train")
    pools = _pools(tiles, recipe, Path(work_dir))
    seed, strength = _member_seed_strength(recipe, index)
    restart = replace(recipe, steps=recipe.restart_steps, lr=recipe.restart_lr)
    batches = _Batches(pools, recipe, seed + RESTART_SEED, strength)
    model = loaded.model
    started = time.monotonic()
    done = yield from _train_member(model, batches, restart, loaded.card.normalisation, None, None)
    card = replace(
        loaded.card,
        notes=(
            f"Trained by `napari-histo train --real DATA_DIR` (member {index}, augmentation "
            f"strength {strength}, bootstrap seed {seed}) with {recipe}: {recipe.steps} steps, "
            f"then a warm restart of {done} steps ({time.monotonic() - started:.0f} s) on "
            f"torch {torch.__version__}."
        ),
    )
    return save_model(model, card, out_dir)
