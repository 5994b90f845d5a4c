"""The Qt-free live-inference core: view geometry, placement, debounce, settings, jobs."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading

import numpy as np
import pytest

from napari_histo.frames import overlay_transform, visible_region_l0
from napari_histo.io.store import ResultGeometry
from napari_histo.live.controller import (
    Debouncer,
    LiveController,
    LiveSettings,
    cell_updates,
    follow_action,
    load_settings,
    save_settings,
    settings_path,
)
from napari_histo.synthetic import write_synthetic_slide


# -- visible region ----------------------------------------------------------
def test_visible_region_centre_of_view():
    # 200 x 100 screen px at 1 px/µm around (500, 500) µm, mpp 0.5: x 400..600 µm is
    # level-0 800.5..1200.5 (pixel k's centre is at k * mpp): pixels 800..1200 are visible.
    region = visible_region_l0((500.0, 500.0), 1.0, (100, 200), 0.5, (4000, 4000))
    assert region == (800, 900, 401, 201)


def test_visible_region_uses_last_two_centre_entries_and_anisotropic_mpp():
    region = visible_region_l0((0.0, 100.0, 200.0), 2.0, (40, 80), (0.25, 0.5), (10_000, 10_000))
    # half-extent: 10 µm (y), 20 µm (x); y: (90..110)/0.25, x: (180..220)/0.5, + 0.5 px shift
    assert region == (360, 360, 81, 81)


def test_visible_region_clipped_and_none_off_slide():
    assert visible_region_l0((0.0, 0.0), 1.0, (100, 100), 1.0, (1000, 500)) == (0, 0, 51, 51)
    whole = visible_region_l0((250.0, 500.0), 0.01, (100, 100), 1.0, (1000, 500))
    assert whole == (0, 0, 1000, 500)
    assert visible_region_l0((-500.0, -500.0), 1.0, (100, 100), 1.0, (1000, 500)) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"zoom": 0}, "`zoom` must be > 0"),
        ({"mpp": -0.5}, r"`mpp` must be > 0, got -0.5"),
        ({"mpp": (1, 2, 3)}, "`mpp` must be a number or a"),
    ],
)
def test_visible_region_rejects_bad_input(kwargs, match):
    args = {
        "camera_center_um": (0, 0),
        "zoom": 1.0,
        "canvas_size_px": (10, 10),
        "mpp": 1.0,
        "slide_dims": (100, 100),
    }
    with pytest.raises(ValueError, match=match):
        visible_region_l0(**{**args, **kwargs})


# -- overlay placement ------------------------------------------------------
def test_overlay_transform_puts_result_pixel_centres_on_their_level0_centres():
    g = ResultGeometry(origin_l0=(16, 32), downsample=8.0, shape=(10, 10), cell_px=4, mpp=2.0)
    scale, translate = overlay_transform(g, (0.25, 0.5))
    assert scale == (2.0, 4.0)
    for j in (0, 3, 9):
        # result px j spans level-0 [o + 8j, o + 8j + 8): its centre is o + 8j + 4 (continuous),
        # which napari shows where the slide layer shows level-0 coordinate u: (u - 0.5) * mpp.
        u_y, u_x = 32 + 8 * j + 4, 16 + 8 * j + 4
        assert translate[0] + j * scale[0] == pytest.approx((u_y - 0.5) * 0.25)
        assert translate[1] + j * scale[1] == pytest.approx((u_x - 0.5) * 0.5)


def test_cell_updates_slices():
    g = ResultGeometry(origin_l0=(0, 0), downsample=8.0, shape=(10, 7), cell_px=4, mpp=2.0)
    values = {
        k: np.full((4, 4), i, np.float32)
        for i, k in enumerate(("probability", "aleatoric", "epistemic", "entropy"))
    }
    (update,) = cell_updates(g, [(2, 1, values)])
    assert (update.rows, update.cols) == (slice(8, 10), slice(4, 7))
    assert update.values["probability"].shape == (2, 3)
    assert set(update.values) == {"probability", "aleatoric", "epistemic"}


# -- follow mode ---------------------------------------------------------------
def test_debouncer_reports_latest_value_once_after_quiet():
    d = Debouncer(0.3)
    assert d.poll(0.0) is None and not d.pending and d.remaining(0.0) is None
    d.poke((1, 1, 1, 1), 0.0)
    d.poke((2, 2, 2, 2), 0.25)
    assert d.pending and d.remaining(0.3) == pytest.approx(0.25)
    assert d.poll(0.5) is None
    assert d.poll(0.55) == (2, 2, 2, 2)
    assert d.poll(10.0) is None
    d.poke("x", 11.0)
    d.clear()
    assert d.poll(20.0) is None
    with pytest.raises(ValueError, match="`delay_s` must be >= 0"):
        Debouncer(-1)


def test_follow_action():
    dims = (10_000, 10_000)
    assert follow_action(None, None, dims) == "none"
    assert follow_action((0, 0, 6000, 6000), None, dims) == "too_wide"
    assert follow_action((0, 0, 1000, 1000), None, dims) == "restart"
    assert follow_action((100, 100, 500, 500), (0, 0, 1000, 1000), dims) == "keep"
    assert follow_action((800, 800, 500, 500), (0, 0, 1000, 1000), dims) == "restart"


# -- settings ------------------------------------------------------------------
def test_settings_round_trip_and_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_HISTO_CONFIG", str(tmp_path / "cfg"))
    assert settings_path() == tmp_path / "cfg" / "live.json"
    assert load_settings() == LiveSettings()  # no file yet
    s = LiveSettings(members=("resunet",), tta=4, overlap=0.25, mode="follow", threshold=0.4)
    path = save_settings(s)
    assert path == settings_path() and load_settings() == s
    assert json.loads(path.read_text())["members"] == ["resunet"]
    assert [p.name for p in path.parent.iterdir()] == ["live.json"]  # no temp files left


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", '{"tta": 3}', '{"mode": "sideways"}', "\xff\xfe"]
)
def test_corrupt_settings_give_defaults_and_a_warning(tmp_path, text):
    path = tmp_path / "live.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.warns(UserWarning, match="ignoring unreadable napari-histo settings"):
        assert load_settings(path) == LiveSettings()


def test_settings_validation_and_unknown_keys():
    assert LiveSettings.from_dict({"tta": 2, "future_option": 1}).tta == 2
    with pytest.raises(ValueError, match="`overlap` must be in"):
        LiveSettings(overlap=0.95)
    with pytest.raises(ValueError, match="`threshold` must be in"):
        LiveSettings(threshold=1.0)
    config = LiveSettings(tta=2, batch_size=0, device="cpu").engine_config()
    assert (config.tta, config.batch_size, config.device) == (2, None, "cpu")


def test_core_imports_no_qt():
    code = (
        "import sys, napari_histo.live.controller, napari_histo.live.pyramid, "
        "napari_histo.live.settings, napari_histo.live.threads; "
        "print(any(m.startswith(('qtpy', 'PyQt', 'napari.', 'vispy')) for m in sys.modules))"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- jobs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("live_core")
    return write_synthetic_slide(root / "s.svs", 4096, seed=2003, workers=1).path


def test_viewport_job_then_existing_results(slide, tmp_path):
    settings = LiveSettings(members=("deeplabv3plus",))
    controller = LiveController(slide, settings, out_dir=tmp_path)
    geometry = controller.expected_geometry()
    assert controller.existing_run() is None and controller.load_existing() is None
    canvas = np.zeros(geometry.shape, np.float32)
    job = controller.job(within=(0, 0, 1024, 1024), centre=(512, 512))
    updates = []
    while True:
        try:
            update = next(job)
        except StopIteration as stop:
            result = stop.value
            break
        updates.append(update)
        for cell in update.cells:
            canvas[cell.rows, cell.cols] = cell.values["probability"]
    assert result.geometry == geometry and not result.cancelled
    assert updates and all(u.stage == "full" for u in updates)
    assert canvas[:128, :128].max() > 0  # the viewport's cells arrived
    # The first batch finishes the cell under the view's centre: a result after one batch.
    scale = geometry.shape[0] / controller.slide_dims[1]  # result px per level-0 px
    centre = (int(512 * scale), int(512 * scale))
    assert any(
        c.rows.start <= centre[0] < c.rows.stop and c.cols.start <= centre[1] < c.cols.stop
        for c in updates[0].cells
    )
    loaded_geometry, arrays, complete = controller.load_existing()
    assert loaded_geometry == geometry and not complete
    np.testing.assert_array_equal(arrays["probability"][:128, :128], canvas[:128, :128])


def test_warm_up_writes_nothing_and_keeps_the_members(slide, tmp_path):
    controller = LiveController(slide, LiveSettings(members=("resunet",)), out_dir=tmp_path)
    controller.warm_up()
    assert list(tmp_path.iterdir()) == []  # no store, no run: only the models ran
    (member,) = controller.load_members()
    assert not member.model.training
    controller.warm_up()  # again: the same loaded model
    assert controller.load_members()[0] is member


def test_preview_stage_runs_first_and_cancel_stops(slide, tmp_path):
    settings = LiveSettings(members=("deeplabv3plus", "resunet"), preview=True)
    controller = LiveController(slide, settings, out_dir=tmp_path)
    cancel = threading.Event()
    job = controller.job(within=(0, 0, 1024, 1024), cancel=cancel)
    assert next(job).stage == "preview"
    stages = [u.stage for u in job]
    assert stages[-1] == "full" and "full" in stages
    cancel.set()
    job = controller.job(cancel=cancel)  # cancelled before the first batch
    assert list(job) == []


# -- overlay pyramids ------------------------------------------------------------
def test_pyramid_levels_match_the_store_display_pyramid(tmp_path):
    from napari_histo.io.store import ResultStore
    from napari_histo.live.pyramid import OverlayPyramid, level_shapes

    g = ResultGeometry(origin_l0=(0, 0), downsample=8.0, shape=(700, 1100), cell_px=100, mpp=2.0)
    run_ = ResultStore(tmp_path / "s.zarr", {"name": "s"}).create_or_resume({"a": 1}, g)
    rng = np.random.default_rng(0)
    full = rng.random(g.shape, dtype=np.float32)
    pyramid = OverlayPyramid(g.shape)
    for row in range(g.cell_shape[0]):
        for col in range(g.cell_shape[1]):
            y0, y1, x0, x1 = g.cell_bounds(row, col)
            values = {k: full[y0:y1, x0:x1] for k in ("probability", "aleatoric", "epistemic")}
            run_.write_cell(row, col, {**values, "entropy": values["probability"]})
            pyramid.write(slice(y0, y1), slice(x0, x1), full[y0:y1, x0:x1])
    run_.finish()
    stored = run_.levels("probability")
    assert [a.shape for a in stored] == level_shapes(g.shape) == [lv.shape for lv in pyramid.levels]
    for mine, theirs in zip(pyramid.levels, stored, strict=True):
        np.testing.assert_allclose(mine, theirs[...], rtol=1e-6)


def test_pyramid_write_rewrites_only_the_changed_region():
    from napari_histo.live.pyramid import OverlayPyramid, level_box

    pyramid = OverlayPyramid((512, 768), min_px=64)
    shapes = [(512, 768), (256, 384), (128, 192), (64, 96), (32, 48)]
    assert [lv.shape for lv in pyramid.levels] == shapes
    # Sentinels everywhere (deliberately not a consistent pyramid): whatever a write
    # does not touch keeps its sentinel.
    for lv in pyramid.levels:
        lv[...] = np.nan
    values = np.full((40, 24), 0.5, np.float32)
    box = pyramid.write(slice(100, 140), slice(201, 225), values)
    assert box == (100, 140, 201, 225)
    for k, lv in enumerate(pyramid.levels):
        y0, y1, x0, x1 = level_box(box, k, lv.shape)
        touched = np.zeros(lv.shape, bool)
        touched[y0:y1, x0:x1] = True
        assert np.isnan(lv[~touched]).all(), k  # nothing outside the box was rewritten
        if k == 0:
            assert (lv[touched] == 0.5).all()
    # Where the box covers whole 2 x 2 blocks the coarser levels are exact means.
    assert pyramid.levels[1][50:70, 101:112].min() == pytest.approx(0.5)


def test_outline_levels_within_a_box_match_napari_contours():
    from napari.layers.labels._labels_utils import get_contours

    from napari_histo.live.pyramid import OverlayPyramid, outline_levels

    prob = OverlayPyramid((64, 64), min_px=16)
    prob.write(slice(0, 32), slice(0, 32), np.full((32, 32), 0.9, np.float32))
    out = [np.full(lv.shape, 7, np.uint8) for lv in prob.levels]
    outline_levels(out, prob.levels, 0.5, (0, 32, 0, 32))
    # Level 0: a 2-px band inside the square's edges; the array's border is no edge.
    assert (out[0][:30, :30] == 0).all() and (out[0][30:32, :32] == 1).all()
    assert (out[0][:32, 30:32] == 1).all() and (out[0][34:] == 7).all()
    assert (out[2][:6, :6] == 0).all() and (out[2][6:8, :8] == 1).all()
    # Drawn as napari drew contour=2 on each level's thresholded probability.
    prob.write(slice(40, 60), slice(10, 50), np.full((20, 40), 0.7, np.float32))
    outline_levels(out, prob.levels, 0.5, None)
    for got, level in zip(out, prob.levels, strict=True):
        want = get_contours((level >= 0.5).astype(np.uint8), 2, 0)
        np.testing.assert_array_equal(got != 0, want != 0)
    outline_levels(out, prob.levels, 0.95, None)
    assert all(lv.max() == 0 for lv in out)


def test_stored_runs_outline_lazily_as_the_live_buffers_do():
    import dask.array as da
    from scipy import ndimage as ndi

    from napari_histo.live.pyramid import outline_mask
    from napari_histo.widgets._overlays import _lazy_outline

    noise = ndi.gaussian_filter(np.random.default_rng(0).random((300, 500)), 5)
    prob = ((noise - noise.min()) / np.ptp(noise)).astype(np.float32)
    lazy = _lazy_outline(da.from_array(prob, chunks=64), 0.5)  # chunk seams inside
    want = outline_mask(prob >= 0.5).astype(np.uint8)
    assert want.sum() > 1000
    np.testing.assert_array_equal(lazy.compute(), want)
    # The coarsest level of a very elongated run can be 1 px thin.
    thin = prob[:, :1]
    np.testing.assert_array_equal(
        _lazy_outline(da.from_array(thin), 0.5).compute(), outline_mask(thin >= 0.5)
    )


def test_outline_updates_of_boxes_equal_one_whole_redraw():
    from napari_histo.live.pyramid import OverlayPyramid, outline_levels

    rng = np.random.default_rng(3)
    prob = OverlayPyramid((256, 256), min_px=32)
    boxed = [np.zeros(lv.shape, np.uint8) for lv in prob.levels]
    for y in range(0, 256, 64):  # cells finishing one by one, as in a run
        for x in range(0, 256, 64):
            values = rng.random((64, 64)).astype(np.float32)
            box = prob.write(slice(y, y + 64), slice(x, x + 64), values)
            outline_levels(boxed, prob.levels, 0.5, box)
    whole = [np.zeros(lv.shape, np.uint8) for lv in prob.levels]
    outline_levels(whole, prob.levels, 0.5, None)
    for a, b in zip(boxed, whole, strict=True):
        np.testing.assert_array_equal(a, b)


# -- progressive refinement and job threads -----------------------------------------
def test_stage_labels_and_preview_settings(slide, tmp_path):
    from napari_histo.live.controller import stage_label

    assert stage_label("preview", ["resunet"], 1) == "preview: resunet, no TTA"
    assert stage_label("full", ["a", "b", "c"], 4) == "ensemble ×3, TTA 4"
    assert stage_label("full", ["a"], 2) == "a, TTA 2"
    controller = LiveController(slide, out_dir=tmp_path)
    both = LiveSettings(members=("resunet", "deeplabv3plus"), tta=4, preview=True)
    fast = controller.preview_settings(both)
    assert fast.members == ("deeplabv3plus",) and fast.tta == 1 and not fast.preview
    fast = controller.preview_settings(LiveSettings(members=("resunet",), tta=2, preview=True))
    assert fast.members == ("resunet",) and fast.tta == 1
    assert controller.preview_settings(LiveSettings(members=("resunet",), preview=True)) is None
    assert controller.preview_settings(dataclasses.replace(both, preview=False)) is None


def test_job_labels_and_own_thread(slide, tmp_path):
    settings = LiveSettings(members=("deeplabv3plus", "resunet"), preview=True)
    controller = LiveController(slide, settings, out_dir=tmp_path)
    job = controller.job(within=(0, 0, 512, 512), nice=5)
    updates = list(job)
    labels = {(u.stage, u.label) for u in updates}
    assert ("preview", "preview: deeplabv3plus, no TTA") in labels
    assert ("full", "ensemble ×2, no TTA") in labels
    assert not [t for t in threading.enumerate() if t.name == "histo-job"]  # joined


def test_in_own_thread_relays_returns_raises_and_joins_on_close():
    from napari_histo.live.threads import in_own_thread

    def numbers(n, fail=False):
        yield from range(n)
        if fail:
            raise ValueError("boom")
        return "done"

    cancel = threading.Event()
    gen = in_own_thread(lambda: numbers(3), cancel, 1)
    assert list(gen) == [0, 1, 2] and not cancel.is_set()
    gen = in_own_thread(lambda: numbers(3), cancel, 1)
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    assert stop.value.value == "done"
    with pytest.raises(ValueError, match="boom"):
        list(in_own_thread(lambda: numbers(1, fail=True), cancel, 0))

    def until_cancelled():
        while not cancel.is_set():
            yield 1

    gen = in_own_thread(until_cancelled, cancel, 0)
    assert next(gen) == 1
    gen.close()  # cancels and joins
    assert cancel.is_set()
    assert not [t for t in threading.enumerate() if t.name == "histo-job"]


def test_capped_pyramid_matches_the_full_one_on_its_levels():
    from napari_histo.live.pyramid import OverlayPyramid, level_shapes

    shape, cell = (700, 1100), 100  # cells are multiples of 4: exact block means
    rng = np.random.default_rng(1)
    full = rng.random(shape, dtype=np.float32)
    ref, capped = OverlayPyramid(shape), OverlayPyramid(shape, np.float16, base=2)
    assert capped.shape == shape and [lv.shape for lv in capped.levels] == level_shapes(shape)[2:]
    for y0 in range(0, shape[0], cell):
        for x0 in range(0, shape[1], cell):
            rows, cols = slice(y0, y0 + cell), slice(x0, x0 + cell)
            box = capped.write(rows, cols, full[rows, cols])
            assert box == (y0, min(y0 + cell, 700), x0, min(x0 + cell, 1100))
            ref.write(rows, cols, full[rows, cols])
    for mine, theirs in zip(capped.levels, ref.levels[2:], strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-3)  # float16: ~3 decimals
    # Unaligned cells: a coarse pixel partly covered gets the mean of the covered part.
    odd = OverlayPyramid((64, 64), base=2, min_px=4)
    odd.write(slice(0, 6), slice(0, 64), np.ones((6, 64), np.float32))
    assert odd.levels[0][:2].min() == 1.0 and odd.levels[0][2:].max() == 0.0
    filled = OverlayPyramid(shape, np.float16, base=2)
    filled.fill(full)
    for mine, theirs in zip(filled.levels, ref.levels[2:], strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-3)


def test_live_buffers_are_bounded_for_a_whole_slide_result():
    """A 100k-px slide at 2 um/px: the overlay buffers stay within the display cap."""
    from napari_histo.live.pyramid import (
        DISPLAY_CAP_PX,
        DISPLAY_DTYPE,
        OverlayPyramid,
        display_base,
        outline_levels,
    )

    shape = (12500, 12500)
    base = display_base(shape)
    assert base == 2 and max(OverlayPyramid((4096, 4096)).shape) <= DISPLAY_CAP_PX
    pyramids = [OverlayPyramid(shape, DISPLAY_DTYPE, base=base) for _ in range(3)]
    outline = [np.zeros(lv.shape, np.uint8) for lv in pyramids[0].levels]
    outline_levels(outline, pyramids[0].levels, 0.5, (0, 300, 0, 300), base)
    total = sum(p.nbytes for p in pyramids) + sum(o.nbytes for o in outline)
    assert total <= 100 * 2**20, total / 2**20  # full-size float32 would be ~3 GB
    # The same bound holds for any result size: at most the cap on a side, float16.
    worst = OverlayPyramid((DISPLAY_CAP_PX, DISPLAY_CAP_PX), DISPLAY_DTYPE).nbytes
    assert 3 * worst + worst // 2 <= 160 * 2**20
