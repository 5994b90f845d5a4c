"""Tune the learned nuclei post-processing (HVParams) on the MoNuSeg validation tiles
(coordinate descent from the defaults, with and without flip TTA).

The network's maps are predicted once per tile (with and without flip TTA); the
grid then only re-runs the post-processing. Scores on the held-out tiles are
printed once, for the chosen parameters only (never used to choose).

    python scripts/tune_nuclei_postprocess.py ../shared/data/real \
        [--card hovernet-2.1.json] [--write]

Scoring starts from the card's own ``postprocess`` where it has one. With
``--write`` the card keeps the validation optimum without TTA (what the dock and
``segment_nuclei`` run) as its ``postprocess`` and its metrics are re-scored with it
(weights unchanged).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

from napari_histo.metrics import aggregated_jaccard_index, panoptic_quality
from napari_histo.nuclei.classical import ClassicalParams
from napari_histo.nuclei.learned import (
    HVParams,
    _optical_density,
    card_params,
    hv_postprocess,
    learned_model,
    predict_maps,
)
from napari_histo.training.real_nuclei_data import load_monuseg


def maps_for(tiles, loaded, tta: bool):
    out = []
    for t in tiles:
        if tta:
            prob, hv = predict_maps_tta(t.rgb, t.mpp, loaded)
        else:
            prob, hv = predict_maps(t.rgb, t.mpp, loaded)
        out.append((prob, hv))
    return out


def predict_maps_tta(rgb, mpp, loaded):
    """Mean of the maps over the 4 flips (h flip negates the horizontal map)."""
    probs, hvs = [], []
    for fy, fx in itertools.product((False, True), repeat=2):
        img = rgb[::-1] if fy else rgb
        img = img[:, ::-1] if fx else img
        prob, hv = predict_maps(np.ascontiguousarray(img), mpp, loaded)
        hv = hv.copy()
        if fy:
            prob, hv = prob[::-1], hv[:, ::-1]
            hv[1] *= -1
        if fx:
            prob, hv = prob[:, ::-1], hv[:, :, ::-1]
            hv[0] *= -1
        probs.append(prob)
        hvs.append(hv)
    return np.mean(probs, axis=0), np.mean(hvs, axis=0)


def score(tiles, maps, params, min_area, classical):
    ajis, pqs = [], []
    for t, (prob, hv) in zip(tiles, maps, strict=True):
        pred = hv_postprocess(
            prob, hv, t.mpp, min_area_um2=min_area, max_area_um2=classical.max_area_um2,
            params=params, tissue=_optical_density(t.rgb) > classical.tissue_od,
        )  # fmt: skip
        ajis.append(aggregated_jaccard_index(t.labels, pred))
        pqs.append(panoptic_quality(t.labels, pred)[0])
    return float(np.mean(ajis)), float(np.mean(pqs))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--card", default=None)
    parser.add_argument("--write", action="store_true", help="keep the optimum in the card")
    args = parser.parse_args()
    loaded = learned_model(args.card)
    classical = ClassicalParams()
    val = load_monuseg(args.data, "validation")
    start = time.perf_counter()
    val_maps = {tta: maps_for(val, loaded, tta) for tta in (False, True)}
    print(f"maps in {time.perf_counter() - start:.0f} s", flush=True)
    base = card_params(loaded.card)
    grid = {
        "fg_threshold": [0.4, 0.5, 0.6],
        "sigma_um": [0.35, 0.5, 0.75],
        "min_divergence_per_um": [0.1, 0.15, 0.2, 0.3, 0.4],
        "marker_um": [0.25, 0.5, 1.0],
        "min_marker_um2": [1.0, 2.0, 4.0],
    }
    results = []
    for tta in (False, True):
        default = score(val, val_maps[tta], base, classical.min_area_um2, classical)
        print(f"tta={tta} defaults: AJI {default[0]:.4f} PQ {default[1]:.4f}", flush=True)
        # Coordinate descent from the defaults, two sweeps: a full grid is too slow.
        current, best_score = dict(base.__dict__), sum(default)
        for _sweep in range(2):
            for name, values in grid.items():
                for value in values:
                    trial = HVParams(**{**current, name: value})
                    aji, pq = score(val, val_maps[tta], trial, classical.min_area_um2, classical)
                    if aji + pq > best_score + 1e-6:
                        best_score, current = aji + pq, dict(trial.__dict__)
                        print(f"  AJI {aji:.4f} PQ {pq:.4f} {trial}", flush=True)
        params = HVParams(**current)
        aji, pq = score(val, val_maps[tta], params, classical.min_area_um2, classical)
        results.append((aji + pq, aji, pq, tta, params))
    results.sort(key=lambda r: -r[0])
    for r in results:
        print(f"val AJI {r[1]:.4f} PQ {r[2]:.4f} tta={r[3]} {r[4]}")
    best = results[0]
    best_plain = next(r for r in results if not r[3])
    held = load_monuseg(args.data, "heldout")
    held_maps = {tta: maps_for(held, loaded, tta) for tta in (False, True)}
    report = {}
    for name, (params, tta) in {
        "defaults": (base, False),
        "best_plain": (best_plain[4], False),
        "defaults_tta": (base, True),
        "best": (best[4], best[3]),
    }.items():
        aji, pq = score(held, held_maps[tta], params, classical.min_area_um2, classical)
        report[name] = {"heldout_aji": round(aji, 4), "heldout_pq": round(pq, 4), "tta": tta,
                        "params": params.__dict__}  # fmt: skip
    print(json.dumps(report))
    if args.write:
        write_postprocess(loaded, best_plain[4], args.data)


def write_postprocess(loaded, params: HVParams, data_dir: str) -> None:
    """Keep `params` as the card's ``postprocess`` and re-score its metrics with them."""
    import dataclasses

    from napari_histo.models import write_card
    from napari_histo.training.real_nuclei import score_nuclei_model

    card = dataclasses.replace(loaded.card, postprocess=dict(params.__dict__))
    metrics = score_nuclei_model(dataclasses.replace(loaded, card=card), data_dir)
    write_card(loaded.card_path, dataclasses.replace(card, metrics={**card.metrics, **metrics}))
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))


if __name__ == "__main__":
    main()
