"""Sample data: a synthetic H&E slide, generated once into the user cache."""

from __future__ import annotations

import os
from pathlib import Path

from napari_histo.io.slide import Slide
from napari_histo.paths import cache_dir
from napari_histo.plugin.reader import LayerData, slide_layer_data

__all__ = [
    "SAMPLE_SEED",
    "SAMPLE_SIZE_PX",
    "cache_dir",
    "sample_size_px",
    "sample_slide_path",
    "synthetic_he_slide",
]

SAMPLE_SIZE_PX = 16384
SAMPLE_SEED = 7


def sample_size_px() -> int:
    """Sample slide size: ``$NAPARI_HISTO_SAMPLE_PX`` or :data:`SAMPLE_SIZE_PX`."""
    text = os.environ.get("NAPARI_HISTO_SAMPLE_PX")
    if not text:
        return SAMPLE_SIZE_PX
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"NAPARI_HISTO_SAMPLE_PX must be an integer, got {text!r}") from None
    if not 1024 <= value <= 131072:
        raise ValueError(f"NAPARI_HISTO_SAMPLE_PX must be in [1024, 131072], got {value}")
    return value


def sample_slide_path(
    size_px: int | None = None, seed: int = SAMPLE_SEED, *, progress=None
) -> Path:
    """Path of the synthetic sample slide, generating it on first use.

    Parameters
    ----------
    size_px : int, optional
        Level-0 width and height in px; default :func:`sample_size_px`.
    seed : int
        Generator seed.
    progress : callable, optional
        ``progress(done, total)`` while tiles are written.
    """
    from napari_histo.synthetic import write_synthetic_slide

    size_px = size_px or sample_size_px()
    path = cache_dir() / "samples" / f"synthetic_he_{size_px}px_seed{seed}.svs"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_slide(path, size=size_px, seed=seed, progress=progress)
    return path


def synthetic_he_slide() -> list[LayerData]:
    """napari sample-data command: the synthetic H&E slide as a multiscale layer."""
    from napari.utils import progress as napari_progress

    bar = napari_progress(total=0, desc="Generating synthetic H&E slide")

    def report(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        path = sample_slide_path(progress=report)
    finally:
        bar.close()
    return [slide_layer_data(Slide(path))]
