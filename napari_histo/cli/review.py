"""``napari-histo review``: regions of a slide's latest complete run, ranked for review."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_histo.errors import HistoError


def _annotations(args: argparse.Namespace) -> list:
    from napari_histo.io.annotations import read_annotations
    from napari_histo.io.annotations.autosave import autosave_path

    path = Path(args.annotations) if args.annotations else autosave_path(args.slide)
    if not path.is_file():
        raise HistoError(
            f"{path}: no annotations for --score annotations; draw tumor / non-tumor "
            "regions or pass --annotations"
        )
    regions = [a for a in read_annotations(path).annotations if a.kind != "point"]
    if not regions:
        raise HistoError(
            f"{path}: no tumor / non-tumor regions to score against (points only, or "
            "no feature that could be read)"
        )
    return regions


def cmd_review(args: argparse.Namespace) -> int:
    from napari_histo.review import latest_complete_run, rank_run, run_temperature

    if not Path(args.slide).is_file():
        raise HistoError(f"{args.slide}: no such slide file")
    run = latest_complete_run(args.slide, out_dir=args.out, mpp=args.mpp)
    annotations = _annotations(args) if args.score == "annotations" else None
    temperature = run_temperature(run)
    regions = rank_run(
        run,
        score=args.score,
        region_um=args.region_um,
        top=args.top,
        annotations=annotations,
        temperature=temperature,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "slide": str(args.slide),
                    "run_id": run.run_id,
                    "score": args.score,
                    "region_um": args.region_um,
                    "temperature": temperature,
                    "regions": [r.to_dict() for r in regions],
                }
            )
        )
        return 0
    print(f"{Path(args.slide).name}: run {run.run_id}, score {args.score}, top {len(regions)}")
    print("  rank  x         y         w       h       score        area µm²    mean")
    for rank, r in enumerate(regions, 1):
        x, y, w, h = r.rect_l0
        print(
            f"  {rank:>4}  {x:<9} {y:<9} {w:<7} {h:<7} {r.score:<12.4g} {r.area_um2:<11.0f} "
            f"{r.mean:.3f}"
        )
    if not regions:
        print("  (no region scores above 0)")
    return 0
