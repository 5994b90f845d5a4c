"""The "Review" dock in real napari (under Xvfb), on a real tiny run of a synthetic slide."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_histo.annotations.model import mask_to_polygons
from napari_histo.io.annotations import write_annotations
from napari_histo.io.annotations.autosave import autosave_path
from napari_histo.review import (
    region_annotations,
    review_state_path,
    run_calibration,
    run_error_map,
)
from napari_histo.synthetic import read_truth, truth_path_for, write_synthetic_slide
from tests.test_report import make_run

pytest.importorskip("napari")

WAIT_MS = 60_000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(slide_path, run)``: a 2048² synthetic slide and a complete run of the shipped models.

    Two real members (~10 s), so there is tumor above 0.5 to correct and to
    compare with annotations, and members that disagree somewhere. The user
    models folder (``$NAPARI_HISTO_MODELS``) is an empty one of the module's.
    """
    root = tmp_path_factory.mktemp("review_dock")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NAPARI_HISTO_MODELS", str(root / "models"))
        yield make_run(root)


@pytest.fixture
def fresh(tiny):
    """The slide with no saved review state and no annotations (removed after the test too)."""
    slide = tiny[0]
    leftovers = (review_state_path(slide), autosave_path(slide))

    def clean() -> None:
        for path in leftovers:
            for p in path.parent.glob(path.name + "*"):
                p.unlink()

    clean()
    yield tiny
    clean()


def annotations(slide):
    """The synthetic truth as annotations: tumor and non-tumor tissue outlines (pixel)."""
    truth = read_truth(truth_path_for(slide))
    tissue, tumor = np.asarray(truth.tissue[...]) > 0, np.asarray(truth.tumor[...]) > 0
    d = truth.downsample
    return mask_to_polygons(tumor, d, label="tumor") + mask_to_polygons(
        tissue & ~tumor, d, label="non-tumor"
    )


def open_dock(make_napari_viewer, slide_path, show=True):
    from napari_histo.widgets.review import ReviewWidget

    viewer = make_napari_viewer(show=show)
    if slide_path is not None:
        viewer.open(slide_path, plugin="napari-histo")
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Review")
    return viewer, widget


def wait(qtbot, widget, until=lambda: True):
    qtbot.waitUntil(lambda: not widget.busy and until(), timeout=WAIT_MS)


def rank(qtbot, widget, region_um=64):
    widget.region_spin.setValue(region_um)
    widget.rank_button.click()
    wait(qtbot, widget, lambda: widget.queue is not None)


def shown_l0(viewer):
    from napari_histo.frames import visible_region_l0

    camera = viewer.scene.camera
    return visible_region_l0(camera.center, camera.zoom, viewer.canvas.size, 0.25, (2048, 2048))


def test_no_slide_then_no_run_one_line_and_keys_undone(make_napari_viewer, tmp_path):
    from napari_histo.widgets.review import NO_SLIDE

    viewer, widget = open_dock(make_napari_viewer, None, show=False)
    assert widget.slide_label.text() == NO_SLIDE
    assert not widget.rank_button.isEnabled()
    widget.rank()
    assert widget.status_label.text() == "nothing to rank: " + NO_SLIDE
    bare = write_synthetic_slide(tmp_path / "bare.svs", 1024, seed=3, workers=1).path
    viewer.open(bare, plugin="napari-histo")
    assert widget.slide_label.text() == (
        "bare.svs: no complete tumor run; run Tumor inference first"
    )
    assert {k for k, _ in widget.viewer_keys} == {"n", "p", "a", "c", "s"}
    widget.close()
    assert widget.viewer_keys == []
    viewer.bind_key("n", lambda v: None)  # free again: no ValueError


def test_rank_keys_and_saved_state_round_trip(make_napari_viewer, qtbot, fresh):
    slide, run_ = fresh
    viewer, widget = open_dock(make_napari_viewer, slide)
    assert run_.run_id in widget.slide_label.text()
    rank(qtbot, widget)
    queue = widget.queue
    assert widget.region_list.count() == len(queue) > 3
    scores = [r.score for r in queue.regions]
    assert scores == sorted(scores, reverse=True)
    assert "undecided" in widget.region_list.item(0).text()
    qtbot.waitUntil(lambda: not widget.region_list.item(0).icon().isNull(), timeout=WAIT_MS)

    qtbot.keyClick(widget.region_list, "n")
    assert queue.index == 1 and widget.region_list.currentRow() == 1
    x, y, w, h = queue.current.rect_l0
    sx, sy, sw, sh = shown_l0(viewer)
    assert sx <= x and sy <= y and sx + sw >= x + w and sy + sh >= y + h
    assert sw < 4 * w or sh < 4 * h  # zoomed in on it
    outline = viewer.layers["review region"]
    assert len(outline.data) == 1
    qtbot.keyClick(widget.region_list, "a")
    assert queue.decision(queue.regions[1]).status == "accepted" and queue.index == 2
    assert "accepted" in widget.region_list.item(1).text()
    dict(widget.viewer_keys)["s"](viewer)  # the viewer's "s" binding
    assert queue.decision(queue.regions[2]).status == "skipped" and queue.index == 3
    qtbot.keyClick(widget.region_list, "p")
    qtbot.keyClick(widget.region_list, "u")
    assert queue.index == 2 and queue.decision() is None
    widget.skip()
    assert "1 accepted, 0 corrected, 1 skipped" in widget.counts_label.text()

    saved = json.loads(review_state_path(slide).read_text(encoding="utf-8"))
    assert saved["score"] == "uncertainty" and saved["index"] == 3
    assert {d["status"] for d in saved["decisions"]} == {"accepted", "skipped"}
    regions = list(queue.regions)
    widget.close()
    viewer.close()  # the slide is closed ...

    _, again = open_dock(make_napari_viewer, slide)  # ... and opened again: review restored
    wait(qtbot, again, lambda: again.queue is not None)
    assert again.region_spin.value() == 64
    assert [r.key for r in again.queue.regions] == [r.key for r in regions]
    assert again.queue.index == 3 and again.region_list.currentRow() == 3
    assert again.queue.decision(regions[1]).status == "accepted"
    assert again.queue.decision(regions[2]).status == "skipped"


def test_correct_adds_editable_annotations(make_napari_viewer, qtbot, fresh):
    from napari_histo.widgets.annotation import SHAPES_LAYER, AnnotationWidget

    slide, run_ = fresh
    viewer, widget = open_dock(make_napari_viewer, slide)
    widget.score_combo.setCurrentText("boundary")
    rank(qtbot, widget, region_um=128)
    expected = [region_annotations(run_, r.rect_l0, "bbox") for r in widget.queue.regions]
    row = next(i for i, found in enumerate(expected) if found)
    widget.go(row)
    widget.granularity.setCurrentText("bbox")
    qtbot.keyClick(widget.region_list, "c")
    annotate = widget.annotate_dock()
    assert isinstance(annotate, AnnotationWidget)
    added = annotate.annotations()
    assert len(added) == len(expected[row])
    assert {a.granularity for a in added} == {"bbox"} and {a.label for a in added} == {"tumor"}
    assert widget.queue.decision().status == "corrected" and widget.queue.index == row
    assert viewer.layers.selection.active is viewer.layers[SHAPES_LAYER]
    assert f"{len(added)} bbox annotation(s)" in widget.status_label.text()
    annotate.snapshot()
    annotate.autosaver.flush()
    assert autosave_path(slide).is_file()  # the Annotate dock's autosave keeps them
    widget.granularity.setCurrentText("ellipse")
    widget.correct()
    assert {a.granularity for a in annotate.annotations()} == {"bbox", "ellipse"}


def test_error_map_members_and_csv(make_napari_viewer, qtbot, fresh, tmp_path):
    from napari.layers import Labels

    slide, run_ = fresh
    viewer, widget = open_dock(make_napari_viewer, slide, show=False)
    widget.error_map()
    wait(qtbot, widget)
    assert widget.status_label.text().startswith("no annotations (s.svs.annotations.geojson)")
    widget.score_combo.setCurrentText("annotations")
    widget.rank()
    wait(qtbot, widget)
    assert widget.queue is None and widget.status_label.text().startswith("no annotations")
    write_annotations(autosave_path(slide), annotations(slide))
    rank(qtbot, widget)  # by |p - label| on the annotated pixels
    assert widget.queue.score == "annotations" and len(widget.queue) > 0
    widget.error_button.click()
    wait(qtbot, widget, lambda: widget.error_scores is not None)
    errors, scores, _ = run_error_map(run_, annotations(slide))
    layer = viewer.layers["review errors"]
    assert isinstance(layer, Labels) and np.array_equal(np.asarray(layer.data), errors)
    assert widget.error_scores == scores
    assert f"Dice {scores.dice:.3f}" in widget.scores_label.text()
    csv = widget.export_csv(tmp_path / "errors.csv")
    assert csv.read_text(encoding="utf-8").splitlines()[1].startswith("s.svs,")

    widget.members_button.click()
    wait(qtbot, widget, lambda: widget.disagreement is not None)
    assert widget.disagreement.names == tuple(
        f"{m['name']} {m['version']}" for m in run_.settings["models"]
    )
    assert len(widget.members_view.labels) == 2 * 3  # two members and the agreement
    agreement = viewer.layers["member agreement"]
    assert agreement.data.shape == widget.disagreement.agreement.shape


def test_calibration_figure_and_calibrated_versions(make_napari_viewer, qtbot, fresh, tmp_path):
    slide, run_ = fresh
    write_annotations(autosave_path(slide), annotations(slide))
    viewer, widget = open_dock(make_napari_viewer, slide, show=False)
    assert not widget.save_button.isEnabled()
    widget.calibrate_button.click()
    wait(qtbot, widget, lambda: widget.calibration is not None)
    expected = run_calibration(run_, annotations(slide))
    assert widget.calibration.temperature == pytest.approx(expected.temperature)
    axes = widget.reliability.figure.axes
    assert len(axes) == 1 and len(axes[0].lines) == 3
    assert f"ECE {expected.ece_before:.3f} → {expected.ece_after:.3f}" in widget.ece_label.text()
    assert widget.save_button.isEnabled()
    widget.save_calibrated(tmp_path / "calibrated")
    wait(qtbot, widget, lambda: widget.temperature is not None)
    assert len(list((tmp_path / "calibrated").glob("*.json"))) == 2
    assert widget.temperature == pytest.approx(expected.temperature)
    assert f"T = {expected.temperature:.2f}" in widget.slide_label.text()
    layer = next(lyr for lyr in viewer.layers if lyr.name.startswith("tumor probability (cal"))
    assert layer.multiscale and len(layer.data) == len(run_.levels("probability"))


def test_suggestions_respect_count(make_napari_viewer, qtbot, fresh):
    _, widget = open_dock(make_napari_viewer, fresh[0], show=False)
    rank(qtbot, widget)
    widget.distance_spin.setValue(0)
    for count in (3, 1):
        widget.count_spin.setValue(count)
        widget.suggest_button.click()
        assert len(widget.suggestions) == widget.suggest_list.count() == count
        assert len(widget.viewer.layers["annotate next"].data) == count
    assert widget.suggestions[0] == widget.queue.regions[0]
    widget.distance_spin.setValue(1e5)  # farther than the slide: only the best one
    widget.count_spin.setValue(5)
    assert len(widget.suggest()) == 1


def test_dock_is_a_napari_contribution(make_napari_viewer, fresh):
    from napari_histo.widgets.review import ReviewWidget

    viewer = make_napari_viewer()
    viewer.open(fresh[0], plugin="napari-histo")
    _, widget = viewer.window.add_plugin_dock_widget("napari-histo", "Review")
    assert isinstance(widget, ReviewWidget) and widget.run is not None


def review_screenshots(viewer, widget, qtbot, out_dir) -> tuple[Path, Path]:
    """``review.png`` (the dock beside the slide, current region outlined, its
    member disagreement) and ``reliability.png`` (the reliability diagram), for docs/."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    def shot(name: str) -> Path:
        qtbot.wait(400)
        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()  # warnings napari itself pops up (Qt backend deprecation)
        qtbot.wait(300)
        path = Path(out_dir) / name
        viewer.screenshot(str(path), canvas_only=False)
        return path

    viewer.window.resize(1600, 1000)
    qtbot.wait(300)
    widget.jump_to(widget.queue.current)  # the canvas changed size
    widget.tabs.setCurrentIndex(0)
    review = shot("review.png")
    widget.tabs.setCurrentIndex(2)
    qtbot.wait(300)
    reliability = Path(out_dir) / "reliability.png"
    assert widget.grab().save(str(reliability))  # the dock alone
    return review, reliability


def test_screenshots(make_napari_viewer, qtbot, fresh, tmp_path):
    from skimage.io import imread

    slide, _ = fresh
    write_annotations(autosave_path(slide), annotations(slide))
    viewer, widget = open_dock(make_napari_viewer, slide)
    rank(qtbot, widget, region_um=128)
    widget.calibrate()
    widget.go(1)
    widget.accept()  # region 2 accepted, on to region 3
    widget.go(1)
    widget.show_members()  # of region 2
    wait(qtbot, widget, lambda: widget.calibration is not None and widget.disagreement is not None)
    out = Path(os.environ.get("REVIEW_SCREENSHOTS_DIR", tmp_path))
    for path in review_screenshots(viewer, widget, qtbot, out):
        image = imread(path)
        assert image.shape[0] > 500 and image[..., :3].std() > 10
