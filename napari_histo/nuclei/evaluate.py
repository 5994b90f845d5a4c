"""Nuclei segmentation quality on synthetic slides with known instances (no Qt, no napari).

:func:`nuclei_quality` scores a backend of :func:`napari_histo.nuclei.classical.segment_nuclei`
on level-0 tiles (0.25 µm/px) of synthetic slides against their ground-truth labels:
the mean over tiles of the aggregated Jaccard index (AJI) and of panoptic quality
(PQ = DQ × SQ). Tiles with fewer than 15 true nuclei (mostly glass) are skipped.
The same seeds and tile count always give the same tiles.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from napari_histo.io.slide import Slide
from napari_histo.metrics import aggregated_jaccard_index, panoptic_quality
from napari_histo.models import LoadedModel
from napari_histo.synthetic import read_truth, truth_path_for, write_synthetic_slide

__all__ = ["nuclei_quality", "quality_of"]

#: Level-0 resolution of the synthetic slides (µm/px).
_MPP = 0.25
_MIN_NUCLEI = 15


def _tiles(seeds: Sequence[int], n_tiles: int, tile_px: int, slide_px: int, workdir: Path):
    """(rgb, truth) tiles: raster order within a slide, taken from the slides in turn."""
    per_slide = []
    for seed in seeds:
        path = workdir / f"nuclei-{seed}-{slide_px}.svs"
        if not path.exists():
            write_synthetic_slide(path, slide_px, seed=int(seed), workers=1)
        labels = np.asarray(read_truth(truth_path_for(path)).nuclei[...])
        with Slide(path) as slide:
            rgb = np.ascontiguousarray(slide.read_region(0, 0, 0, slide_px, slide_px))
        tiles = []
        for y in range(0, slide_px - tile_px + 1, tile_px):
            for x in range(0, slide_px - tile_px + 1, tile_px):
                truth = labels[y : y + tile_px, x : x + tile_px]
                if len(np.unique(truth)) > _MIN_NUCLEI:
                    tiles.append((rgb[y : y + tile_px, x : x + tile_px], truth))
        per_slide.append(tiles)
    chosen = []
    for i in range(max((len(t) for t in per_slide), default=0)):
        chosen += [tiles[i] for tiles in per_slide if i < len(tiles)]
    return chosen[:n_tiles]


def score_synthetic_tiles(
    segment: Callable[[np.ndarray], np.ndarray],
    seeds: Sequence[int],
    n_tiles: int,
    tile_px: int,
    slide_px: int,
    workdir: str | Path | None,
) -> dict[str, float]:
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int | np.integer) for s in seeds):
        raise ValueError(f"`seeds` must be a non-empty sequence of ints, got {seeds!r}")
    if isinstance(n_tiles, bool) or not isinstance(n_tiles, int) or n_tiles < 1:
        raise ValueError(f"`n_tiles` must be an int >= 1, got {n_tiles!r}")
    with tempfile.TemporaryDirectory(prefix="napari-histo-nuclei-eval-") as tmp:
        work = Path(tmp) if workdir is None else Path(workdir)
        tiles = _tiles(seeds, n_tiles, tile_px, slide_px, work)
    if not tiles:
        raise ValueError(f"slides of `seeds` {list(seeds)} hold no tile with nuclei to score")
    scores = [
        (aggregated_jaccard_index(truth, pred), *panoptic_quality(truth, pred))
        for rgb, truth in tiles
        for pred in [segment(rgb)]
    ]
    aji, pq, dq, sq = (float(v) for v in np.mean(scores, axis=0))
    return {"aji": aji, "pq": pq, "dq": dq, "sq": sq}


def nuclei_quality(
    method: str,
    seeds: Sequence[int],
    n_tiles: int,
    *,
    tile_px: int = 512,
    slide_px: int = 2048,
    workdir: str | Path | None = None,
) -> dict[str, float]:
    """Mean AJI, PQ, DQ and SQ of a nuclei backend on synthetic slide tiles.

    Parameters
    ----------
    method : {"classical", "learned"}
        Backend of :func:`~napari_histo.nuclei.classical.segment_nuclei`.
    seeds : sequence of int
        Synthetic slide seeds (use ones the learned model never saw, e.g.
        :data:`napari_histo.training.nuclei.HELDOUT_SEEDS`).
    n_tiles : int
        Number of tiles scored in all, taken from the slides in turn.
    tile_px : int
        Tile side (level-0 px, 0.25 µm/px).
    slide_px : int
        Side of each synthetic slide (px).
    workdir : str or Path, optional
        Folder for the slide files (reused when present); default a temporary one.

    Returns
    -------
    dict
        ``{"aji": ..., "pq": ..., "dq": ..., "sq": ...}``, floats in [0, 1].

    Raises
    ------
    ValueError
        For an unknown `method`, bad `seeds` or `n_tiles`, or slides without nuclei.
    """
    from napari_histo.nuclei.classical import segment_nuclei

    if method not in ("classical", "learned"):
        raise ValueError(f"`method` must be 'classical' or 'learned', got {method!r}")
    return score_synthetic_tiles(
        lambda rgb: segment_nuclei(rgb, _MPP, method), seeds, n_tiles, tile_px, slide_px, workdir
    )


def quality_of(
    loaded: LoadedModel,
    seeds: Sequence[int],
    n_tiles: int,
    *,
    tile_px: int = 512,
    slide_px: int = 2048,
    workdir: str | Path | None = None,
) -> dict[str, float]:
    """As :func:`nuclei_quality`, for a given nuclei model (e.g. one being trained)."""
    from napari_histo.nuclei.learned import segment_learned

    def segment(rgb: np.ndarray) -> np.ndarray:
        return segment_learned(rgb, _MPP, loaded=loaded)

    return score_synthetic_tiles(segment, seeds, n_tiles, tile_px, slide_px, workdir)
