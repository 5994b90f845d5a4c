"""The Retrain dock widget in real napari (under Xvfb): fine-tune, cancel, versions, compare."""

from __future__ import annotations

import json
import os
import threading

import pytest

from napari_histo.io.annotations import write_geojson
from napari_histo.io.annotations.autosave import autosave_path

pytest.importorskip("napari")


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """A 2048 px synthetic slide with truth annotations in its autosave file, and a weak model."""
    from napari_histo.bench.train import TARGET_SEED, _slide, truth_annotations, weak_model

    root = tmp_path_factory.mktemp("retrain")
    slide = _slide(root, TARGET_SEED, 2048)
    write_geojson(autosave_path(slide), truth_annotations(slide))
    card = weak_model(slide, root / "parent", steps=3, width=4)
    return slide, card


@pytest.fixture
def models(tmp_path, monkeypatch, annotated):
    """User models dir (holding weak-1.0) and config dir, both private to the test."""
    import shutil

    _, card = annotated
    directory = tmp_path / "models"
    directory.mkdir()
    for path in card.parent.iterdir():
        shutil.copy(path, directory / path.name)
    monkeypatch.setenv("NAPARI_HISTO_MODELS", str(directory))
    monkeypatch.setenv("NAPARI_HISTO_CONFIG", str(tmp_path / "config"))
    return directory


def _widget(make_napari_viewer, slide, steps):
    from napari_histo.widgets.training import RetrainWidget

    viewer = make_napari_viewer(show=True)
    viewer.open(slide, plugin="napari-histo")
    widget = RetrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Retrain")
    for name, box in widget.member_boxes.items():
        box.setChecked(name == "weak")
    widget.steps_spin.setValue(steps)
    return viewer, widget


def _wait(qtbot, widget, timeout):
    """Until the widget's job has ended and its handlers ran (buttons re-enabled)."""
    qtbot.waitUntil(lambda: not widget.running and widget.run_button.isEnabled(), timeout=timeout)


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_retrain_new_version_loss_plot_and_compare(make_napari_viewer, qtbot, annotated, models):
    slide, _ = annotated
    viewer, widget = _widget(make_napari_viewer, slide, steps=4)
    assert widget.slide_combo.currentText() and "weak" in widget.member_boxes
    widget.run()
    _wait(qtbot, widget, 120_000)
    assert widget.last_cards and widget.last_cards[0].name == "weak-1.1.json", widget.status.text()
    assert (models / "weak-1.1.safetensors").is_file()
    assert len(widget.plot.losses["weak"]) == 4  # one loss point per step, painted
    widget.plot.repaint()
    assert "held-out Dice" in widget.status.text() and "1.0 → 1.1" in widget.status.text()
    # The new version is active for the inference widget, and can be switched back.
    from napari_histo.live.controller import LiveController, LiveSettings
    from napari_histo.models.versions import active_cards, versions_path

    assert active_cards()["weak"].name == "weak-1.1.json"
    combo = widget.version_combos["weak"]
    assert combo.currentData() == "1.1"
    combo.setCurrentIndex(combo.findData("1.0"))
    assert json.loads(versions_path().read_text())["weak"] == "1.0"
    controller = LiveController(slide, LiveSettings(members=("weak",)))
    assert controller.available_members()["weak"].name == "weak-1.0.json"
    combo.setCurrentIndex(combo.findData("1.1"))
    # Before / after on the visible region: two probability layers side by side.
    viewer.scene.camera.center = (0, 256, 256)
    viewer.scene.camera.zoom = 1.0
    widget.compare()
    _wait(qtbot, widget, 120_000)
    names = [layer.name for layer in viewer.layers]
    assert "tumor probability (1.0)" in names and "tumor probability (1.1)" in names, names
    left, right = viewer.layers["tumor probability (1.0)"], viewer.layers["tumor probability (1.1)"]
    assert right.translate[1] > left.translate[1] + left.data.shape[1] * left.scale[1]
    assert left.data.shape == right.data.shape and 0 <= left.data.min() <= left.data.max() <= 1


def test_bad_input_goes_to_status_line(make_napari_viewer, qtbot, annotated, models):
    slide, _ = annotated
    _, widget = _widget(make_napari_viewer, slide, steps=2)
    widget.file_edit.setText(str(slide.parent / "missing.geojson"))
    widget.run()
    assert widget.status.text().startswith("error: ") and "missing.geojson" in widget.status.text()
    only_tumor = slide.parent / "tumor_only.geojson"
    from napari_histo.io.annotations import read_geojson

    anns = read_geojson(autosave_path(slide)).annotations
    write_geojson(only_tumor, [a for a in anns if a.label == "tumor"])
    widget.file_edit.setText(str(only_tumor))
    widget.run()
    _wait(qtbot, widget, 60_000)
    assert "both tumor and non-tumor" in widget.status.text()
    assert "\n" not in widget.status.text() and _files(models) == [
        "weak-1.0.json",
        "weak-1.0.safetensors",
    ]


def test_cancel_writes_no_version(make_napari_viewer, qtbot, annotated, models):
    slide, _ = annotated
    _, widget = _widget(make_napari_viewer, slide, steps=500)
    before = _files(models)
    widget.run()
    with qtbot.waitSignal(widget.jobs.worker.yielded, timeout=60_000):
        pass
    with qtbot.waitSignal(widget.jobs.worker.finished, timeout=60_000):
        widget.cancel_button.click()
    # The result may reach the Qt thread just after `finished` (PyQt6 delivers so).
    qtbot.waitUntil(lambda: "cancelled" in widget.status.text(), timeout=5000)
    assert widget.last_cards == [] and _files(models) == before
    assert widget.run_button.isEnabled()


def test_closing_viewer_mid_run_joins_threads(make_napari_viewer, qtbot, annotated, models):
    slide, _ = annotated
    viewer, widget = _widget(make_napari_viewer, slide, steps=500)
    before = _files(models)
    widget.run()
    with qtbot.waitSignal(widget.jobs.worker.yielded, timeout=60_000):
        pass
    assert widget.running
    pid = widget.worker_pid  # fine-tuning runs in the dock's worker process
    assert pid is not None and pid != os.getpid()
    threads = set(threading.enumerate())
    viewer.close()
    assert not widget.running  # shutdown joined the training thread on close
    assert widget.worker_pid is None and not os.path.exists(f"/proc/{pid}/status")
    qtbot.waitUntil(lambda: widget.jobs.worker is None, timeout=5000)
    assert _files(models) == before
    assert all(not t.is_alive() for t in threads - set(threading.enumerate()))


def test_shapes_layer_to_level0_annotations():
    import numpy as np
    from napari.layers import Shapes

    from napari_histo.widgets.training import shapes_to_annotations

    # World µm (y, x); the slide is at 0.25 µm/px, so level-0 x = world_x / 0.25 + 0.5.
    boxes = [np.array([[10, 20], [10, 60], [30, 60], [30, 20]], float)] * 2
    layer = Shapes(boxes, shape_type="rectangle", features={"label": ["tumor", "non-tumor"]})
    anns = shapes_to_annotations(layer, (0.25, 0.25))
    assert [a.label for a in anns] == ["tumor", "non-tumor"]
    x0, y0, x1, y1 = anns[0].bounds
    assert (x0, y0, x1, y1) == pytest.approx((80.5, 40.5, 240.5, 120.5))
