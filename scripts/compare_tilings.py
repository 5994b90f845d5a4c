"""Blended patches (the viewer) against large tiles (``napari-histo infer``) on a slide.

    python scripts/compare_tilings.py [SLIDE] [OUT.png] [CARD ...]

Runs the default tumor ensemble (or the member cards given) both ways on SLIDE
(default: the real CMU slide in tests/data), prints the seconds, the mean
absolute probability difference, the share of tissue pixels differing by more
than 0.1 and the tumor share of each, and draws the two 0.5 outlines over the
slide with their difference (docs/large_tiles_cmu.png).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_histo.inference.engine import EngineConfig, infer_slide, run
from napari_histo.io.slide import Slide
from napari_histo.models import latest_cards, load_model


def probability(slide: Path, members, tiling: str) -> tuple[np.ndarray, float]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = run(infer_slide(slide, members, config=EngineConfig(tiling=tiling), out_dir=out))
        seconds = time.perf_counter() - start
        return np.asarray(result.run.array("probability")[...]), seconds


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(__file__).resolve().parents[1]
    slide = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "tests/data/cmu_small_region.svs"
    png = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "docs/large_tiles_cmu.png"
    cards = sys.argv[3:] or [c for c in latest_cards().values()]
    members = [load_model(c) for c in cards]
    patch, patch_s = probability(slide, members, "patch")
    large, large_s = probability(slide, members, "large")
    diff = np.abs(large - patch)
    tissue = (patch > 0) | (large > 0)
    figures = {
        "members": [f"{m.card.name}-{m.card.version}" for m in members],
        "patch_s": round(patch_s, 2),
        "large_s": round(large_s, 2),
        "mean_abs_diff": round(float(diff[tissue].mean()), 4),
        "share_over_0.1": round(float((diff[tissue] > 0.1).mean()), 4),
        "tumor_share_patch": round(float((patch[tissue] >= 0.5).mean()), 4),
        "tumor_share_large": round(float((large[tissue] >= 0.5).mean()), 4),
    }
    with Slide(slide) as s:
        level = s.level_count - 1
        rgb = s.read_region(level, 0, 0, *s.level_dimensions[level])
    h, w = patch.shape
    fig, axes = plt.subplots(1, 3, figsize=(15, 6.5))
    panels = (
        (axes[0], patch, f"blended patches (viewer), {patch_s:.1f} s"),
        (axes[1], large, f"large tiles (napari-histo infer), {large_s:.1f} s"),
    )
    for ax, prob, title in panels:
        ax.imshow(rgb, extent=(0, w, h, 0))
        ax.imshow(np.ma.masked_less(prob, 0.5), cmap="autumn", alpha=0.35, vmin=0, vmax=1)
        ax.contour(prob, levels=[0.5], colors="cyan", linewidths=0.6)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    shown = axes[2].imshow(diff, vmin=0, vmax=0.3)
    axes[2].set_title("|difference| (0-0.3)", fontsize=10)
    axes[2].axis("off")
    fig.colorbar(shown, ax=axes[2], fraction=0.04)
    fig.suptitle(", ".join(figures["members"]), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(png, dpi=90)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
