"""``bench review``: does the ranking find a planted failure; does temperature scaling help.

For each seed a synthetic slide (no artefacts) is written and read at the
default ensemble's 1 µm/px; a square of tissue (:data:`PLANT_UM` µm a side,
at a seeded random tissue position) is replaced by tissue the models never
saw (see :func:`plant_failure`: a hue-rotated, re-stained copy, or a
foreign striped texture), and the default ensemble
(:func:`~napari_histo.models.latest_cards` of the shipped models) runs on
the whole array (:func:`~napari_histo.inference.tiles.predict_tile`, what the
engine does tile by tile). Then:

* ``hotspot_hit_at5``: share of seeds whose top 5 regions (the review
  queue's default ``"uncertainty"`` score, :data:`REGION_UM` µm squares)
  include one that overlaps the planted square by at least a quarter of its
  own area; ``hotspot_hit_at5_chance`` is the same for a random ranking
  (expected value, for comparison); ``hotspot_hit_at5_epistemic`` /
  ``_disagreement`` / ``_boundary``: the same ranked by those scores;
  ``planted_rank_median``: median rank of the best overlapping region (1 = top);
* ``ece_before`` / ``ece_after``: expected calibration error of the tumor
  probability on held-out stripes of the slides (the planted squares left
  out), before and after a temperature fitted on the other stripes (truth:
  the synthetic slides' tumor masks); ``temperature``;
* ``synthetic_ensemble_*``: the same for the shipped synthetic-trained
  ensemble (v1.0): the default ensemble is trained on real tissue, and on
  synthetic slides all tissue is somewhat foreign to it;
* ``rank_10k_s``: ranking 10 000 candidate regions of a 100 000² slide from
  its pyramid level (1600² px at 16 µm/px with 16 px blocks; synthetic
  values, 70 % glass), best of three.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from napari_histo.io.store import ResultGeometry
from napari_histo.review.calibration import fit_calibration, held_out_stripes
from napari_histo.review.regions import RegionGrid, rank_regions

#: Side of the planted failure, µm.
PLANT_UM = 160
#: Side of a candidate region, µm.
REGION_UM = 64.0
#: Model resolution of the default ensemble, µm/px.
MODEL_MPP = 1.0
FAILURES = ("dark", "hue", "texture")


def plant_failure(rgb: np.ndarray, rect: tuple[int, int, int, int], kind: str) -> np.ndarray:
    """A copy of `rgb` whose `rect` (x, y, w, h, px) shows tissue the models never saw.

    ``"dark"``: the tissue at 45 % of its intensity (a far too heavy stain
    or thick section: same structure, colours the models never saw);
    ``"hue"``: the tissue's hue turned by 150° about the grey axis and its
    saturation doubled (pink/purple H&E becomes green/blue); ``"texture"``:
    a foreign pattern, saturated green and yellow stripes 6 px wide.
    """
    if kind not in FAILURES:
        raise ValueError(f"`kind` must be one of {FAILURES}, got {kind!r}")
    x, y, w, h = rect
    out = rgb.copy()
    patch = out[y : y + h, x : x + w].astype(np.float64)
    if kind == "dark":
        out[y : y + h, x : x + w] = (patch * 0.45).astype(np.uint8)
    elif kind == "hue":
        grey = patch.mean(axis=2, keepdims=True)
        angle = math.radians(150)
        axis = np.ones(3) / math.sqrt(3)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
        turned = (patch - grey) @ rotation.T * 2.0 + grey
        out[y : y + h, x : x + w] = np.clip(turned, 0, 255).astype(np.uint8)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = ((xx + yy) // 6) % 2 == 0
        out[y : y + h, x : x + w] = np.where(
            stripes[..., None], np.array([40, 170, 60]), np.array([230, 210, 40])
        ).astype(np.uint8)
    return out


def _slide(size: int, seed: int) -> Any:
    from napari_histo.paths import cache_dir
    from napari_histo.synthetic import write_synthetic_slide

    path = cache_dir() / "bench" / f"review_{size}px_seed{seed}.svs"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_slide(path, size, seed=seed, artefacts=False, workers=1)
    return path


def _read(path: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """RGB at 1 µm/px, tissue and tumor masks on the same grid, level-0 px per grid px."""
    from napari_histo.io.slide import Slide
    from napari_histo.synthetic import read_truth, truth_path_for

    with Slide(path) as slide:
        downsample = MODEL_MPP / slide.require_mpp()
        level = slide.best_level_for_downsample(downsample)
        ds = slide.level_downsamples[level]
        w, h = (round(d / ds) for d in slide.dimensions)
        rgb = slide.read_region(level, 0, 0, w, h)
    if ds != downsample:
        raise ValueError(f"{path}: no level at {MODEL_MPP} µm/px (downsample {downsample})")
    truth = read_truth(truth_path_for(path))
    f = int(truth.downsample / downsample)
    tissue = np.repeat(np.repeat(np.asarray(truth.tissue[...]), f, 0), f, 1)[:h, :w]
    tumor = np.repeat(np.repeat(np.asarray(truth.tumor[...]), f, 0), f, 1)[:h, :w]
    return rgb, tissue.astype(bool), tumor.astype(bool), downsample


def _plant_rect(tissue: np.ndarray, seed: int) -> tuple[int, int, int, int]:
    """A PLANT_UM square mostly on tissue, at a seeded position."""
    side = int(PLANT_UM / MODEL_MPP)
    h, w = tissue.shape
    rng = np.random.default_rng(seed)
    best, best_cover = (0, 0, side, side), -1.0
    for _ in range(200):
        x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        cover = float(tissue[y : y + side, x : x + side].mean())
        if cover > best_cover:
            best, best_cover = (x, y, side, side), cover
        if cover > 0.95:
            break
    return best


def _overlaps(rect_l0: tuple[int, ...], plant_l0: tuple[int, ...]) -> bool:
    x, y, w, h = rect_l0
    px, py, pw, ph = plant_l0
    ix = max(0, min(x + w, px + pw) - max(x, px))
    iy = max(0, min(y + h, py + ph) - max(y, py))
    return ix * iy >= 0.25 * w * h


def _chance_at5(n: int, k: int) -> float:
    """P(a random top 5 of n candidates holds one of k)."""
    if n < 5:
        return 1.0 if k else 0.0
    return 1.0 - math.comb(n - k, 5) / math.comb(n, 5)


def _one_seed(members: list, size: int, seed: int, kind: str) -> dict[str, Any]:
    from napari_histo.inference.tiles import predict_tile

    rgb, tissue, tumor, downsample = _read(_slide(size, seed))
    plant = _plant_rect(tissue, seed)
    planted = plant_failure(rgb, plant, kind)
    pred = predict_tile(planted, MODEL_MPP, members, tta=1)
    geometry = ResultGeometry((0, 0), downsample, pred.probability.shape, 128, MODEL_MPP)
    grid = RegionGrid(geometry, int(REGION_UM / MODEL_MPP))
    valid = tissue | (planted.min(axis=2) < 220)
    plant_l0 = tuple(int(v * downsample) for v in plant)
    first_hit = {}
    for score in ("uncertainty", "epistemic", "disagreement", "boundary"):
        ranked = rank_regions(grid, pred.probability, pred.epistemic, score=score, valid=valid)
        hits = [i for i, r in enumerate(ranked) if _overlaps(r.rect_l0, plant_l0)]
        first_hit[score] = hits[0] if hits else len(ranked)
        if score == "uncertainty":
            chance = _chance_at5(len(ranked), len(hits))
    x, y, w, h = plant
    inside = np.zeros(tissue.shape, bool)
    inside[y : y + h, x : x + w] = True
    labels = np.where(tissue & ~inside, tumor.astype(np.uint8), 255).astype(np.uint8)
    return {
        "hit": first_hit["uncertainty"] < 5,
        "hit_epistemic": first_hit["epistemic"] < 5,
        "hit_disagreement": first_hit["disagreement"] < 5,
        "hit_boundary": first_hit["boundary"] < 5,
        "rank": first_hit["uncertainty"] + 1,
        "chance": chance,
        "epistemic_ratio": float(
            pred.epistemic[inside].mean() / max(1e-9, pred.epistemic[~inside & tissue].mean())
        ),
        "probability": pred.probability,
        "labels": labels,
    }


def _rank_10k_s() -> float:
    rng = np.random.default_rng(0)
    side, block = 1600, 16  # 100 x 100 regions; 16 µm/px = 64 level-0 px at 0.25 µm/px
    glass = rng.random((side // 40, side // 40)) < 0.7
    glass = np.repeat(np.repeat(glass, 40, 0), 40, 1)
    p = np.where(glass, 0, rng.random((side, side), dtype=np.float32)).astype(np.float32)
    v = np.where(glass, 0, rng.random((side, side), dtype=np.float32) * 0.1).astype(np.float32)
    geometry = ResultGeometry((0, 0), 64.0, (side, side), 8, 16.0)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        ranked = rank_regions(RegionGrid(geometry, block), p, v)
        best = min(best, time.perf_counter() - start)
    assert RegionGrid(geometry, block).shape == (100, 100) and len(ranked) <= 10_000
    return best


def _synthetic_ensemble() -> list:
    """The newest shipped tumor members trained on synthetic slides only (v1.0)."""
    from napari_histo.models import default_models_dir, load_model
    from napari_histo.models.versions import all_versions

    picked = []
    for versions in all_versions([default_models_dir()]).values():
        synthetic = [v for v in versions if _card_is_synthetic(v.card_path)]
        if synthetic:
            picked.append(load_model(synthetic[-1].card_path))
    return picked


def _card_is_synthetic(path: Any) -> bool:
    from napari_histo.models import read_card

    return read_card(path).training_data.upper().startswith("SYNTHETIC")


def _measure(members: list, seeds: list[int], size: int, kind: str) -> dict[str, Any]:
    found = [_one_seed(members, size, seed, kind) for seed in seeds]
    p = np.concatenate([f["probability"].ravel() for f in found])
    labels = np.concatenate([f["labels"].ravel() for f in found])
    held = np.concatenate([held_out_stripes(f["labels"].shape, 0.5, 4).ravel() for f in found])
    calibration = fit_calibration(p, labels, held)
    return {
        "hotspot_hit_at5": round(float(np.mean([f["hit"] for f in found])), 3),
        "hotspot_hit_at5_epistemic": round(float(np.mean([f["hit_epistemic"] for f in found])), 3),
        "hotspot_hit_at5_disagreement": round(
            float(np.mean([f["hit_disagreement"] for f in found])), 3
        ),
        "hotspot_hit_at5_boundary": round(float(np.mean([f["hit_boundary"] for f in found])), 3),
        "hotspot_hit_at5_chance": round(float(np.mean([f["chance"] for f in found])), 3),
        "planted_rank_median": float(np.median([f["rank"] for f in found])),
        "planted_epistemic_ratio_median": round(
            float(np.median([f["epistemic_ratio"] for f in found])), 2
        ),
        "ece_before": round(calibration.ece_before, 4),
        "ece_after": round(calibration.ece_after, 4),
        "temperature": round(calibration.temperature, 3),
        "calibration_held_px": calibration.held_px,
    }


def bench_review(quick: bool = False, kind: str = "dark") -> dict[str, Any]:
    """Run the benchmark (see the module docstring); one flat dict of numbers.

    The default ensemble's figures come first; the same figures of the
    shipped synthetic-trained ensemble (v1.0, 2 µm/px) follow with the prefix
    ``synthetic_ensemble_``: on synthetic slides it is the in-distribution one.
    """
    from napari_histo.models import default_models_dir, latest_cards, load_model

    if kind not in FAILURES:
        raise ValueError(f"`kind` must be one of {FAILURES}, got {kind!r}")
    start = time.perf_counter()
    members = [load_model(c) for c in latest_cards(default_models_dir()).values()]
    seeds = list(range(300, 305 if quick else 310))
    size = 4096
    out: dict[str, Any] = {
        "seeds": len(seeds),
        "slide_px": size,
        "failure": kind,
        "plant_um": PLANT_UM,
        "region_um": REGION_UM,
        "members": ",".join(f"{m.card.name}-{m.card.version}" for m in members),
    }
    out.update(_measure(members, seeds, size, kind))
    synthetic = _synthetic_ensemble()
    if synthetic:
        found = _measure(synthetic, seeds, size, kind)
        out["synthetic_ensemble"] = ",".join(f"{m.card.name}-{m.card.version}" for m in synthetic)
        out.update({f"synthetic_ensemble_{k}": v for k, v in found.items()})
    out["rank_10k_s"] = round(_rank_10k_s(), 4)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out
