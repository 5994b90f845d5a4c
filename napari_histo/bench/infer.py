"""``bench infer``: engine throughput vs the bare model, and vs a naive sliding window.

All in one run on one synthetic slide with about 30 % tissue:

* model only: the ensemble forward (with the same TTA) on random tensors of
  the engine's batch shape, as many tiles as the engine computes: the limit;
* patch engine: :func:`napari_histo.inference.engine.infer_slide` on the whole
  slide with blended patches (tissue detection, read-ahead, stitching and the
  zarr store included): ``patch_efficiency``, ``patch_speedup_vs_naive``;
* naive: every tile of a sliding window over the whole slide, background
  included, batch 1, reading each tile just before its forward pass, stitched
  into one in-memory array;
* large tiles (``tiling="large"``, when a member has a measured receptive
  margin): the same slide again, with ``compute_per_output_px`` (model pixels
  computed per output pixel, mean over members), its speed against the patch
  engine, the largest probability difference and ``dice_delta_vs_blend`` (tumor
  Dice against the slide's synthetic truth, large tiles minus blended patches),
  and ``large_efficiency`` against the members' bare forwards on the very pieces
  and patch rows it computes.

``efficiency``, ``speedup_vs_naive`` and ``engine_slide_s`` are those of
``napari-histo infer``'s default tiling ("auto", named in ``tiling``): the large
tiles where a member has a receptive margin, else the patch engine.

The slide is the 32k² synthetic slide of seed 2 (16k² with ``--quick``),
about 30 % tissue. RSS growth of the engine (peak during the run minus RSS
before it, sampled every 20 ms) is measured in fresh processes on an 8k² and
a 32k² slide (16k² with ``--quick``) built from real synthetic tiles, the
median of :data:`RSS_RUNS` runs each (one run's peak moves by ±200 MB with
the order in which the threads free their buffers; ``rss_runs_mb`` lists them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_histo._malloc import tune_malloc
from napari_histo.inference.engine import (
    EngineConfig,
    autocast,
    default_batch_size,
    default_read_threads,
    infer_slide,
    predict_batch,
    run,
    select_device,
)
from napari_histo.inference.ensemble import ensemble_predict, tta_transforms
from napari_histo.io.slide import Slide
from napari_histo.models import LoadedModel, latest_cards, load_model
from napari_histo.tiling import Stitcher, make_grid

RSS_PROBE = """
import json, sys, tempfile, threading, psutil
from napari_histo.inference.engine import EngineConfig, infer_slide, run
from napari_histo.models import load_model
members = [load_model(c) for c in sys.argv[3:]]
proc = psutil.Process()
base = proc.memory_info().rss
peak = [base]
stop = threading.Event()
def sample():
    while not stop.wait(0.02):
        peak[0] = max(peak[0], proc.memory_info().rss)
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
with tempfile.TemporaryDirectory() as out:
    # what `napari-histo infer` runs (sys.argv[2]: "amp" or "float32")
    config = EngineConfig(tiling="auto", amp=sys.argv[2] == "amp")
    result = run(infer_slide(sys.argv[1], members, config=config, out_dir=out))
stop.set()
sampler.join()
print(json.dumps({"rss_mb": (peak[0] - base) / 2**20, "tiles": result.tiles_run}))
"""


def _model_only(
    members: list[LoadedModel],
    tiles: int,
    batch: int,
    tta: tuple[int, ...],
    device: torch.device,
    amp: bool,
) -> float:
    """Seconds for the ensemble forward on `tiles` random tiles, `batch` at a time.

    The input already sits on the device and the forward runs under the
    engine's autocast (`amp`): the limit the engine is measured against.
    """
    patch = members[0].card.patch_px
    x = torch.randn(batch, 3, patch, patch, device=device)
    models = [m.model.to(device).eval() for m in members]
    cuda = device.type == "cuda"

    def forward(n: int) -> None:
        with autocast(device, amp):
            out = ensemble_predict(models, x[:n], tta)
        out.probability.float().cpu()  # the engine copies results back too

    forward(batch)  # warm-up
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for done in range(0, tiles, batch):
        forward(min(batch, tiles - done))
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _naive(
    path: Path, members: list[LoadedModel], tta: tuple[int, ...], device: torch.device, amp: bool
) -> tuple[float, int]:
    """Sliding window over the whole slide, batch 1, synchronous reads, the engine's
    precision (`amp`)."""
    card = members[0].card
    start = time.perf_counter()
    with Slide(path) as slide:
        width, height = slide.dimensions
        grid = make_grid(
            (0, 0, width, height),
            slide_mpp=slide.require_mpp(),
            model_mpp=card.input_mpp,
            tile_px=card.patch_px,
            overlap=0.5,
        )
        level = slide.best_level_for_downsample(grid.scale)
        ds = slide.level_downsamples[level]
        stitcher = Stitcher(grid, channels=4)
        for index in range(len(grid.origins)):
            x, y, w, h = grid.tile_region_l0(index)
            tile = slide.read_region(level, x, y, round(w / ds), round(h / ds))
            out = predict_batch(
                members,
                tile[None],
                tile_px=card.patch_px,
                tta=tta,
                device=device,
                amp=amp,
                class_index=1,
            )
            stitcher.add(index, out[0])
        stitcher.result()
    return time.perf_counter() - start, len(grid.origins)


#: Fresh-process runs per slide of the RSS probe (the median is reported).
RSS_RUNS = 3


def _rss(path: Path, cards: list[Path], amp: bool = True) -> list[float]:
    """Peak RSS growth (MB) of :data:`RSS_RUNS` runs, each in a fresh process."""
    peaks = []
    precision = "amp" if amp else "float32"
    for _ in range(RSS_RUNS):
        proc = subprocess.run(
            [sys.executable, "-c", RSS_PROBE, str(path), precision, *map(str, cards)],
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
        peaks.append(round(float(json.loads(proc.stdout.strip().splitlines()[-1])["rss_mb"]), 1))
    return peaks


def bench_infer(
    *,
    quick: bool = False,
    slide: str | None = None,
    tta: int = 1,
    device: str = "auto",
    batch_size: int | None = None,
    amp: bool = True,
) -> dict[str, Any]:
    """Run the inference benchmark; see the module docstring.

    `device` ("auto": cuda > mps > cpu), `batch_size` (None: the engine's
    default for the device) and `amp` (the engine's mixed precision,
    :func:`~napari_histo.inference.engine.autocast_dtype`; False: float32)
    apply to the engine, the model-only limit and the naive loop alike (the
    naive loop always uses batch 1).
    """
    from napari_histo.bench import bench_mosaic_slide, bench_slide

    torch_device = select_device(device)  # bad names fail before any slide is made
    tune_malloc()  # as the engine does: the baselines run under the same settings
    cards = list(latest_cards().values())
    if not cards:
        raise FileNotFoundError(
            "no model cards in napari_histo/resources/models; run `napari-histo train --synthetic`"
        )
    members = [load_model(c) for c in cards]
    transforms = tta_transforms(tta)
    # Seed 2: about 30 % of the slide is tissue.
    path = Path(slide) if slide else bench_slide(16384 if quick else 32768, seed=2)
    batch = batch_size or default_batch_size(torch_device)
    config = EngineConfig(tta=tta, device=device, batch_size=batch, amp=amp)
    # warm-up: kernels for these shapes
    _model_only(members, 2 * batch, batch, transforms, torch_device, amp)
    with tempfile.TemporaryDirectory() as out:
        result = run(infer_slide(path, members, config=config, out_dir=out))
        patch_prob = np.asarray(result.run.array("probability")[...])
        tiles_large = _large_tiles(path, members, config, patch_prob, result.geometry.downsample)
    engine_s = result.seconds
    tiles = result.tiles_run
    model_s = _model_only(members, tiles, batch, transforms, torch_device, amp)
    naive_s, naive_tiles = _naive(path, members, transforms, torch_device, amp)
    small = bench_mosaic_slide(8192)
    large = bench_mosaic_slide(16384 if quick else 32768)
    runs_small, runs_large = _rss(small, cards, amp), _rss(large, cards, amp)
    rss_small, rss_large = float(np.median(runs_small)), float(np.median(runs_large))
    # The headline figures are those of `napari-histo infer`'s default tiling
    # ("auto": large tiles when a member has a receptive margin), with the patch
    # engine's beside them.
    default_s, default_efficiency = engine_s, model_s / engine_s
    if tiles_large:
        default_s = tiles_large.pop("large_s")
        default_efficiency = tiles_large["large_efficiency"]
        tiles_large["large_speedup_vs_patch"] = round(engine_s / default_s, 3)
        tiles_large["large_speedup_vs_naive"] = round(naive_s / default_s, 3)
    return {
        "slide": str(path),
        "members": [m.card.name for m in members],
        "tta": tta,
        "device": result.device,
        "device_name": (
            torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu"
        ),
        "batch_size": batch,
        "precision": result.precision,
        "read_threads": default_read_threads(torch_device),
        "tiles": tiles,
        "naive_tiles": naive_tiles,
        "model_only_tiles_s": round(tiles / model_s, 3),
        "engine_tiles_s": round(tiles / engine_s, 3),
        "naive_tiles_s": round(naive_tiles / naive_s, 3),
        "tiling": "large" if tiles_large else "patch",
        "engine_slide_s": round(default_s, 3),
        "naive_slide_s": round(naive_s, 3),
        "efficiency": round(default_efficiency, 3),
        "speedup_vs_naive": round(naive_s / default_s, 3),
        "patch_slide_s": round(engine_s, 3),
        "patch_efficiency": round(model_s / engine_s, 3),
        "patch_speedup_vs_naive": round(naive_s / engine_s, 3),
        "rss_8k_mb": round(rss_small, 1),
        f"rss_{'16k' if quick else '32k'}_mb": round(rss_large, 1),
        "rss_growth_mb": round(rss_large - rss_small, 1),
        "rss_runs_mb": {"8k": runs_small, "16k" if quick else "32k": runs_large},
        "torch_threads": torch.get_num_threads(),
        "tissue_tiles_fraction": round(tiles / max(naive_tiles, 1), 3),
        **tiles_large,
        "numpy": np.__version__,
    }


def _large_tiles(path, members, config, patch_prob, downsample) -> dict[str, Any]:
    """The large-tile engine on the same slide: speed, compute per pixel and quality."""
    import dataclasses

    from napari_histo.inference.blocks import large_tile_default
    from napari_histo.inference.engine import plan_inference
    from napari_histo.synthetic import read_truth
    from napari_histo.training.default_ensemble import truth_overlap

    if all(m.card.receptive_margin_px is None for m in members):
        return {}
    large_config = dataclasses.replace(config, tiling="large")
    with tempfile.TemporaryDirectory() as out:
        plan = plan_inference(path, members, config=large_config, out_dir=out)
        bare_s = _bare_block_forwards(plan)
        output_px = len(plan.todo) * plan.grid.stride_px**2
        computed = plan.computed_px
        result = run(infer_slide(path, members, config=large_config, out_dir=out))
        prob = np.asarray(result.run.array("probability")[...])
    fields = {
        "large_s": result.seconds,
        "large_efficiency": round(bare_s / result.seconds, 3),
        "large_tile_px": large_config.large_tile_px or large_tile_default(plan.device),
        "large_blocks": len(plan.blocks),
        "compute_per_output_px": round(computed / max(output_px, 1), 3),
        "compute_per_output_px_patch": round(1 / (1 - config.overlap) ** 2, 3),
        "max_abs_prob_diff": round(float(np.abs(prob - patch_prob).max()), 4),
        "mean_abs_prob_diff": round(float(np.abs(prob - patch_prob).mean()), 5),
    }
    truth_path = Path(path).with_suffix(".truth.zarr")
    if truth_path.exists():
        truth = read_truth(truth_path)
        dice = []
        for p in (prob, patch_prob):
            inter, total = truth_overlap(p, downsample, truth)
            dice.append(2 * inter / total if total else 1.0)
        fields["dice_large"] = round(dice[0], 4)
        fields["dice_delta_vs_blend"] = round(dice[0] - dice[1], 4)
    return fields


def _bare_block_forwards(plan) -> float:
    """Seconds of the members' bare forwards on the inputs the large-tile plan computes.

    The same pieces (local members) and rows of patches (the others),
    :func:`_block_forward_shapes`, on random tensors already normalised: the
    limit the large-tile engine is measured against (``large_efficiency``), as
    the patch engine's is the model-only run.
    """
    cuda = plan.device.type == "cuda"
    total = 0.0
    with torch.inference_mode(), autocast(plan.device, plan.config.amp):
        for model, shape in _block_forward_shapes(plan):
            x = torch.randn(shape, device=plan.device)  # made outside the timing
            if cuda:
                torch.cuda.synchronize(plan.device)
            start = time.perf_counter()
            torch.softmax(model(x).float(), 1)
            if cuda:
                torch.cuda.synchronize(plan.device)
            total += time.perf_counter() - start
    return total


def _block_forward_shapes(plan) -> list[tuple[Any, tuple[int, int, int, int]]]:
    """``(model, input shape)`` of every member forward a large-tile plan makes.

    Transforms are grouped as the engine runs them
    (:func:`~napari_histo.inference.engine.block_transform_masks`): a group's
    flipped masks give the local members' pieces (one batch item per
    transform), and each transform's own lattice gives the other members' patches.
    """
    from napari_histo.inference.blocks import local_pieces, patch_rows
    from napari_histo.inference.engine import block_transform_masks, default_batch_size
    from napari_histo.inference.plan import block_centres, block_need

    patch = plan.members[0].card.patch_px
    batch = plan.config.batch_size or default_batch_size(plan.device)
    shapes: list[tuple[Any, tuple[int, int, int, int]]] = []
    for block in plan.blocks:
        need = block_need(block, plan.grid)
        centres = block_centres(block, plan.grid, patch)
        for group, needs, lattices in block_transform_masks(need, centres, block, plan.tta):
            for member, margin, core in zip(
                plan.members, plan.member_margins, plan.sub_tile_px, strict=True
            ):
                if margin is None:
                    for one_need, lattice in zip(needs, lattices, strict=True):
                        for _, row in patch_rows(one_need, lattice, patch):
                            shapes += [(member.model, (len(row[k : k + batch]), 3, patch, patch))
                                       for k in range(0, len(row), batch)]  # fmt: skip
                else:
                    found = local_pieces(needs, plan.margin_px, core)
                    shapes += [(member.model, (len(group), 3, h + 2 * margin, w + 2 * margin))
                               for _, _, h, w in found]  # fmt: skip
    return shapes
