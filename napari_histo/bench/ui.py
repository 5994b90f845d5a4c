"""``bench ui``: is the viewer responsive while inference runs, and how fast is a viewport?

Runs real napari (under Xvfb when headless) with the "Tumor inference" dock on
a fresh copy of a synthetic slide:

* viewport latency: a viewport run on a zoomed-in view (about a sixteenth of
  the slide) from the widget: time to the first finished cell and to the
  whole view, against the bare ensemble forward on the same number of tiles
  (``latency_ratio = viewport_full_s / viewport_model_only_s``);
* responsiveness: during a whole-slide run, the camera jumps to a random spot
  every 200 ms while a 10 ms QTimer heartbeat on the Qt thread records its
  gaps (p50, p95, max). napari's asynchronous slicing is switched on through
  the environment (``NAPARI_EXPERIMENTAL_ASYNC_``), not the settings file.
"""

from __future__ import annotations

import os
import shutil
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


def bench_ui(*, quick: bool = False) -> dict[str, Any]:
    """Run the UI benchmark; see the module docstring."""
    os.environ.setdefault("NAPARI_EXPERIMENTAL_ASYNC_", "1")
    os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_histo.bench import bench_slide
    from napari_histo.inference.engine import default_batch_size
    from napari_histo.inference.ensemble import ensemble_predict
    from napari_histo.live import LiveSettings
    from napari_histo.widgets.inference import InferenceWidget

    source = bench_slide(16384, seed=7)
    seconds = 10.0 if quick else 30.0
    rng = np.random.default_rng(0)
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
            members = widget.controller.load_members()  # model loading is not latency
            height, width = layer.data[0].shape[:2]
            mpp = float(layer.scale[0])
            viewer.reset_view()
            camera = viewer.scene.camera
            camera.center = (height * mpp * 0.6, width * mpp * 0.55)
            camera.zoom = camera.zoom * 4
            _wait(app, lambda: False, 0.3)
            start = time.perf_counter()
            widget.run()
            _wait(app, lambda: widget.busy, 5)
            _wait(app, lambda: not widget.busy, 300)
            viewport_full = time.perf_counter() - start
            first = widget.first_cell_s
            tiles = widget.last_result.tiles_run if widget.last_result else 0
            batch = default_batch_size(torch.device("cpu"))
            models = [m.model for m in members]
            x = torch.randn(batch, 3, members[0].card.patch_px, members[0].card.patch_px)
            ensemble_predict(models, x, (0,))
            t0 = time.perf_counter()
            for done in range(0, max(tiles, 1), batch):
                ensemble_predict(models, x[: min(batch, tiles - done)] if tiles else x[:1], (0,))
            model_only = time.perf_counter() - t0
            widget.shutdown()
            viewer.layers.clear()

            # -- responsiveness during a whole-slide run --------------------------
            slide_b = Path(tmp) / "whole.svs"
            shutil.copy(source, slide_b)
            (layer,) = viewer.open(slide_b, plugin="napari-histo")
            widget2 = InferenceWidget(viewer)
            viewer.window.add_dock_widget(widget2, name="Tumor inference (whole slide)")
            widget2.set_settings(LiveSettings(mode="whole slide"))
            widget2.controller.load_members()
            viewer.reset_view()
            beats: list[float] = []
            heartbeat = QTimer()
            heartbeat.setInterval(10)
            heartbeat.timeout.connect(lambda: beats.append(time.perf_counter()))
            pans = QTimer()
            pans.setInterval(200)

            def jump() -> None:
                camera.center = (
                    float(rng.uniform(0, height * mpp)),
                    float(rng.uniform(0, width * mpp)),
                )
                camera.zoom = float(camera.zoom * rng.choice([0.5, 1.0, 2.0]))

            pans.timeout.connect(jump)
            widget2.run()
            heartbeat.start()
            pans.start()
            _wait(app, lambda: not widget2.busy, seconds)
            pans.stop()
            heartbeat.stop()
            widget2.cancel()
            _wait(app, lambda: not widget2.busy, 60)
            widget2.shutdown()
        finally:
            viewer.close()
    gaps = np.diff(np.asarray(beats)) * 1000 if len(beats) > 1 else np.array([np.nan])
    return {
        "async_slicing": os.environ.get("NAPARI_EXPERIMENTAL_ASYNC_") == "1",
        "heartbeats": len(beats),
        "gap_p50_ms": round(float(np.percentile(gaps, 50)), 1),
        "gap_p95_ms": round(float(np.percentile(gaps, 95)), 1),
        "gap_max_ms": round(float(gaps.max()), 1),
        "viewport_tiles": tiles,
        "viewport_first_tile_s": None if first is None else round(first, 3),
        "viewport_full_s": round(viewport_full, 3),
        "viewport_model_only_s": round(model_only, 3),
        "latency_ratio": round(viewport_full / model_only, 3) if model_only > 0 else None,
    }
