"""The Tumor inference dock widget in real napari (under Xvfb)."""

from __future__ import annotations

import gc
import shutil
import threading
from dataclasses import replace

import numpy as np
import pytest

from napari_histo.frames import visible_region_l0
from napari_histo.live.controller import LiveSettings
from napari_histo.live.pyramid import outline_mask
from napari_histo.synthetic import read_truth, write_synthetic_slide

pytest.importorskip("napari")

OVERLAY_KEYS = ("probability", "aleatoric", "epistemic")
FAST = LiveSettings(members=("deeplabv3plus",), tta=1, mode="viewport")
# Slow enough (3 members x 8 TTA) that a job is still running when the test acts.
SLOW = LiveSettings(tta=8, batch_size=1, mode="viewport")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    return write_synthetic_slide(root / "s.svs", 4096, seed=2002, workers=1)


@pytest.fixture
def slide_copy(synth, tmp_path):
    """A private copy of the synthetic slide, so each test starts without results."""
    path = tmp_path / "s.svs"
    shutil.copy(synth.path, path)
    return path


@pytest.fixture(autouse=True)
def _config(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_HISTO_CONFIG", str(tmp_path / "config"))


def histo_threads():
    gc.collect()  # finalise engine generators other tests abandoned (their threads end then)
    return [t.name for t in threading.enumerate() if t.name.startswith("histo-")]


def open_with_widget(make_napari_viewer, path, settings):
    from napari_histo.widgets.inference import InferenceWidget

    viewer = make_napari_viewer(show=True)
    viewer.open(path, plugin="napari-histo")
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Tumor inference")
    widget.set_settings(settings)
    return viewer, widget


def wait_done(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_viewport_run_puts_probability_on_the_tumor(make_napari_viewer, qtbot, slide_copy, synth):
    from napari_histo.models.versions import set_active_version

    # Alignment is checked to one model pixel, which needs a model that segments the
    # synthetic tumor nearly exactly: the synthetic-only v1 (v2 is trained on real tissue).
    set_active_version("deeplabv3plus", "1.0")
    viewer, widget = open_with_widget(make_napari_viewer, slide_copy, FAST)
    viewer.reset_view()
    widget.run()
    wait_done(qtbot, widget)
    assert widget.last_result is not None and not widget.last_result.cancelled
    names = [layer.name for layer in viewer.layers]
    for name in ("tumor probability", "aleatoric uncertainty", "epistemic uncertainty"):
        assert name in names
    assert "tumor outline" in names
    prob = viewer.layers["tumor probability"]
    assert prob.contrast_limits == [0, 1] and prob.multiscale
    data = np.asarray(prob.data[0])
    assert data.dtype == np.float16 and 0 <= data.min() and data.max() <= 1  # display buffer
    assert not viewer.layers["aleatoric uncertainty"].visible

    # Compare with the truth in world coordinates: sample the overlay at the
    # world position of each truth pixel centre, through the layers' transforms.
    truth = read_truth(synth.truth_path)
    tumor = np.asarray(truth.tumor[...], bool)
    d = truth.downsample
    iy, ix = np.mgrid[0 : tumor.shape[0], 0 : tumor.shape[1]]
    slide_layer = viewer.layers[slide_copy.name]
    mpp = np.asarray(slide_layer.scale)
    world = (np.stack([iy, ix], -1) + 0.5) * d * mpp - 0.5 * mpp  # truth px centre (y, x) µm
    idx = np.round((world - np.asarray(prob.translate)) / np.asarray(prob.scale)).astype(int)
    idx = np.clip(idx, 0, np.array(data.shape) - 1)
    sampled = data[idx[..., 0], idx[..., 1]]
    assert sampled[tumor].mean() > 0.6
    assert sampled[~tumor].mean() < 0.2

    # Alignment within one model pixel: the centroid of the predicted tumor (in µm,
    # through the layer's scale/translate) lies within one model pixel of the truth's.
    model_px_um = float(np.asarray(prob.scale)[0])
    truth_centroid = world[tumor].mean(axis=0)
    jy, jx = np.nonzero(data >= 0.5)
    pred_centroid = np.asarray(prob.translate) + np.stack([jy, jx], -1) * np.asarray(prob.scale)
    offset = np.abs(pred_centroid.mean(axis=0) - truth_centroid)
    print("centroid offset µm", offset, "model px µm", model_px_um)
    assert np.all(offset < model_px_um), (offset, model_px_um)

    # Hover readout: value at the cursor.
    class Event:
        position = tuple(world[tumor][0])

    widget._on_mouse_move(viewer, Event())
    assert widget.readout.text().startswith("at cursor: prob")

    # Reopening the slide shows the stored results at once.
    widget.shutdown()
    viewer.layers.clear()
    viewer.open(slide_copy, plugin="napari-histo")
    from napari_histo.widgets.inference import InferenceWidget

    again = InferenceWidget(viewer)
    again.set_settings(FAST)
    stored = np.asarray(viewer.layers["tumor probability"].data[0])
    np.testing.assert_array_equal(stored.astype(np.float16), data)  # live buffers: float16
    # The view showed the whole slide, so the run is complete: its layers come lazily
    # from the store's display pyramid, one napari level per stored level, in µm.
    run_ = again.controller.existing_run()
    assert run_.complete and again.overlays.from_store
    for key in ("probability", "aleatoric", "epistemic", "outline"):
        layer = again.overlays.layer(key)
        assert layer.multiscale
        assert [tuple(s) for s in layer.level_shapes] == [
            a.shape for a in run_.levels("probability")
        ]
        assert layer.data[0].shape == data.shape
        np.testing.assert_allclose(layer.scale, prob.scale)
        np.testing.assert_allclose(layer.translate, prob.translate)
    levels = len(run_.levels("probability"))
    assert levels > 1
    np.testing.assert_allclose(
        viewer.layers["tumor probability"].downsample_factors[:, -2:],
        [[2**k, 2**k] for k in range(levels)],
    )
    outline = again.overlays.layer("outline")
    drawn = outline_mask(stored >= 0.5)  # stored outlines come drawn, as the live ones
    np.testing.assert_array_equal(np.asarray(outline.data[0]) != 0, drawn)
    again.shutdown()


def test_refresh_only_when_changed_cells_are_on_screen(make_napari_viewer, qtbot, slide_copy):
    """A finished cell rewrites its own pixels; layers re-slice only if it is in view."""
    from napari_histo.live.controller import CellUpdate
    from napari_histo.widgets.inference import REFRESH_DEFER_MAX_S, REFRESH_QUIET_S

    viewer, widget = open_with_widget(make_napari_viewer, slide_copy, FAST)
    mpp = viewer.layers[slide_copy.name].scale[0]
    camera = viewer.scene.camera
    camera.zoom = 4.0 / mpp / 8
    camera.center = (1000 * mpp, 1000 * mpp)
    widget.run()
    wait_done(qtbot, widget)
    overlays = widget.overlays
    prob = overlays.layer("probability")
    h, w = overlays.geometry.shape
    # napari keeps a multiscale layer's loaded region until the level changes or the
    # view leaves it: zoom out (coarser level) and back in to load just the view.
    zoom = camera.zoom
    camera.zoom = zoom / 8
    qtbot.wait(300)
    camera.zoom = zoom

    def part_loaded():
        y0, y1, x0, x1 = overlays.loaded_box(prob)
        return prob.loaded and y1 - y0 < h / 2 and x1 - x0 < w / 2

    qtbot.waitUntil(part_loaded, timeout=10_000)
    loaded = overlays.loaded_box(prob)
    events = []
    prob.events.reload.connect(lambda e: events.append("reload"))
    prob.events.set_data.connect(lambda e: events.append("set_data"))
    level0 = prob.data[0]
    before = level0.copy()
    cell = overlays.geometry.cell_px

    def write(y, x, value):
        rows, cols = slice(y, y + cell), slice(x, x + cell)
        values = {k: np.full((cell, cell), value, np.float32) for k in OVERLAY_KEYS}
        overlays.apply([CellUpdate(rows, cols, values)])
        return rows, cols

    # Off screen: the buffer changes there and only there, and no layer re-slices.
    rows, cols = write(h - cell, w - cell, 0.77)
    changed = level0 != before
    assert changed[rows, cols].all() and changed.sum() == cell * cell
    refreshed, skipped = overlays.refreshes, overlays.skipped
    widget._camera_moved_at -= REFRESH_QUIET_S  # the view has been still since
    widget._refresh_dirty()
    assert overlays.refreshes == refreshed and overlays.skipped > skipped and events == []
    # On screen: the visible layers re-slice (the hidden uncertainty layers do not)...
    write(loaded[0], loaded[2], 0.66)
    # ...not while the view moves (napari re-slices what a pan shows), unless that
    # has gone on for REFRESH_DEFER_MAX_S...
    widget._on_camera()
    widget._refresh_dirty()
    assert overlays.refreshes == refreshed and overlays.dirty
    widget._refresh_deferred_at -= REFRESH_DEFER_MAX_S
    widget._on_camera()
    widget._refresh_dirty()
    assert overlays.refreshes == refreshed + 2  # probability and outline
    assert widget._refresh_deferred_at is None
    # ...and at once when it is still.
    write(loaded[0], loaded[2], 0.55)
    widget._camera_moved_at -= REFRESH_QUIET_S
    widget._refresh_dirty()
    assert overlays.refreshes == refreshed + 4
    qtbot.waitUntil(lambda: len(events) > 0, timeout=5_000)
    widget.shutdown()


def test_progressive_preview_then_ensemble(make_napari_viewer, qtbot, slide_copy):
    settings = LiveSettings(members=("deeplabv3plus", "resunet"), tta=2, preview=True)
    viewer, widget = open_with_widget(make_napari_viewer, slide_copy, settings)
    mpp = viewer.layers[slide_copy.name].scale[0]
    camera = viewer.scene.camera
    camera.zoom = 4.0 / mpp / 8
    camera.center = (1500 * mpp, 1500 * mpp)
    prob = widget.overlays.layer("probability")
    assert prob.name == "tumor probability (ensemble ×2, TTA 2)"
    names = []
    prob.events.name.connect(lambda e: names.append(prob.name))
    widget.run()
    assert prob.name == "tumor probability (preview: deeplabv3plus, no TTA)"
    wait_done(qtbot, widget, timeout=120_000)
    assert not widget.last_result.cancelled
    assert names[0] == "tumor probability (preview: deeplabv3plus, no TTA)"
    assert names[-1] == prob.name == "tumor probability (ensemble ×2, TTA 2)"
    # What is shown in the end is the ensemble's result, not the preview's.
    controller = widget.controller
    _, full, _ = controller.load_existing(settings)
    _, fast, _ = controller.load_existing(controller.preview_settings(settings))
    shown = np.asarray(prob.data[0])
    np.testing.assert_array_equal(shown, full["probability"].astype(np.float16))
    computed = full["probability"] > 0
    fast_shown = fast["probability"].astype(np.float16)
    assert computed.any() and not np.array_equal(shown[computed], fast_shown[computed])
    assert np.asarray(widget.overlays.layer("aleatoric").data[0])[computed].max() > 0  # TTA 2
    widget.shutdown()


def test_cancel_stops_soon_and_resumes(make_napari_viewer, qtbot, slide_copy):
    viewer, widget = open_with_widget(make_napari_viewer, slide_copy, SLOW)
    viewer.reset_view()
    widget.run()
    with qtbot.waitSignal(widget.jobs.worker.yielded, timeout=30_000):
        pass
    widget.cancel()
    wait_done(qtbot, widget, timeout=15_000)
    result = widget.last_result
    assert result.cancelled and 0 < result.tiles_run < result.tiles_total
    assert "cancelled" in widget.status.text()
    assert result.run.status == "cancelled"  # resumable: the next run continues it
    assert histo_threads() == []


def test_follow_mode_drops_stale_work(make_napari_viewer, qtbot, slide_copy):
    viewer, widget = open_with_widget(
        make_napari_viewer, slide_copy, LiveSettings(tta=8, batch_size=1, mode="follow")
    )
    mpp = viewer.layers[slide_copy.name].scale[0]
    camera = viewer.scene.camera
    camera.zoom = 4.0 / mpp / 8  # 1 screen px = 2 level-0 px: a small part of the slide
    camera.center = (1200 * mpp, 1200 * mpp)
    qtbot.waitUntil(lambda: widget.running, timeout=5_000)  # debounced start
    first_region, first_cancel = widget._job_region, widget.jobs.cancel_event
    assert first_region[0] < 1200 < first_region[0] + first_region[2]
    started = widget._jobs_started
    camera.center = (3000 * mpp, 3000 * mpp)  # pan away
    qtbot.waitUntil(lambda: widget._jobs_started > started, timeout=5_000)
    assert first_cancel.is_set()  # the stale job was told to stop
    region = widget._job_region
    assert region[0] < 3000 < region[0] + region[2] and region != first_region
    expected = visible_region_l0(camera.center, camera.zoom, viewer.canvas.size, mpp, (4096, 4096))
    assert region == expected
    # Zoomed far out: no new job, a hint instead.
    viewer.reset_view()
    qtbot.waitUntil(lambda: "zoom in" in widget.status.text(), timeout=5_000)
    widget.cancel()
    wait_done(qtbot, widget, timeout=15_000)
    widget.shutdown()  # joins the stale job too
    assert histo_threads() == []


def test_closing_viewer_mid_run_leaves_no_threads(make_napari_viewer, qtbot, slide_copy):
    viewer, widget = open_with_widget(make_napari_viewer, slide_copy, SLOW)
    viewer.reset_view()
    widget.run()
    with qtbot.waitSignal(widget.jobs.worker.yielded, timeout=30_000):
        pass
    assert widget.running
    viewer.close()
    assert not widget.running  # shutdown joined the job on close
    assert histo_threads() == []


def test_settings_persist_across_widgets(make_napari_viewer, slide_copy):
    from napari_histo.live.controller import load_settings
    from napari_histo.widgets.inference import InferenceWidget

    viewer, widget = open_with_widget(
        make_napari_viewer, slide_copy, LiveSettings(tta=4, overlap=0.25, mode="whole slide")
    )
    assert load_settings().tta == 4
    widget.shutdown()
    other = InferenceWidget(viewer)
    assert other.settings().tta == 4 and other.settings().mode == "whole slide"
    assert other.settings().overlap == 0.25
    other.shutdown()


def test_large_result_keeps_bounded_float16_buffers(make_napari_viewer):
    """A 100k-px slide's whole-slide result (12500 px square): capped, coarser buffers."""
    from napari_histo.frames import overlay_transform
    from napari_histo.io.store import ResultGeometry
    from napari_histo.live.controller import CellUpdate
    from napari_histo.widgets._overlays import OverlayLayers

    viewer = make_napari_viewer()
    overlays = OverlayLayers(viewer, (0.25, 0.25))
    g = ResultGeometry(origin_l0=(0, 0), downsample=8.0, shape=(12500, 12500), cell_px=128, mpp=2.0)
    overlays.ensure(g, reset=True)
    assert overlays.base == 2 and overlays.nbytes <= 100 * 2**20  # full float32: ~2.6 GB
    prob = overlays.layer("probability")
    assert prob.multiscale and prob.data[0].shape == (3125, 3125)
    assert prob.data[0].dtype == np.float16 and prob.contrast_limits == [0, 1]
    scale, translate = overlay_transform(g, (0.25, 0.25))
    np.testing.assert_allclose(prob.scale, np.asarray(scale) * 4)
    # A coarse pixel sits on the centre of the 4 x 4 level-0 pixels it averages.
    np.testing.assert_allclose(prob.translate, np.asarray(translate) + 1.5 * np.asarray(scale))
    values = {k: np.full((128, 128), 0.75, np.float32) for k in OVERLAY_KEYS}
    overlays.apply([CellUpdate(slice(256, 384), slice(512, 640), values)])
    assert overlays.dirty["probability"] == (256, 384, 512, 640)
    level = np.asarray(prob.data[0], np.float32)
    assert level[64:96, 128:160].min() == 0.75 and level.sum() == 0.75 * 32 * 32
    drawn = np.asarray(overlays.layer("outline").data[0])  # a 2-px band inside the square
    assert drawn[64:66, 128:160].all() and drawn[94:96, 128:160].all()
    assert not drawn[66:94, 130:158].any() and drawn.sum() == 32 * 32 - 28 * 28
    world = np.asarray(translate) + np.array([300, 600]) * np.asarray(scale)
    assert overlays.readout(tuple(world)).startswith("at cursor: prob 0.750")


def test_opening_a_slide_compares_its_staining_with_the_training_data(make_napari_viewer, qtbot):
    """The real CMU slide against the default models' stain reference (napari_histo.ood)."""
    from pathlib import Path

    from napari_histo.widgets.inference import InferenceWidget

    viewer = make_napari_viewer(show=True)
    widget = InferenceWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Tumor inference")
    viewer.open(Path(__file__).parent / "data" / "cmu_small_region.svs", plugin="napari-histo")
    qtbot.waitUntil(lambda: "checking" not in widget.ood_label.text(), timeout=30_000)
    text = widget.ood_label.text()
    assert text.startswith(("Slide vs training data", "Warning")), text
    assert "not compared" not in text, text


def test_jobs_run_in_a_worker_whose_crash_the_viewer_survives(
    make_napari_viewer, qtbot, slide_copy
):
    import os
    import signal

    from napari_histo.io.store import DONE_FLUSH_S

    settings = LiveSettings(members=("deeplabv3plus",), tta=8, mode="whole slide")
    viewer, widget = open_with_widget(make_napari_viewer, slide_copy, settings)
    widget.run()
    qtbot.waitUntil(lambda: widget.worker_pid is not None, timeout=60_000)
    pid = widget.worker_pid
    assert pid != os.getpid()
    # Half the tiles, then past the store's done-mask flush: whole chunks are on disk.
    bar = widget.progress_bar
    half_done = lambda: bar.maximum() > 1 and bar.value() >= bar.maximum() // 2  # noqa: E731
    qtbot.waitUntil(half_done, timeout=120_000)
    qtbot.wait(int((DONE_FLUSH_S + 0.5) * 1000))
    assert widget.busy
    layers_before = [layer.name for layer in viewer.layers]
    os.kill(pid, signal.SIGKILL)
    wait_done(qtbot, widget)
    status = widget.status.text()
    assert "killed by signal 9" in status and "\n" not in status
    assert [layer.name for layer in viewer.layers] == layers_before  # nothing lost
    widget.run()  # a fresh worker resumes from the store
    wait_done(qtbot, widget, timeout=120_000)
    result = widget.last_result
    assert not result.cancelled and result.run.complete
    assert 0 < result.tiles_run < result.tiles_total
    second = widget.worker_pid
    assert second not in (None, pid)
    widget.shutdown()
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)


def test_worker_process_off_in_the_settings_file_runs_jobs_in_the_viewer(
    make_napari_viewer, qtbot, slide_copy
):
    from napari_histo.live.controller import load_settings, save_settings

    save_settings(replace(FAST, worker_process=False))
    viewer, widget = open_with_widget(make_napari_viewer, slide_copy, load_settings())
    viewer.reset_view()
    widget.run()
    wait_done(qtbot, widget)
    assert widget.last_result is not None and widget.last_result.tiles_run > 0
    assert widget.worker_pid is None  # no worker was started
    assert load_settings().worker_process is False  # and the choice was kept
