"""The Annotate dock widget in real napari (under Xvfb), on real slide files."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from napari_histo.annotations.model import Annotation
from napari_histo.bench.annotations import synthetic_polygons
from napari_histo.frames import l0_to_world
from napari_histo.io.annotations import read_geojson, write_geojson
from tests.slides import textured_rgb, write_aperio_svs

pytest.importorskip("napari")

MPP = 0.25  # the slide's µm per px


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("annot") / "slide.svs"
    write_aperio_svs(path, textured_rgb(2000, 3000, seed=4), levels=2, mpp=MPP)
    return path


@pytest.fixture
def slide(slide_file, tmp_path) -> Path:
    """A private copy, so the annotation file beside it starts absent."""
    path = tmp_path / "slide.svs"
    shutil.copy(slide_file, path)
    return path


def open_annotate(make_napari_viewer, path, **kwargs):
    from napari_histo.widgets.annotation import AnnotationWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1300, 900)
    viewer.open(path, plugin="napari-histo")
    widget = AnnotationWidget(viewer, **kwargs)
    viewer.window.add_dock_widget(widget, name="Annotate")
    return viewer, widget


def saved(path: Path) -> list[Annotation]:
    return read_geojson(path).annotations if path.exists() else []


def rect_world(x0, y0, x1, y1) -> np.ndarray:
    return l0_to_world([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], MPP)


def test_drawn_rectangle_is_autosaved_within_2s_and_restored(make_napari_viewer, qtbot, slide):
    viewer, widget = open_annotate(make_napari_viewer, slide)
    assert widget.slide_path == slide and widget.mpp == (MPP, MPP)
    widget.author.setText("dr. test")
    widget.class_combo.setCurrentText("non-tumor")
    widget.granularity.setCurrentText("bbox")
    widget.activate()
    layer = viewer.layers["annotations"]
    assert layer.mode == "add_rectangle"
    path = slide.parent / "slide.svs.annotations.geojson"
    start = time.monotonic()
    layer.add(rect_world(400, 300, 800, 500), shape_type="rectangle")
    qtbot.waitUntil(lambda: len(saved(path)) == 1, timeout=2000)
    assert time.monotonic() - start < 2.0
    (ann,) = saved(path)
    assert (ann.kind, ann.label, ann.granularity, ann.author) == (
        "bbox", "non-tumor", "bbox", "dr. test",
    )  # fmt: skip
    assert np.allclose(ann.bounds, (400, 300, 800, 500), atol=1e-6) and ann.created
    assert layer.features["id"][0] == ann.id  # the id given on drawing stays with the shape

    # an ellipse drawn next is saved too, with exact level-0 parameters
    corners = l0_to_world([[1000, 1000], [1200, 1000], [1200, 1100], [1000, 1100]], MPP)
    widget.granularity.setCurrentText("ellipse")
    widget.activate()
    layer.add(corners, shape_type="ellipse")
    qtbot.waitUntil(lambda: len(saved(path)) == 2, timeout=2000)
    ell = saved(path)[1]
    assert ell.kind == "ellipse" and np.allclose(ell.ellipse[:4], (1100, 1050, 100, 50))
    # removing the slide drops its annotation layer; the file stays
    viewer.layers.remove(widget.slide_layer())
    assert "annotations" not in viewer.layers and widget.slide_path is None
    assert len(saved(path)) == 2
    widget.close()

    # reopening the slide restores them
    viewer2, widget2 = open_annotate(make_napari_viewer, slide)
    assert [a.id for a in widget2.annotations()] == [a.id for a in saved(path)]
    assert len(viewer2.layers["annotations"].data) == 2
    assert "restored 2" in widget2.status.text()


def test_npe2_widget_contribution(make_napari_viewer, slide):
    from napari_histo.widgets.annotation import AnnotationWidget

    viewer = make_napari_viewer()
    viewer.open(slide, plugin="napari-histo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-histo", "Annotate")
    assert isinstance(widget, AnnotationWidget) and widget.slide_path == slide
    widget.close()


def test_user_classes_persist(make_napari_viewer, slide):
    _, widget = open_annotate(make_napari_viewer, slide)
    widget.add_class("stroma", (10, 20, 30))
    widget.close()
    data = json.loads((slide.parent / "slide.svs.annotations.classes.json").read_text())
    assert {"name": "stroma", "color": [10, 20, 30]} in data["classes"]
    _, widget2 = open_annotate(make_napari_viewer, slide)
    names = [widget2.class_combo.itemText(i) for i in range(widget2.class_combo.count())]
    assert names == ["tumor", "non-tumor", "ignore", "stroma"]
    widget2.class_combo.setCurrentText("tumor")
    widget2.remove_current_class()  # a default class stays
    assert widget2.class_combo.count() == 4


def zoom_to(viewer, x0, y0, x1, y1):
    viewer.scene.camera.center = ((y0 + y1) / 2 * MPP, (x0 + x1) / 2 * MPP)
    height, width = viewer.canvas.size
    viewer.scene.camera.zoom = min(height / ((y1 - y0) * MPP), width / ((x1 - x0) * MPP))


def test_pixel_crop_commit(make_napari_viewer, qtbot, slide):
    viewer, widget = open_annotate(make_napari_viewer, slide)
    zoom_to(viewer, 1000, 600, 1400, 1000)
    widget.class_combo.setCurrentText("tumor")
    widget.granularity.setCurrentText("pixel")
    widget.activate()
    crop_layer = viewer.layers["pixel annotation crop"]
    crop = widget.crop
    assert crop_layer.mode == "paint" and crop_layer.selected_label == 1
    assert crop.downsample == 1.0 and crop_layer.data.shape == crop.shape
    x, y, w, h = widget.visible_region()
    assert crop.origin_l0 == (x, y) and crop.shape == (h, w)
    ox, oy = (int(v) for v in crop.origin_l0)
    # paint a 60 x 40 px block at level-0 (1100, 700) as a brush would
    crop_layer.data[700 - oy : 740 - oy, 1100 - ox : 1160 - ox] = 1
    crop_layer.refresh()
    widget.commit_crop()
    assert "pixel annotation crop" not in viewer.layers
    (ann,) = widget.annotations()
    assert ann.granularity == "pixel" and ann.label == "tumor"
    assert np.allclose(ann.bounds, (1100, 700, 1160, 740), atol=1.0)
    path = slide.parent / "slide.svs.annotations.geojson"
    qtbot.waitUntil(lambda: len(saved(path)) == 1, timeout=2000)

    # reopening a crop over it makes it editable again; erasing half and committing replaces it
    widget.activate()
    crop_layer = viewer.layers["pixel annotation crop"]
    ox, oy = (int(v) for v in widget.crop.origin_l0)
    assert (crop_layer.data == 1).sum() == pytest.approx(60 * 40, rel=0.05)
    assert len(viewer.layers["annotations"].data) == 0  # held by the crop, not shown twice
    crop_layer.data[:, 1130 - ox :] = 0
    widget.commit_crop()
    (ann2,) = widget.annotations()
    assert np.allclose(ann2.bounds, (1100, 700, 1130, 740), atol=1.0)


def test_from_model_polygons_and_crop(make_napari_viewer, slide):
    viewer, widget = open_annotate(make_napari_viewer, slide)
    ds, origin = 8.0, (0, 0)
    rr, cc = np.mgrid[:250, :375]
    prob = np.clip(1 - np.hypot(rr - 100, cc - 150) / 40, 0, 1).astype(np.float32)  # 0.5 at r=20
    geometry = {"origin_l0": list(origin), "downsample": ds, "shape": [250, 375],
                "cell_px": 64, "mpp": ds * MPP}  # fmt: skip
    viewer.add_image(prob, name="tumor probability", scale=(ds * MPP, ds * MPP),
                     translate=((ds - 1) / 2 * MPP,) * 2, metadata={"geometry": geometry})
    zoom_to(viewer, 0, 0, 3000, 2000)
    widget.threshold.setValue(0.5)
    widget.class_combo.setCurrentText("tumor")
    widget.from_model()
    (poly,) = widget.annotations()
    assert poly.kind == "polygon" and poly.properties["source"] == "model"
    assert np.allclose(poly.coords.mean(axis=0), (150.5 * ds, 100.5 * ds), atol=ds)
    assert len(viewer.layers["annotations"].data) == 1  # editable in the Shapes layer

    widget.model_output.setCurrentText("pixel crop")
    widget.from_model()
    crop = widget.crop
    labels = viewer.layers["pixel annotation crop"].data
    rows, cols = np.nonzero(labels == 1)
    # the disc of radius 20 result px = 160 level-0 px around level-0 (1204, 804)
    cx = crop.origin_l0[0] + (cols.mean() + 0.5) * crop.downsample
    cy = crop.origin_l0[1] + (rows.mean() + 0.5) * crop.downsample
    assert abs(cx - 150.5 * ds) < 2 * ds and abs(cy - 100.5 * ds) < 2 * ds


def test_from_model_reads_the_result_store(make_napari_viewer, slide):
    from napari_histo.io.store import (
        RESULT_ARRAYS,
        ResultGeometry,
        ResultStore,
        default_store_path,
        slide_identity,
    )

    ds = 8.0
    geometry = ResultGeometry((0, 0), ds, (250, 375), 125, ds * MPP)
    store = ResultStore(default_store_path(slide), slide_identity(slide, (3000, 2000), MPP))
    run = store.create_or_resume({"model": "test"}, geometry)
    rr, cc = np.mgrid[:250, :375]
    prob = np.clip(1 - np.hypot(rr - 60, cc - 300) / 30, 0, 1).astype(np.float32)
    for row, col in np.ndindex(*geometry.cell_shape):
        y0, y1, x0, x1 = geometry.cell_bounds(row, col)
        run.write_cell(row, col, {k: prob[y0:y1, x0:x1] for k in RESULT_ARRAYS})
    run.finish()
    viewer, widget = open_annotate(make_napari_viewer, slide)
    assert "tumor probability" not in viewer.layers
    zoom_to(viewer, 0, 0, 3000, 2000)
    widget.from_model()
    (poly,) = widget.annotations()
    assert np.allclose(poly.coords.mean(axis=0), (300.5 * ds, 60.5 * ds), atol=ds)


def test_nuclei_edits_on_a_labels_layer(make_napari_viewer, slide):
    viewer, widget = open_annotate(make_napari_viewer, slide)
    lab = np.zeros((60, 80), np.int32)
    lab[5:15, 5:15] = 1
    lab[5:15, 20:30] = 2
    lab[25:40, 5:70] = 3
    layer = viewer.add_labels(lab, name="nuclei")
    from napari_histo.widgets.annotation import NucleiEditBox

    box = widget.findChild(NucleiEditBox)
    assert box.layer_combo.currentText() == "nuclei"
    box.ids.setText("1, 2")
    box.merge()
    assert set(np.unique(layer.data)) == {0, 1, 3}
    box.ids.setText("")
    layer.selected_label = 3
    box.split()
    assert set(np.unique(layer.data)) == {0, 1, 3, 4}
    box.ids.setText("4")
    box.delete()
    assert set(np.unique(layer.data)) == {0, 1, 3}
    box.split_line()  # first press: a "split line" layer to draw in
    lines = viewer.layers["split line"]
    lines.add(np.array([[20.0, 20.0], [45.0, 20.0]]), shape_type="path")
    box.ids.setText("3")
    box.split_line()
    assert set(np.unique(layer.data)) == {0, 1, 3, 4}
    assert np.nonzero(layer.data == 4)[1].max() <= 20 or np.nonzero(layer.data == 4)[1].min() >= 20
    box.new_id()
    assert layer.selected_label == 5 and layer.mode == "paint"


def test_writers_through_napari_save(make_napari_viewer, tmp_path, slide):
    import napari

    viewer, widget = open_annotate(make_napari_viewer, slide)
    anns = [Annotation.from_bbox(10, 20, 110, 220, label="tumor"),
            Annotation.from_ellipse(600, 500, 90, 40, 0.4, label="non-tumor")]  # fmt: skip
    widget.set_annotations(anns)
    out = tmp_path / "shapes.geojson"
    napari.save_layers(str(out), [viewer.layers["annotations"]], plugin="napari-histo")
    got = read_geojson(out).annotations
    assert [a.id for a in got] == [a.id for a in anns]
    assert max(np.abs(a.coords - b.coords).max() for a, b in zip(anns, got, strict=True)) < 0.5

    zoom_to(viewer, 200, 200, 600, 600)
    widget.granularity.setCurrentText("pixel")
    widget.activate()
    crop_layer = viewer.layers["pixel annotation crop"]
    ox, oy = (int(v) for v in widget.crop.origin_l0)
    crop_layer.data[300 - oy : 350 - oy, 250 - ox : 330 - ox] = 1
    out = tmp_path / "labels.geojson"
    napari.save_layers(str(out), [crop_layer], plugin="napari-histo")
    (ann,) = read_geojson(out).annotations
    assert ann.label == "tumor" and np.allclose(ann.bounds, (250, 300, 330, 350), atol=1.0)


def test_corrupt_import_keeps_annotations_and_file(make_napari_viewer, qtbot, tmp_path, slide):
    path = slide.parent / "slide.svs.annotations.geojson"
    write_geojson(path, [Annotation.from_bbox(0, 0, 50, 50)])
    before = path.read_bytes()
    _, widget = open_annotate(make_napari_viewer, slide)
    assert len(widget.annotations()) == 1
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    assert widget.import_file(bad) is False
    assert "import failed" in widget.status.text() and "bad.geojson" in widget.status.text()
    assert "not valid JSON" in widget.status.text()
    qtbot.wait(1200)  # longer than an autosave round
    assert path.read_bytes() == before and len(widget.annotations()) == 1

    good = tmp_path / "good.geojson"
    write_geojson(good, [Annotation.from_bbox(100, 100, 200, 200, label="stroma")])
    assert widget.import_file(good)
    assert len(widget.annotations()) == 2 and widget.class_combo.findText("stroma") >= 0
    qtbot.waitUntil(lambda: len(saved(path)) == 2, timeout=2000)


def test_corrupt_autosave_file_is_not_overwritten(make_napari_viewer, qtbot, slide):
    path = slide.parent / "slide.svs.annotations.geojson"
    path.write_text("garbage")
    viewer, widget = open_annotate(make_napari_viewer, slide)
    assert "autosave off" in widget.status.text() and str(path) in widget.status.text()
    viewer.layers["annotations"].add(rect_world(0, 0, 10, 10), shape_type="rectangle")
    qtbot.wait(1200)
    assert path.read_text() == "garbage"


def test_10k_import_built_in_one_layer_off_the_qt_thread(
    make_napari_viewer, qtbot, tmp_path, slide
):
    from qtpy.QtCore import QTimer

    from napari_histo.widgets.annotation import READ_IN_BACKGROUND_ABOVE

    viewer, widget = open_annotate(make_napari_viewer, slide)
    anns = synthetic_polygons(10_000, seed=3)
    source = write_geojson(tmp_path / "10k.geojson", anns)
    assert source.stat().st_size > READ_IN_BACKGROUND_ABOVE  # read on a worker thread too
    inserted, inserted_at = [], []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value.name))
    viewer.layers.events.inserted.connect(lambda e: inserted_at.append(time.perf_counter()))
    ticks = []  # the Qt event loop keeps running while the file is read and the layer built
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    start = time.perf_counter()
    assert widget.import_file(source)
    assert widget.building and "reading 10k.geojson" in widget.status.text()
    qtbot.waitUntil(lambda: not widget.building, timeout=300_000)
    build_s = time.perf_counter() - start
    qtbot.wait(300)  # the first draw
    timer.stop()
    before = np.diff([t for t in ticks if t < inserted_at[0]])
    print(f"10k import: shown after {build_s:.2f} s; longest Qt gap {max(np.diff(ticks)):.2f} s, "
          f"{before.max():.2f} s before the layer was added")  # fmt: skip
    assert len(inserted) == 1  # one layer creation, not one add per shape
    layer = viewer.layers["annotations"]
    assert list(viewer.layers).count(layer) == 1 and len(viewer.layers) == 2  # old one replaced
    assert len(layer.data) == 10_000 and layer.features["id"][9_999] == anns[-1].id
    assert set(layer.shape_type) == {"polygon"}  # filled (compiled triangulation)
    assert "imported 10000" in widget.status.text() or "10000 annotations" in widget.status.text()
    # the event loop ran while the workers read and built (not so when built on the Qt thread)
    assert sum(start < tick < inserted_at[0] for tick in ticks) >= 10
    start = time.perf_counter()
    snap = widget.snapshot()
    print(f"10k shapes snapshot: {time.perf_counter() - start:.2f} s")
    assert [a.id for a in snap] == [a.id for a in anns]
    assert all(a is widget._cache[a.id] for a in snap)  # nothing moved: the same objects


def granularity_screenshots(viewer, widget, mask, mask_ds, out_dir) -> dict[str, Path]:
    """Screenshots of bbox, ellipse and pixel annotations derived from a tumor `mask`.

    `mask` is a 0/1 array at `mask_ds` level-0 px per pixel (origin 0, 0); the
    docs' PNGs are made by this function on a synthetic slide (see docs/annotations.md).
    """
    from napari_histo.annotations.model import mask_to_bbox, mask_to_ellipse

    out_dir = Path(out_dir)
    shots = {}
    viewer.window.resize(1400, 900)
    viewer.reset_view()
    for gran, derive in (("bbox", mask_to_bbox), ("ellipse", mask_to_ellipse)):
        anns = derive(mask, mask_ds, label="tumor", author="docs")
        widget.set_annotations(anns, background=False)
        widget.granularity.setCurrentText(gran)
        widget.activate()
        viewer.layers["annotations"].selected_data = set()
        widget.set_status(f"{len(anns)} {gran} annotations (derived from the tumor mask)")
        shots[gran] = out_dir / f"annotation_{gran}.png"
        viewer.screenshot(str(shots[gran]), canvas_only=False)
    widget.set_annotations([], background=False)
    rows, cols = np.nonzero(mask)
    r, c = rows.mean(), cols.mean()
    half = max(rows.max() - rows.min(), cols.max() - cols.min()) * 0.45 * mask_ds
    zoom_to(viewer, c * mask_ds - half, r * mask_ds - half, c * mask_ds + half, r * mask_ds + half)
    geometry = {"origin_l0": [0, 0], "downsample": float(mask_ds)}
    viewer.add_image(mask.astype(np.float32), name="tumor probability", visible=False,
                     metadata={"geometry": geometry})  # fmt: skip
    widget.model_output.setCurrentText("pixel crop")
    widget.granularity.setCurrentText("pixel")
    widget.from_model()
    crop = viewer.layers["pixel annotation crop"]
    crop.data[: crop.data.shape[0] // 5] = 0  # the annotator erases part and paints "ignore"
    crop.data[-crop.data.shape[0] // 6 :, : crop.data.shape[1] // 4] = 255
    crop.refresh()
    widget.set_status("pixel crop from the model: brush / fill / erase, then Commit crop")
    shots["pixel"] = out_dir / "annotation_pixel.png"
    viewer.screenshot(str(shots["pixel"]), canvas_only=False)
    return shots


def test_granularity_screenshots(make_napari_viewer, tmp_path, slide):
    viewer, widget = open_annotate(make_napari_viewer, slide)
    mask = np.zeros((125, 188), np.uint8)  # 1/16 of the 3000 x 2000 slide
    rr, cc = np.mgrid[:125, :188]
    mask[np.hypot(rr - 60, cc - 60) < 25] = 1
    mask[np.hypot((rr - 80) / 2, cc - 140) < 15] = 1
    shots = granularity_screenshots(viewer, widget, mask, 16, tmp_path)
    from skimage.io import imread

    for gran, path in shots.items():
        image = imread(path)
        assert image.shape[0] > 500 and image[..., :3].std() > 10, gran
    assert len(widget.annotations()) == 0 and widget.crop is not None
