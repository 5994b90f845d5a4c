"""``napari-histo bench realdata``: held-out real-tissue quality of the shipped models.

Tumor ensemble: per real source, Dice / AUROC / ECE of the ensemble mean and
the AUROC with which epistemic uncertainty flags misclassified pixels, on the
held-out tiles of :mod:`napari_histo.training.realdata` (never trained on);
tile-level AUROC where only tile labels exist; Dice on held-out synthetic
slides. Nuclei: AJI / PQ of the learned and classical backends on held-out
real tiles. The real-data folder is ``$NAPARI_HISTO_REAL_DATA`` or
``shared/data/real`` beside or inside the repository.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

__all__ = ["bench_realdata", "real_data_dir"]


def real_data_dir() -> Path:
    """The real-data folder; raises ValueError naming where it looked."""
    env = os.environ.get("NAPARI_HISTO_REAL_DATA")
    repo = Path(__file__).resolve().parents[2]
    candidates = [Path(env)] if env else []
    candidates += [repo.parent / "shared/data/real", repo / "shared/data/real"]
    for path in candidates:
        if (path / "README.md").is_file() or path.is_dir():
            return path
    raise ValueError(
        "no real-data folder: set NAPARI_HISTO_REAL_DATA (looked in "
        + ", ".join(str(p) for p in candidates)
        + ")"
    )


def bench_realdata(
    quick: bool = False, data_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Held-out real figures of the default tumor ensemble and nuclei models."""
    from napari_histo.models import latest_cards
    from napari_histo.training.real_ensemble import synthetic_heldout_dice
    from napari_histo.training.realdata import SOURCES, heldout_tumor_scores

    data = Path(data_dir) if data_dir else real_data_dir()
    start = time.monotonic()
    cards = sorted(latest_cards().values())
    result: dict[str, Any] = {"tumor_members": len(cards)}
    scores = heldout_tumor_scores(data, cards, tta=1)
    for source, figures in scores.items():
        # Tile-label sources have negative pixels only: just their tile AUROC means much.
        keys = (
            ("tile_auroc",)
            if SOURCES[source].labels == "tile"
            else ("dice", "auroc", "epistemic_error_auroc", "ece", "tile_auroc")
        )
        for key in keys:
            value = figures.get(key)
            if value is not None and value == value:  # skip NaN (one-class sources)
                result[f"tumor_{source}_{key}"] = value
    if not quick:
        from napari_histo.paths import cache_dir

        # The held-out synthetic slides are cached beside the other benchmark slides.
        work = cache_dir() / "bench"
        work.mkdir(parents=True, exist_ok=True)
        result["tumor_synthetic_heldout_dice"] = round(synthetic_heldout_dice(cards, work), 4)
    try:
        from napari_histo.training.real_nuclei import real_nuclei_quality
    except ImportError:  # the nuclei recipe is optional in trimmed installs
        real_nuclei_quality = None
    if real_nuclei_quality is not None:
        for method in ("learned", "classical"):
            quality = real_nuclei_quality(data, method=method)
            for key in ("aji", "pq"):
                if key in quality:
                    result[f"nuclei_{method}_{key}"] = round(float(quality[key]), 4)
    result["seconds"] = round(time.monotonic() - start, 1)
    return result
