"""``bench ui``: is the viewer responsive while inference runs, and how fast is a viewport?

Runs real napari (under Xvfb when headless) with the "Tumor inference" dock on
a fresh copy of a synthetic slide:

* viewport latency: a viewport run on a zoomed-in view (about a sixteenth of
  the slide, Run pressed once the slide shows that view) from the widget: time
  to the first finished cell and to the whole view, against the bare ensemble
  forward on the same number of tiles
  (``latency_ratio = viewport_full_s / viewport_model_only_s``);
* responsiveness: during a whole-slide run, the camera jumps to a random spot
  every 200 ms while a 10 ms QTimer heartbeat on the Qt thread records its
  gaps (p50, p95, max). The same pans (same seed, as long) with no job give the
  floor (``idle_gap_*``: what napari itself costs on this machine just then).
  Both phases show the whole-slide dock (the same canvas, ``canvas_px`` and
  ``idle_canvas_px``), once the slide's preparation and staining check are done.
  Each phase pans over its own fresh copy of the slide, so both start with
  cold tile caches: measured after the job on the same copy, the floor had
  the run's decoded tiles cached (max gap 80-100 ms against 235 ms cold, no
  job in either).
  Slicing is as napari's settings say (synchronous by default, what users get);
  ``NAPARI_EXPERIMENTAL_ASYNC_=1`` in the environment measures asynchronous
  slicing without touching the settings file.

The model-only baseline runs the bare ensemble forward (no reading, tissue
masking, stitching, store or display) over as many tiles as the viewport run
computed, in the same batches and with the same torch thread count as the
dock's worker process (:func:`~napari_histo.widgets.jobs.gui_threads`), in a
fresh process of its own, as the worker is;
``viewport_model_only_default_threads_s`` is the same forward with torch's
default thread count, for reference. ``viewer_imports_torch`` says whether the
viewer process imported torch (it should not: models run in the worker).

Memory: after the latency run, :data:`RSS_RUNS` more viewport runs, each on
another part of the slide, record the viewer's and the worker's resident memory
after each run (``viewer_rss_runs_mb``, ``worker_rss_runs_mb``) and their growth
from the first of those runs to the last (``*_rss_growth_mb``; target ≤ 50 MB),
and the viewer's decoded-tile cache of the slide after each run
(``viewer_tile_cache_runs_mb``, capped at 64 MB), which fills as the runs visit
new parts of the slide.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _wait(app, condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        time.sleep(0.002)
    return True


def _gap_stats(beats: list[float], prefix: str = "") -> dict[str, float]:
    gaps = np.diff(np.asarray(beats)) * 1000 if len(beats) > 1 else np.array([np.nan])
    return {
        f"{prefix}gap_p50_ms": round(float(np.percentile(gaps, 50)), 1),
        f"{prefix}gap_p95_ms": round(float(np.percentile(gaps, 95)), 1),
        f"{prefix}gap_max_ms": round(float(gaps.max()), 1),
    }


#: Viewport runs after the latency run whose RSS (viewer and worker) is recorded.
RSS_RUNS = 5


def _rss_mb(pid: int | None) -> float | None:
    """Resident memory of process `pid` in MB (Linux /proc), None when unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next(x for x in f if x.startswith("VmRSS:"))
        return round(int(line.split()[1]) / 1024, 1)
    except (OSError, StopIteration, TypeError, ValueError):
        return None


def _model_only(cards: list[str], tiles: int, threads: int | None) -> float:
    """Seconds of the bare ensemble forward over `tiles` tiles (TTA 1, engine batches).

    Runs in a fresh process, as the dock's worker does: torch's thread count set
    first (`threads`; None keeps torch's default), then the members loaded and run
    on that same thread. In the viewer process the count would not be the
    worker's: a count set on one thread does not reach a thread that already ran
    torch (measured here: 2 threads while the jobs' 1 was recorded), and the
    viewer itself would import torch.
    """
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_model_only_here, (cards, tiles, threads))


def _model_only_here(cards: list[str], tiles: int, threads: int | None) -> float:
    import torch

    from napari_histo.inference.engine import autocast, default_batch_size
    from napari_histo.inference.ensemble import ensemble_predict
    from napari_histo.live.settings import LiveSettings
    from napari_histo.models import load_model

    if threads is not None:
        torch.set_num_threads(threads)
    members = [load_model(card) for card in cards]
    cpu = torch.device("cpu")
    batch = default_batch_size(cpu)
    models = [m.model for m in members]
    x = torch.randn(batch, 3, members[0].card.patch_px, members[0].card.patch_px)
    with autocast(cpu, LiveSettings().engine_config().amp):  # the jobs' precision
        ensemble_predict(models, x[:1], (0,))  # warm-up
        t0 = time.perf_counter()
        for done in range(0, max(tiles, 1), batch):
            ensemble_predict(models, x[: max(1, min(batch, tiles - done))], (0,))
        return time.perf_counter() - t0


def bench_ui(*, quick: bool = False) -> dict[str, Any]:
    """Run the UI benchmark; see the module docstring."""
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    import napari
    from napari.settings import get_settings
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_histo.bench import bench_slide
    from napari_histo.live.controller import LiveSettings
    from napari_histo.widgets.inference import InferenceWidget
    from napari_histo.widgets.jobs import gui_threads

    source = bench_slide(16384, seed=7)
    seconds = 10.0 if quick else 30.0
    # The idle pans last as long as the run's: a maximum over 15 pans is not
    # comparable with one over 50 (more draws, larger maximum).
    idle_seconds = seconds
    rng = np.random.default_rng(0)
    threads = gui_threads()
    with tempfile.TemporaryDirectory() as tmp:
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1280, 900)
        app = QApplication.instance()
        try:
            # -- viewport latency ------------------------------------------------
            slide_a = Path(tmp) / "viewport.svs"
            shutil.copy(source, slide_a)
            os.environ["NAPARI_HISTO_CONFIG"] = str(Path(tmp) / "config")
            (layer,) = viewer.open(slide_a, plugin="napari-histo")
            widget = InferenceWidget(viewer)
            viewer.window.add_dock_widget(widget, name="Tumor inference")
            widget.set_settings(LiveSettings(mode="viewport"))
            controller = widget.controller
            available = controller.available_members()  # for the model-only baseline
            cards = [str(available[name]) for name in controller.member_names()]
            # The dock starts its worker and loads the models when the slide opens
            # (not latency): Run once that is done, as a user who looks first.
            _wait(app, lambda: not widget.preparing, 120)
            height, width = layer.data[0].shape[:2]
            mpp = float(layer.scale[0])
            viewer.reset_view()
            camera = viewer.scene.camera
            camera.center = (height * mpp * 0.6, width * mpp * 0.55)
            camera.zoom = camera.zoom * 4
            # Run once the zoomed-in slide is on screen: the latency measured is the
            # inference's, not the slide's (napari loads it on its own threads).
            _wait(app, lambda: False, 0.3)
            _wait(app, lambda: layer.loaded, 30)
            start = time.perf_counter()
            widget.run()
            _wait(app, lambda: widget.busy, 5)
            _wait(app, lambda: not widget.busy, 300)
            viewport_full = time.perf_counter() - start
            first = widget.first_cell_s
            tiles = widget.last_result.tiles_run if widget.last_result else 0
            viewport_refreshes = len(widget.refresh_costs_ms)
            model_only = _model_only(cards, tiles, threads)
            model_only_default = _model_only(cards, tiles, None)
            # -- memory over consecutive runs: five more viewport runs elsewhere --
            rss_viewer, rss_worker, cache_viewer = [], [], []
            for _ in range(RSS_RUNS):
                camera.center = (
                    float(rng.uniform(0.2, 0.8) * height * mpp),
                    float(rng.uniform(0.2, 0.8) * width * mpp),
                )
                _wait(app, lambda: False, 0.3)  # `loaded` is still the last view's
                _wait(app, lambda: layer.loaded, 30)
                widget.run()
                _wait(app, lambda: widget.busy, 5)
                _wait(app, lambda: not widget.busy, 300)
                rss_viewer.append(_rss_mb(os.getpid()))
                rss_worker.append(_rss_mb(widget.worker_pid))
                cache_viewer.append(round(layer.metadata["slide"].tile_cache.bytes / 2**20, 1))
            widget.shutdown()
            viewer.window.remove_dock_widget(widget)
            viewer.layers.clear()

            # -- responsiveness: pans alone, then during a whole-slide run -------
            # Each phase on its own fresh copy of the slide (cold tile caches both),
            # with the same pans (same seed): what differs is the job alone.
            beats: list[float] = []
            heartbeat = QTimer()
            heartbeat.setInterval(10)
            heartbeat.timeout.connect(lambda: beats.append(time.perf_counter()))
            pans = QTimer()
            pans.setInterval(200)
            pan_rng = np.random.default_rng(1)

            def jump() -> None:
                camera.center = (
                    float(pan_rng.uniform(0, height * mpp)),
                    float(pan_rng.uniform(0, width * mpp)),
                )
                camera.zoom = float(camera.zoom * pan_rng.choice([0.5, 1.0, 2.0]))

            pans.timeout.connect(jump)

            def open_copy(name: str):
                path = Path(tmp) / name
                shutil.copy(source, path)
                viewer.layers.clear()
                (opened,) = viewer.open(path, plugin="napari-histo")
                return opened

            def pan_for(duration: float, until=lambda: False) -> list[float]:
                nonlocal pan_rng
                pan_rng = np.random.default_rng(1)
                beats.clear()
                heartbeat.start()
                pans.start()
                _wait(app, until, duration)
                pans.stop()
                heartbeat.stop()
                return list(beats)

            # Both phases with the same dock, hence the same canvas: a second dock
            # beside the first made the window (and the canvas) half as tall again,
            # and the run phase then read and drew 50 % more pixels per view.
            widget2 = InferenceWidget(viewer)
            viewer.window.add_dock_widget(widget2, name="Tumor inference (whole slide)")
            widget2.set_settings(LiveSettings(mode="whole slide"))
            layer = open_copy("idle.svs")
            _wait(app, lambda: not widget2.settling, 120)
            viewer.reset_view()
            _wait(app, lambda: layer.loaded, 30)
            idle_canvas = tuple(viewer.canvas.size)
            idle_beats = pan_for(idle_seconds)

            layer = open_copy("whole.svs")
            _wait(app, lambda: not widget2.settling, 120)
            viewer.reset_view()
            _wait(app, lambda: layer.loaded, 30)
            canvas = tuple(viewer.canvas.size)
            widget2.run()
            run_beats = pan_for(seconds, lambda: not widget2.busy)
            widget2.cancel()
            _wait(app, lambda: not widget2.busy, 60)
            overlays = widget2.overlays
            refreshed, skipped = overlays.refreshes, overlays.skipped
            whole_tiles = widget2.last_result.tiles_run if widget2.last_result else 0
            worker_rss = _rss_mb(widget2.worker_pid)
            viewer_rss = _rss_mb(os.getpid())
            widget2.shutdown()
        finally:
            viewer.close()
    return {
        "async_slicing": bool(get_settings().experimental.async_),
        "torch_threads": threads,
        "heartbeats": len(run_beats),
        # Canvas (height, width) in screen px during each phase: the same, or the
        # gaps are not comparable.
        "canvas_px": list(canvas),
        "idle_canvas_px": list(idle_canvas),
        **_gap_stats(run_beats),
        **_gap_stats(idle_beats, "idle_"),
        "whole_slide_tiles": whole_tiles,
        "layer_refreshes": refreshed,
        "layer_refreshes_skipped_offscreen": skipped,
        "viewport_tiles": tiles,
        "viewport_refreshes": viewport_refreshes,
        "viewport_first_tile_s": None if first is None else round(first, 3),
        "viewport_full_s": round(viewport_full, 3),
        "viewport_model_only_s": round(model_only, 3),
        "viewport_model_only_default_threads_s": round(model_only_default, 3),
        "latency_ratio": round(viewport_full / model_only, 3) if model_only > 0 else None,
        "viewer_imports_torch": "torch" in sys.modules,
        "viewer_rss_mb": viewer_rss,
        "worker_rss_mb": worker_rss,
        "viewer_rss_runs_mb": rss_viewer,
        "worker_rss_runs_mb": rss_worker,
        "viewer_rss_growth_mb": _growth(rss_viewer),
        # The slide's decoded-tile cache (capped, io.tiff_tiles.TILE_CACHE_BYTES) in
        # that growth: it fills as runs visit new parts of the slide.
        "viewer_tile_cache_runs_mb": cache_viewer,
        "worker_rss_growth_mb": _growth(rss_worker),
    }


def _growth(values: list[float | None]) -> float | None:
    """Last minus first of a series of RSS figures (MB), None when any is unknown."""
    if not values or any(v is None for v in values):
        return None
    return round(values[-1] - values[0], 1)
