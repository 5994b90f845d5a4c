"""``bench annotations``: GeoJSON import/export speed, autosave latency, round-trip error,
napari layer build time, Qt event-loop gaps while the Annotate widget imports 10k.

Synthetic polygons of 32 vertices (noisy ellipses) at random level-0
positions; everything is written to and read from a temporary directory. The
layer build runs real napari (the CLI re-runs itself under Xvfb when there is
no display).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo.annotations.layers import annotations_to_shapes, shapes_to_annotations
from napari_histo.annotations.model import Annotation, ellipse_polygon
from napari_histo.io.annotations import read_geojson, write_geojson
from napari_histo.io.annotations.autosave import Autosaver


def synthetic_polygons(count: int, vertices: int = 32, seed: int = 0) -> list[Annotation]:
    """`count` simple polygons of `vertices` vertices spread over a 100k px slide."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        cx, cy = rng.uniform(0, 1e5, 2)
        ring = ellipse_polygon(cx, cy, rng.uniform(20, 200), rng.uniform(10, 20), 0.0, vertices)
        # radial noise about the centre (star-shaped, so still simple), sub-pixel offset
        centre = np.array([cx, cy])
        ring = centre + (ring - centre) * rng.uniform(0.97, 1.0, (vertices, 1))
        ring = ring + rng.uniform(0, 1, (1, 2))
        out.append(Annotation("polygon", ring, label="tumor", author="bench"))
    return out


def _max_error(a: list[Annotation], b: list[Annotation]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max(float(np.abs(x.coords - y.coords).max()) for x, y in zip(a, b, strict=True))


def _wait(app: Any, condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"napari did not finish in {timeout_s} s")
        app.processEvents()
        time.sleep(0.002)


def _spin(app: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.002)


def bench_layer_build(counts: tuple[int, ...] = (1_000, 10_000)) -> dict[str, float]:
    """Seconds to show `counts` polygons in napari; the Qt gap of a 10k import.

    ``layer_build_<n>k_s``: one filled-polygon ``Shapes`` layer per count, built in
    bulk (one constructor call) on the Qt thread, added to a real viewer and drawn
    once. ``snapshot_10k_s``: reading the 10k layer back into annotations (the
    autosave snapshot). ``import_10k_max_gap*_ms``: :func:`bench_import_gap`.
    """
    import napari
    from napari.layers import Shapes
    from qtpy.QtWidgets import QApplication

    mpp = 0.25
    out: dict[str, float] = {}
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    try:
        for count in counts:
            anns = synthetic_polygons(count, seed=count + 7)
            start = time.perf_counter()
            layer = Shapes(ndim=2, name=f"{count}", **annotations_to_shapes(anns, mpp))
            viewer.add_layer(layer)
            viewer.reset_view()
            app.processEvents()  # first draw
            out[f"layer_build_{count // 1000}k_s"] = round(time.perf_counter() - start, 3)
            if count == max(counts):
                previous = {a.id: a for a in anns}
                start = time.perf_counter()
                feats = {k: list(v) for k, v in layer.features.items()}
                back = shapes_to_annotations(layer.data, layer.shape_type, feats, mpp,
                                             previous=previous)  # fmt: skip
                out["snapshot_10k_s"] = round(time.perf_counter() - start, 3)
                if len(back) != count:
                    raise RuntimeError(f"layer gave {len(back)} annotations back, not {count}")
            viewer.layers.remove(layer)
            _wait(app, lambda: True, 1)
    finally:
        viewer.close()
    out.update(bench_import_gap(10_000))
    return out


def bench_import_gap(count: int = 10_000) -> dict[str, float]:
    """Longest Qt event-loop gaps (ms) while the Annotate widget imports `count` polygons.

    A 10 ms QTimer beats on the Qt thread of a fresh viewer from just before
    :meth:`AnnotationWidget.import_file` until 0.5 s after the layer is shown.
    ``import_10k_max_gap_ms``: the longest gap of all (reading the GeoJSON
    file, building the Shapes layer, adding and first drawing it);
    ``import_10k_max_gap_before_draw_ms``: the longest before the layer is added
    (reading and building on worker threads).
    """
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_histo.widgets.annotation import AnnotationWidget

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    with tempfile.TemporaryDirectory(prefix="napari-histo-bench-") as tmp:
        source = Path(tmp) / "import.geojson"
        write_geojson(source, synthetic_polygons(count, seed=count + 7))
        # a stand-in slide layer (the widget needs a path and mpp in its metadata)
        meta = {"path": str(Path(tmp) / "slide.svs"), "mpp": 0.25}
        viewer.add_image(np.zeros((1000, 1000), np.uint8), scale=(25.0, 25.0), metadata=meta)
        widget = AnnotationWidget(viewer)
        try:
            viewer.window.add_dock_widget(widget, name="Annotate")
            _spin(app, 0.5)
            beats: list[float] = []
            heartbeat = QTimer()
            heartbeat.setInterval(10)
            heartbeat.timeout.connect(lambda: beats.append(time.perf_counter()))
            heartbeat.start()
            _wait(app, lambda: len(beats) > 5, 5)
            added: list[float] = []
            viewer.layers.events.inserted.connect(lambda _: added.append(time.perf_counter()))
            if not widget.import_file(source):
                raise RuntimeError(f"import failed: {widget.status.text()}")
            _wait(app, lambda: not widget.building, 300)
            _spin(app, 0.5)
            heartbeat.stop()
            shown = viewer.layers["annotations"] if "annotations" in viewer.layers else []
            if len(getattr(shown, "data", [])) != count:
                raise RuntimeError(f"the Annotate widget did not show {count} annotations: "
                                   f"{widget.status.text()}")  # fmt: skip
            ends = np.asarray(beats[1:])
            gaps = np.diff(beats) * 1e3
            before = gaps[ends < added[0]] if added else gaps
            key = f"import_{count // 1000}k_max_gap"
            return {f"{key}_ms": round(float(gaps.max()), 1),
                    f"{key}_before_draw_ms": round(float(before.max()), 1)}  # fmt: skip
        finally:
            widget.close()
            viewer.close()


def bench_annotations(quick: bool = False) -> dict[str, Any]:
    """Time GeoJSON export/import of 1k and 10k polygons and the autosave latency.

    Parameters
    ----------
    quick : bool
        Fewer repetitions (1 instead of 3 for each timing, 10 autosaves instead of 20).

    Returns
    -------
    dict
        ``import_1k_s``, ``import_10k_s``, ``export_10k_s`` (best of the
        repetitions, s), ``autosave_latency_ms`` (median time from
        :meth:`Autosaver.changed` to the file being on disk, delay_s=0, 1k
        polygons), ``roundtrip_max_err_px`` (largest vertex change after
        write + read, and after annotation → Shapes layer data (float32) →
        annotation, level-0 px), ``layer_build_1k_s``, ``layer_build_10k_s``,
        ``snapshot_10k_s``, ``import_10k_max_gap_ms``,
        ``import_10k_max_gap_before_draw_ms`` (see :func:`bench_layer_build`).
    """
    reps = 1 if quick else 3
    result: dict[str, Any] = {}
    err = 0.0
    with tempfile.TemporaryDirectory(prefix="napari-histo-bench-") as tmp:
        for count, key in ((1_000, "1k"), (10_000, "10k")):
            anns = synthetic_polygons(count, seed=count)
            path = Path(tmp) / f"{key}.geojson"
            export_s, import_s = [], []
            for _ in range(reps):
                start = time.perf_counter()
                write_geojson(path, anns)
                export_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                got = read_geojson(path)
                import_s.append(time.perf_counter() - start)
            err = max(err, _max_error(anns, got.annotations))
            result[f"import_{key}_s"] = round(min(import_s), 4)
            if key == "10k":
                result["export_10k_s"] = round(min(export_s), 4)
                result["file_10k_mb"] = round(path.stat().st_size / 1e6, 2)

        anns = synthetic_polygons(1_000, seed=1)
        saved = threading.Event()
        latencies = []
        path = Path(tmp) / "slide.svs.annotations.geojson"
        with Autosaver(path, lambda: anns, delay_s=0.0, on_saved=lambda _: saved.set()) as saver:
            for _ in range(10 if quick else 20):
                saved.clear()
                start = time.perf_counter()
                saver.changed()
                if not saved.wait(30):
                    raise RuntimeError(f"autosave to {path} did not finish in 30 s")
                latencies.append((time.perf_counter() - start) * 1e3)
        result["autosave_latency_ms"] = round(statistics.median(latencies), 2)
    # annotation -> napari Shapes data (world µm) -> annotation, without the id cache
    anns = synthetic_polygons(1_000, seed=2)
    kwargs = annotations_to_shapes(anns, 0.2527)
    data32 = [d.astype(np.float32) for d in kwargs["data"]]  # napari keeps float32 vertices
    back = shapes_to_annotations(data32, kwargs["shape_type"], kwargs["features"], 0.2527)
    err = max(err, _max_error(anns, back))
    result["roundtrip_max_err_px"] = round(err, 6)
    result.update(bench_layer_build())
    return {k: result[k] for k in (
        "import_1k_s", "import_10k_s", "export_10k_s", "autosave_latency_ms",
        "roundtrip_max_err_px", "file_10k_mb", "layer_build_1k_s", "layer_build_10k_s",
        "snapshot_10k_s", "import_10k_max_gap_ms", "import_10k_max_gap_before_draw_ms",
    )}  # fmt: skip
