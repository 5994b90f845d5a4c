"""``bench annotations``: GeoJSON import/export speed, autosave latency, round-trip error.

Synthetic polygons of 32 vertices (noisy ellipses) at random level-0
positions; everything is written to and read from a temporary directory.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo.annotations import Annotation, ellipse_polygon
from napari_histo.io.annotations import Autosaver, read_geojson, write_geojson


def synthetic_polygons(count: int, vertices: int = 32, seed: int = 0) -> list[Annotation]:
    """`count` simple polygons of `vertices` vertices spread over a 100k px slide."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        cx, cy = rng.uniform(0, 1e5, 2)
        ring = ellipse_polygon(cx, cy, rng.uniform(20, 200), rng.uniform(10, 20), 0.0, vertices)
        ring = ring * rng.uniform(0.97, 1.0, (vertices, 1)) + rng.uniform(0, 1, (1, 2))
        out.append(Annotation("polygon", ring, label="tumor", author="bench"))
    return out


def _max_error(a: list[Annotation], b: list[Annotation]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max(float(np.abs(x.coords - y.coords).max()) for x, y in zip(a, b, strict=True))


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
        write + read, level-0 px).
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
    result["roundtrip_max_err_px"] = err
    return {k: result[k] for k in (
        "import_1k_s", "import_10k_s", "export_10k_s", "autosave_latency_ms",
        "roundtrip_max_err_px", "file_10k_mb",
    )}  # fmt: skip
