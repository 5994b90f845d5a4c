"""``bench open``: open + first rendered frame, 100k² vs 8k² slide, in napari.

Runs a real napari viewer (under Xvfb when headless). A warm-up open of a
small slide first takes import, GL and shader start-up out of both timings.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import psutil


def _open_and_render(viewer, path: Path) -> float:
    """Seconds from ``viewer.open`` to the first frame drawn with the slide."""
    from napari_histo.demo import wait_for_render

    start = time.perf_counter()
    viewer.open(path, plugin="napari-histo")
    viewer.reset_view()
    wait_for_render(viewer, rounds=2)
    frame = viewer.screenshot(canvas_only=True, flash=False)
    elapsed = time.perf_counter() - start
    if frame[..., :3].std() < 5:
        raise RuntimeError(f"{path}: the first frame is blank")
    return elapsed


def _close_all(viewer) -> None:
    for layer in list(viewer.layers):
        slide = layer.metadata.get("slide")
        viewer.layers.remove(layer)
        if slide is not None:
            slide.close()
    gc.collect()


def bench_open(*, quick: bool = False) -> dict[str, Any]:
    """Open an 8k² and a 100k² synthetic slide; compare time to first frame.

    Returns
    -------
    dict
        ``open_8k_s``, ``open_100k_s``, ``ratio`` = 100k / 8k (target <= 1.5),
        ``rss_delta_mb``: resident memory growth from opening and showing the
        100k² slide (target <= 300).
    """
    import napari

    from napari_histo.bench import bench_mosaic_slide, bench_slide

    small = bench_slide(8192)
    # --quick: a 100k² mosaic of real synthetic tiles (same file structure, written
    # in seconds); otherwise a fully rendered 100k² synthetic slide (minutes, cached).
    large = bench_mosaic_slide(100_000) if quick else bench_slide(100_000)
    warm = bench_slide(4096, seed=3)
    repeats = 1 if quick else 3
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 900)
    try:
        _open_and_render(viewer, warm)
        _close_all(viewer)
        times_small, times_large, deltas = [], [], []
        process = psutil.Process()
        for _ in range(repeats):
            times_small.append(_open_and_render(viewer, small))
            _close_all(viewer)
            before = process.memory_info().rss
            times_large.append(_open_and_render(viewer, large))
            deltas.append((process.memory_info().rss - before) / 2**20)
            _close_all(viewer)
    finally:
        viewer.close()
    open_small, open_large = min(times_small), min(times_large)
    return {
        "large_slide": "mosaic" if quick else "synthetic",
        "open_8k_s": round(open_small, 4),
        "open_100k_s": round(open_large, 4),
        "ratio": round(open_large / open_small, 3),
        "rss_delta_mb": round(max(deltas), 1),
    }
