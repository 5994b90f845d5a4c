"""Benchmarks behind ``napari-histo bench``: each returns one flat dict of numbers.

Speed goals are checked here, not in tests: every benchmark measures our
code and its baseline in the same run, on the same machine, and reports the
ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "BenchOptions", "bench_slide", "run"]


def bench_slide(size_px: int, seed: int = 1) -> Path:
    """A cached synthetic slide for benchmarks (generated on first use)."""
    from napari_histo._progress import TextProgress
    from napari_histo.paths import cache_dir
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
    from napari_histo.paths import cache_dir

    path = cache_dir() / "bench" / f"mosaic_{size_px}px.svs"
    if not path.exists():
        source = bench_slide(4096, seed=3)
        write_mosaic_slide(path, source, size_px, tissue_fraction=tissue_fraction)
    return path


@dataclass(frozen=True)
class BenchOptions:
    """What ``napari-histo bench`` passes to every benchmark.

    Attributes
    ----------
    quick : bool
        A smaller run (seconds) instead of the full measurement.
    slide : str or None
        A slide file to measure instead of the cached synthetic one.
    device : str
        Torch device for the benchmarks that run models ("auto": cuda > mps > cpu).
    formats : bool
        (read) The same content in every format, and the CMU slide.
    float32 : bool
        (infer) float32 forwards instead of the device's mixed precision.
    """

    quick: bool = False
    slide: str | None = None
    device: str = "auto"
    formats: bool = False
    float32: bool = False

    def cpu_only(self, which: str) -> None:
        """Refuse a `device` for benchmark `which`, which runs no model on a device."""
        if self.device != "auto":
            raise ValueError(f"bench {which} has no --device option (it runs on the CPU)")


def _read(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.read import bench_read

    o.cpu_only("read")
    if o.formats:
        from napari_histo.bench.formats import bench_formats

        if o.slide is not None:
            raise ValueError("bench read: give --slide or --formats, not both")
        return bench_formats(quick=o.quick)
    return bench_read(quick=o.quick, slide=o.slide)


def _open(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.open import bench_open

    o.cpu_only("open")
    return bench_open(quick=o.quick)


def _infer(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.infer import bench_infer

    return bench_infer(quick=o.quick, slide=o.slide, device=o.device, amp=not o.float32)


def _feed(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.feed import bench_feed

    o.cpu_only("feed")
    return bench_feed(quick=o.quick, slide=o.slide)


def _annotations(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.annotations import bench_annotations

    o.cpu_only("annotations")
    return bench_annotations(quick=o.quick)


def _train(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.train import bench_train

    o.cpu_only("train")
    return bench_train(o.quick)


def _granularity(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.train import bench_granularity

    o.cpu_only("granularity")
    return bench_granularity(o.quick)


def _ui(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.ui import bench_ui

    o.cpu_only("ui")
    return bench_ui(quick=o.quick)


def _nuclei(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.nuclei import bench_nuclei

    o.cpu_only("nuclei")
    return bench_nuclei(quick=o.quick)


def _realdata(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.realdata import bench_realdata

    o.cpu_only("realdata")
    return bench_realdata(quick=o.quick)


def _cohort(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.cohort import bench_cohort

    o.cpu_only("cohort")
    return bench_cohort(quick=o.quick)


def _review(o: BenchOptions) -> dict[str, Any]:
    from napari_histo.bench.review import bench_review

    o.cpu_only("review")
    return bench_review(quick=o.quick)


BENCHMARKS: dict[str, Callable[[BenchOptions], dict[str, Any]]] = {
    "read": _read,
    "cohort": _cohort,
    "open": _open,
    "infer": _infer,
    "feed": _feed,
    "annotations": _annotations,
    "train": _train,
    "granularity": _granularity,
    "ui": _ui,
    "nuclei": _nuclei,
    "realdata": _realdata,
    "review": _review,
}


def run(
    which: str,
    *,
    quick: bool = False,
    slide: str | None = None,
    device: str = "auto",
    formats: bool = False,
    float32: bool = False,
) -> dict[str, Any]:
    """Run benchmark `which` (a key of :data:`BENCHMARKS`) and return its result dict."""
    if which not in BENCHMARKS:
        raise ValueError(f"`which` must be one of {sorted(BENCHMARKS)}, got {which!r}")
    if formats and which != "read":
        raise ValueError(f"bench {which} has no --formats option (only bench read)")
    if float32 and which != "infer":
        raise ValueError(f"bench {which} has no --float32 option (only bench infer)")
    options = BenchOptions(
        quick=quick, slide=slide, device=device, formats=formats, float32=float32
    )
    return BENCHMARKS[which](options)
