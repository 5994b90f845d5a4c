"""Benchmarks behind ``napari-histo bench``: each returns one flat dict of numbers.

Speed goals are checked here, not in tests: every benchmark measures our
code and its baseline in the same run, on the same machine, and reports the
ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "bench_slide", "run"]


def bench_slide(size_px: int, seed: int = 1) -> Path:
    """A cached synthetic slide for benchmarks (generated on first use)."""
    from napari_histo._progress import TextProgress
    from napari_histo.plugin.sample_data import cache_dir
    from napari_histo.synthetic import write_synthetic_slide

    path = cache_dir() / "bench" / f"synthetic_{size_px}px_seed{seed}.svs"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_slide(
            path, size=size_px, seed=seed, progress=TextProgress(f"generating {path.name}")
        )
    return path


def bench_mosaic_slide(size_px: int = 100_000, tissue_fraction: float = 0.3) -> Path:
    """A cached `size_px`² mosaic slide of real synthetic tiles (seconds to write)."""
    from napari_histo.bench.mosaic import write_mosaic_slide
    from napari_histo.plugin.sample_data import cache_dir

    path = cache_dir() / "bench" / f"mosaic_{size_px}px.svs"
    if not path.exists():
        source = bench_slide(4096, seed=3)
        write_mosaic_slide(path, source, size_px, tissue_fraction=tissue_fraction)
    return path


def _read(quick: bool, slide: str | None) -> dict[str, Any]:
    from napari_histo.bench.read import bench_read

    return bench_read(quick=quick, slide=slide)


def _open(quick: bool, slide: str | None) -> dict[str, Any]:
    from napari_histo.bench.open import bench_open

    return bench_open(quick=quick)


def _infer(quick: bool, slide: str | None, device: str = "auto") -> dict[str, Any]:
    from napari_histo.bench.infer import bench_infer

    return bench_infer(quick=quick, slide=slide, device=device)


def _annotations(quick: bool, slide: str | None) -> dict[str, Any]:
    from napari_histo.bench.annotations import bench_annotations

    return bench_annotations(quick=quick)


def _train(quick: bool, slide: str | None) -> dict[str, Any]:
    from napari_histo.bench.train import bench_train

    return bench_train(quick)


def _granularity(quick: bool, slide: str | None) -> dict[str, Any]:
    from napari_histo.bench.train import bench_granularity

    return bench_granularity(quick)


def _ui(quick: bool, slide: str | None) -> dict[str, Any]:
    from napari_histo.bench.ui import bench_ui

    return bench_ui(quick=quick)


def _nuclei(quick: bool, slide: str | None) -> dict[str, Any]:
    from napari_histo.bench.nuclei import bench_nuclei

    return bench_nuclei(quick=quick)


BENCHMARKS: dict[str, Callable[[bool, str | None], dict[str, Any]]] = {
    "read": _read,
    "open": _open,
    "infer": _infer,
    "annotations": _annotations,
    "train": _train,
    "granularity": _granularity,
    "ui": _ui,
    "nuclei": _nuclei,
}


# Benchmarks whose function takes a ``device`` ("auto", "cpu", "cuda", ...).
DEVICE_BENCHMARKS = frozenset({"infer"})


def run(
    which: str, *, quick: bool = False, slide: str | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Run benchmark `which` (a key of :data:`BENCHMARKS`) and return its result dict."""
    if which not in BENCHMARKS:
        raise ValueError(f"`which` must be one of {sorted(BENCHMARKS)}, got {which!r}")
    if which in DEVICE_BENCHMARKS:
        return BENCHMARKS[which](quick, slide, device=device)  # type: ignore[call-arg]
    if device != "auto":
        raise ValueError(f"bench {which} has no --device option (only {sorted(DEVICE_BENCHMARKS)})")
    return BENCHMARKS[which](quick, slide)
