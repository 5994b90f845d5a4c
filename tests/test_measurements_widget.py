"""The "Slide measurements" dock in real napari (under Xvfb), on a real engine run."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_histo.analysis.stored import measure_run
from napari_histo.frames import visible_region_l0
from napari_histo.io.annotations import read_annotations
from tests.test_report import make_run

pytest.importorskip("napari")


@pytest.fixture(scope="module")
def slide_run(tmp_path_factory):
    """``(slide_path, run)``: a synthetic slide whose store holds a complete tumor run."""
    return make_run(tmp_path_factory.mktemp("measure_dock"))


@pytest.fixture(scope="module")
def expected(slide_run):
    """What Measure should show: ``measure_run`` of the run at the default threshold."""
    slide_path, run_ = slide_run
    return measure_run(run_, slide_path)


def open_dock(make_napari_viewer, slide_path):
    from napari_histo.widgets.measurements import MeasurementsWidget

    viewer = make_napari_viewer(show=True)
    viewer.open(slide_path, plugin="napari-histo")
    widget = MeasurementsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Slide measurements")
    return viewer, widget


def measure_and_wait(qtbot, widget, timeout=60_000):
    widget.measure_button.click()
    qtbot.waitUntil(lambda: not widget.busy and widget.measurements is not None, timeout=timeout)


def table_rows(widget):
    table = widget.table
    return [
        [table.item(r, c).text() for c in range(table.columnCount())]
        for r in range(table.rowCount())
    ]


def test_measure_fills_the_table_and_jumps_to_a_lesion(
    make_napari_viewer, qtbot, slide_run, expected, tmp_path
):
    slide_path, run_ = slide_run
    viewer, widget = open_dock(make_napari_viewer, slide_path)
    assert widget.run is not None and widget.run.run_id == run_.run_id
    assert run_.run_id in widget.slide_label.text()
    measure_and_wait(qtbot, widget)
    assert widget.measurements.row() == pytest.approx(expected.row(), nan_ok=True)
    rows = table_rows(widget)
    assert len(rows) == len(expected.lesions)
    for row, lesion in zip(rows, expected.lesions, strict=True):
        assert row[0] == str(lesion.label) and row[3] == lesion.size_class
        assert float(row[1]) == pytest.approx(lesion.area_mm2, rel=5e-3)
    assert f"{len(expected.lesions)} lesion(s)" in widget.summary_label.text()
    if expected.lesions:
        widget.table.cellClicked.emit(0, 0)  # as a click on the first row
        x, y, w, h = expected.lesions[0].bbox_l0
        camera = viewer.scene.camera
        shown = visible_region_l0(
            camera.center, camera.zoom, viewer.canvas.size, 0.25, (2048, 2048)
        )
        assert shown[0] <= x and shown[1] <= y
        assert shown[0] + shown[2] >= x + w and shown[1] + shown[3] >= y + h
        assert shown[2] < 4 * max(w, h) or shown[3] < 4 * max(w, h)  # zoomed in on it
        assert widget.table.selectedItems()[0].row() == 0


def test_save_report_and_export_lesions(make_napari_viewer, qtbot, slide_run, expected, tmp_path):
    slide_path, _ = slide_run
    _, widget = open_dock(make_napari_viewer, slide_path)
    assert not widget.report_button.isEnabled()
    measure_and_wait(qtbot, widget)
    assert widget.report_button.isEnabled() and widget.geojson_button.isEnabled()
    geojson = widget.export_lesions(tmp_path / "lesions.geojson")
    assert len(read_annotations(geojson).annotations) == len(expected.lesions)
    report = tmp_path / "report.html"
    widget.save_report(report)
    qtbot.waitUntil(lambda: not widget.busy and report.exists(), timeout=60_000)
    assert f"wrote {report}" in widget.status_label.text()
    assert Path(slide_path).name in report.read_text(encoding="utf-8")
    widget.export_lesions(tmp_path / "missing" / "x.geojson")  # unwritable: one line, no raise
    assert str(tmp_path / "missing" / "x.geojson") in widget.status_label.text()


def test_one_line_without_slide_or_run(make_napari_viewer, tmp_path):
    from napari_histo.synthetic import write_synthetic_slide
    from napari_histo.widgets.measurements import MeasurementsWidget

    viewer = make_napari_viewer()
    widget = MeasurementsWidget(viewer)
    assert widget.slide_label.text() == "no slide: open one with the napari-histo reader"
    assert not widget.measure_button.isEnabled()
    path = write_synthetic_slide(tmp_path / "bare.svs", 1024, seed=3, workers=1).path
    viewer.open(path, plugin="napari-histo")
    assert widget.slide_label.text().startswith("bare.svs: no complete tumor run")
    widget.measure()
    assert widget.status_label.text().startswith("nothing to measure: bare.svs")
    widget.close()


def test_dock_is_a_napari_contribution(make_napari_viewer, slide_run):
    from napari_histo.widgets.measurements import MeasurementsWidget

    viewer = make_napari_viewer()
    viewer.open(slide_run[0], plugin="napari-histo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-histo", "Slide measurements")
    assert isinstance(widget, MeasurementsWidget) and widget.run is not None


def measurements_screenshot(viewer, widget, qtbot, path) -> Path:
    """The window after Measure: first lesion selected, lesion outlines shown (docs PNG)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    viewer.window.resize(1600, 950)
    widget.jump_to(0)
    viewer.scene.camera.zoom *= 0.6  # the lesion and its neighbours
    qtbot.wait(300)
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()  # warnings popped up by napari itself (Qt backend deprecation)
    qtbot.wait(300)
    viewer.screenshot(str(path), canvas_only=False)
    return Path(path)


def test_screenshot(make_napari_viewer, qtbot, slide_run, expected, tmp_path):
    from skimage.io import imread

    viewer, widget = open_dock(make_napari_viewer, slide_run[0])
    measure_and_wait(qtbot, widget)
    image = imread(measurements_screenshot(viewer, widget, qtbot, tmp_path / "m.png"))
    assert image.shape[0] > 500 and image[..., :3].std() > 10
    layer = viewer.layers["lesions"]
    assert len(layer.data) == len(widget.measurements.lesions)
    assert list(layer.features["lesion"]) == [les.label for les in widget.measurements.lesions]
