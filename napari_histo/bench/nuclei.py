"""``bench nuclei``: speed of each backend, seams, quality, and a 100k-nucleus Labels layer.

* ``<method>_mpx_per_s``: :func:`~napari_histo.nuclei.classical.segment_nuclei` on
  1024² level-0 tiles of a synthetic slide (0.25 µm/px), megapixels per second;
* ``border_split_count`` / ``border_duplicate_count``: a 2048² synthetic slide
  segmented into the store in 512 px blocks (:mod:`napari_histo.nuclei.store`,
  the whole-slide path) against one untiled call with the same threshold.
  A nucleus of the untiled result that crosses a block seam is *split* unless
  all its pixels carry one and the same stored id; it is *duplicated* when two
  measurement rows have their centroids in it (or a stored id is in two
  pieces). ``region_border_*``: the same for the in-memory tiler the widget
  uses (:func:`~napari_histo.nuclei.classical.segment_region`, 768 px tiles). Must be 0.
  ``learned_border_*``: the store path with the learned backend (not in ``--quick``);
* ``<method>_aji`` / ``<method>_pq``: :func:`napari_histo.nuclei.evaluate.nuclei_quality`
  on tiles of held-out synthetic slides (seeds the learned model never saw);
* ``layer_100k_*``: a real napari viewer showing 100k nuclei through the
  widget's own code path (Labels + features): build time, a features update,
  a redraw, and the hover look-up (value + features row) per call.

A backend that cannot run (e.g. learned weights not shipped yet) gets None in
its fields and its error in ``<method>_error``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

MPP = 0.25
METHODS = ("classical", "learned")


def _mpx_per_s(method: str, rgb_tiles: list[np.ndarray]) -> float:
    from napari_histo.nuclei.classical import segment_nuclei

    segment_nuclei(rgb_tiles[0][:256, :256], MPP, method)  # load / warm up
    t0 = time.perf_counter()
    pixels = 0
    for rgb in rgb_tiles:
        segment_nuclei(rgb, MPP, method)
        pixels += rgb.shape[0] * rgb.shape[1]
    return pixels / 1e6 / (time.perf_counter() - t0)


def border_errors(
    tiled: np.ndarray,
    untiled: np.ndarray,
    block_px: int,
    centroids_yx: np.ndarray | None = None,
) -> dict[str, int]:
    """Seam errors of `tiled` labels against `untiled` ones (see the module docstring).

    Parameters
    ----------
    tiled, untiled : ndarray of int, same shape (H, W)
    block_px : int
        Seams are at multiples of this (rows and columns).
    centroids_yx : ndarray (N, 2), optional
        Pixel ``(row, col)`` of every measurement row; default the centroid of
        every tiled id.
    """
    if centroids_yx is None:
        ids = np.unique(tiled[tiled > 0])
        centroids_yx = np.array(ndi.center_of_mass(tiled > 0, tiled, ids)).reshape(-1, 2)
    rows = np.clip(np.round(centroids_yx).astype(int), 0, np.array(tiled.shape) - 1)
    rows_in = np.bincount(untiled[rows[:, 0], rows[:, 1]], minlength=int(untiled.max()) + 1)
    split = duplicate = seam = 0
    for index, box in enumerate(ndi.find_objects(untiled)):
        if box is None:
            continue
        crosses = any(s.start // block_px != (s.stop - 1) // block_px for s in box)
        if not crosses:
            continue
        seam += 1
        values = tiled[box][untiled[box] == index + 1]
        split += int(values.min() == 0 or values.min() != values.max())
        duplicate += int(rows_in[index + 1] > 1)
    for index, box in enumerate(ndi.find_objects(tiled)):
        if box is not None and ndi.label(tiled[box] == index + 1)[1] > 1:
            duplicate += 1
    return {"split": split, "duplicate": duplicate, "seam_nuclei": seam}


def _border(slide_path: Path, out_dir: Path) -> dict[str, Any]:
    from napari_histo.io.slide import Slide
    from napari_histo.nuclei.classical import segment_nuclei, segment_region
    from napari_histo.nuclei.store import nuclei_to_store

    block = 512
    t0 = time.perf_counter()
    result = nuclei_to_store(slide_path, block_px=block, out_dir=out_dir)
    store_s = time.perf_counter() - t0
    run = result.run
    tiled = np.asarray(run.labels(0)[...])
    table = run.features()
    threshold = float(run.group.attrs["threshold"])
    with Slide(slide_path) as slide:
        rgb = slide.read_region(0, 0, 0, *slide.dimensions)
        untiled = segment_nuclei(rgb, MPP, threshold=threshold)
        t0 = time.perf_counter()
        region = segment_region(slide, (0, 0, *slide.dimensions), tile_px=768)
        region_s = time.perf_counter() - t0
    yx = np.column_stack([table["centroid_y_um"], table["centroid_x_um"]]) / MPP - 0.5
    errors = border_errors(tiled, untiled, block, yx)
    errors["duplicate"] += len(table["id"]) - len(np.unique(table["id"]))
    region_errors = border_errors(region, segment_nuclei(rgb, MPP), 768)
    return {
        "border_split_count": errors["split"],
        "border_duplicate_count": errors["duplicate"],
        "border_seam_nuclei": errors["seam_nuclei"],
        "border_blocks": int(run.done.size),
        "border_nuclei": result.nuclei,
        "store_512px_blocks_mpx_per_s": rgb.shape[0] * rgb.shape[1] / 1e6 / store_s,
        "region_border_split_count": region_errors["split"],
        "region_border_duplicate_count": region_errors["duplicate"],
        "region_border_seam_nuclei": region_errors["seam_nuclei"],
        "region_mpx_per_s": rgb.shape[0] * rgb.shape[1] / 1e6 / region_s,
    }


def _border_learned(slide_path: Path, out_dir: Path) -> dict[str, Any]:
    """Seam errors of the store path with the learned backend (as for classical)."""
    from napari_histo.io.slide import Slide
    from napari_histo.nuclei.classical import segment_nuclei
    from napari_histo.nuclei.store import nuclei_to_store

    run = nuclei_to_store(slide_path, method="learned", block_px=512, out_dir=out_dir).run
    table = run.features()
    with Slide(slide_path) as slide:
        untiled = segment_nuclei(slide.read_region(0, 0, 0, *slide.dimensions), MPP, "learned")
    yx = np.column_stack([table["centroid_y_um"], table["centroid_x_um"]]) / MPP - 0.5
    errors = border_errors(np.asarray(run.labels(0)[...]), untiled, 512, yx)
    return {
        "learned_border_split_count": errors["split"],
        "learned_border_duplicate_count": errors["duplicate"],
        "learned_border_seam_nuclei": errors["seam_nuclei"],
    }


def _quality(method: str, n_tiles: int) -> dict[str, float]:
    from napari_histo.nuclei.evaluate import nuclei_quality
    from napari_histo.paths import cache_dir

    try:
        from napari_histo.training.nuclei import HELDOUT_SEEDS
    except ImportError:  # the learned backend's training module is not there
        HELDOUT_SEEDS = (5, 500, 501, 502)
    workdir = cache_dir() / "bench" / "nuclei_eval"  # the held-out slides, reused
    workdir.mkdir(parents=True, exist_ok=True)
    scores = nuclei_quality(method, list(HELDOUT_SEEDS), n_tiles, workdir=workdir)
    return {"aji": scores["aji"], "pq": scores["pq"]}


def fake_nuclei(n: int, pitch: int = 16, radius: int = 5) -> tuple[np.ndarray, dict]:
    """About `n` disk nuclei on a grid: labels (uint32) and a measurement table."""
    side = int(np.ceil(np.sqrt(n)))
    ids = np.arange(1, side * side + 1, dtype=np.uint32).reshape(side, side)
    yy, xx = np.mgrid[:pitch, :pitch] - pitch // 2
    cell = (yy**2 + xx**2 <= radius**2).astype(np.uint32)
    labels = np.kron(ids, cell)
    count = side * side
    rng = np.random.default_rng(0)
    centre = (np.arange(count) % side) * pitch + pitch // 2
    table = {
        "id": np.arange(1, count + 1),
        "centroid_x_um": (centre + 0.5) * MPP,
        "centroid_y_um": ((np.arange(count) // side) * pitch + pitch // 2 + 0.5) * MPP,
        "area_um2": np.full(count, cell.sum() * MPP**2),
        "eccentricity": rng.random(count),
        "solidity": rng.random(count),
        "mean_haematoxylin": rng.random(count),
        "tumor_probability": rng.random(count),
    }
    return labels, table


def _layer_100k(quick: bool) -> dict[str, Any]:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_histo.nuclei.export import RegionNuclei
    from napari_histo.widgets.nuclei import NucleiWidget

    labels, table = fake_nuclei(100_000)
    result = RegionNuclei((0, 0, labels.shape[1], labels.shape[0]), labels, table, (MPP, MPP))
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    try:
        widget = NucleiWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Nuclei")
        app.processEvents()
        t0 = time.perf_counter()
        layer = widget.show_result(result)
        app.processEvents()  # the first draw
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        layer = widget.show_result(result)  # a second run replaces the layer
        app.processEvents()
        rebuild_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        layer.features = layer.features.assign(area_um2=layer.features["area_um2"] * 1.01)
        features_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        layer.refresh()
        app.processEvents()
        refresh_s = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        picks = rng.integers(0, len(table["id"]), 50 if quick else 500)
        t0 = time.perf_counter()
        hits = 0
        for i in picks:
            world = (table["centroid_y_um"][i] - MPP / 2, table["centroid_x_um"][i] - MPP / 2)
            status = layer.get_status(world, world=True)
            hits += f"{table['eccentricity'][i]:.3g}"[:4] in str(status)
        hover_ms = (time.perf_counter() - t0) / len(picks) * 1000
        widget.shutdown()
    finally:
        viewer.close()
    return {
        "layer_100k_nuclei": int(labels.max()),
        "layer_100k_build_s": build_s,
        "layer_100k_rebuild_s": rebuild_s,
        "layer_100k_features_update_s": features_s,
        "layer_100k_refresh_s": refresh_s,
        "layer_100k_hover_ms": hover_ms,
        "layer_100k_hover_shows_features": hits == len(picks),
    }


def bench_nuclei(*, quick: bool = False) -> dict[str, Any]:
    """Run the nuclei benchmark; see the module docstring."""
    from napari_histo.bench import bench_slide
    from napari_histo.io.slide import Slide

    t_start = time.perf_counter()
    out: dict[str, Any] = {"quick": quick}
    speed_path = bench_slide(2048 if quick else 4096, seed=7)
    with Slide(speed_path) as slide:
        side = slide.dimensions[0]
        starts = [(side // 2 - 1024, side // 2 - 1024), (side // 2, side // 2)]
        tiles = [np.ascontiguousarray(slide.read_region(0, x, y, 1024, 1024)) for x, y in starts]
    n_tiles = 4 if quick else 16
    with tempfile.TemporaryDirectory(prefix="napari-histo-bench-nuclei-") as tmp:
        work = Path(tmp)
        for method in METHODS:
            keys = (f"{method}_mpx_per_s", f"{method}_aji", f"{method}_pq")
            try:
                few = [tiles[0][:512, :512]] if quick and method == "learned" else tiles
                speed = _mpx_per_s(method, few)
                quality = _quality(method, n_tiles)
            except Exception as err:  # report the backend as unavailable, keep going
                out.update(dict.fromkeys(keys))
                out[f"{method}_error"] = f"{type(err).__name__}: {err}"
                continue
            out.update(zip(keys, (speed, quality["aji"], quality["pq"]), strict=True))
        out["quality_tiles"] = n_tiles
        border_path = bench_slide(2048 if quick else 4096, seed=5)
        out.update(_border(border_path, work))
        learned = dict.fromkeys(("learned_border_split_count", "learned_border_duplicate_count"))
        if not quick and out.get("learned_error") is None:  # minutes on a CPU
            learned = _border_learned(border_path, work)
        out.update(learned)
    out.update(_layer_100k(quick))
    out["seconds"] = time.perf_counter() - t_start
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
