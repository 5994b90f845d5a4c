"""Result store: runs by settings, chunked cell writes, resume, provenance, pyramid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_histo.errors import StoreError
from napari_histo.io.store import (
    RESULT_ARRAYS,
    ResultGeometry,
    ResultStore,
    default_store_path,
    slide_identity,
)

GEOMETRY = ResultGeometry(
    origin_l0=(400, 800), downsample=4.0, shape=(700, 1100), cell_px=128, mpp=1.0
)
SETTINGS = {"models": ["abc123"], "tta": [0, 4], "overlap": 0.5, "tile_px": 256, "model_mpp": 1.0}


@pytest.fixture
def identity(small_svs):
    return slide_identity(small_svs, (3000, 2000), 0.25)


def cell_values(geometry, row, col, seed=0):
    y0, y1, x0, x1 = geometry.cell_bounds(row, col)
    rng = np.random.default_rng(seed + row * 1000 + col)
    return {name: rng.random((y1 - y0, x1 - x0), dtype=np.float32) for name in RESULT_ARRAYS}


def finished_run(path, identity):
    """A complete run of GEOMETRY with every cell written."""
    run = ResultStore(path, identity).create_or_resume(SETTINGS, GEOMETRY)
    rows, cols = GEOMETRY.cell_shape
    for r in range(rows):
        for c in range(cols):
            run.write_cell(r, c, cell_values(GEOMETRY, r, c))
    run.finish({})
    return run


def test_default_path(small_svs, tmp_path):
    assert default_store_path(small_svs) == small_svs.parent / "small.svs.histo.zarr"
    assert default_store_path(small_svs, tmp_path) == tmp_path / "small.svs.histo.zarr"


def test_write_all_cells_resume_and_finish(tmp_path, identity):
    path = tmp_path / "s.histo.zarr"
    store = ResultStore(path, identity)
    run = store.create_or_resume(SETTINGS, GEOMETRY)
    rows, cols = GEOMETRY.cell_shape
    assert (rows, cols) == (6, 9)
    expected = {name: np.zeros(GEOMETRY.shape, np.float32) for name in RESULT_ARRAYS}
    order = [(r, c) for r in range(rows) for c in range(cols)]
    half = len(order) // 2
    for r, c in order[:half]:
        values = cell_values(GEOMETRY, r, c)
        y0, y1, x0, x1 = GEOMETRY.cell_bounds(r, c)
        for name in RESULT_ARRAYS:
            expected[name][y0:y1, x0:x1] = values[name]
        run.write_cell(r, c, values)
    run.cancel()
    assert run.status == "cancelled" and not run.complete
    done_before = run.done.sum()
    assert done_before == half

    # A new process (new objects) resumes the same run.
    run2 = ResultStore(path, identity).create_or_resume(SETTINGS, GEOMETRY)
    assert run2.run_id == run.run_id
    assert run2.done.sum() == half
    for r, c in order[half:]:
        values = cell_values(GEOMETRY, r, c)
        y0, y1, x0, x1 = GEOMETRY.cell_bounds(r, c)
        for name in RESULT_ARRAYS:
            expected[name][y0:y1, x0:x1] = values[name]
        run2.write_cell(r, c, values)
    run2.finish({"tiles": 123})
    assert run2.complete and run2.done.all()
    for name in RESULT_ARRAYS:
        np.testing.assert_array_equal(run2.array(name)[...], expected[name])
        levels = run2.levels(name)
        assert [lv.shape for lv in levels] == [(700, 1100), (350, 550), (175, 275), (87, 137)]
        np.testing.assert_allclose(
            levels[1][...], expected[name].reshape(350, 2, 550, 2).mean(axis=(1, 3)), atol=1e-6
        )
    attrs = dict(run2.group.attrs)
    assert attrs["settings"] == SETTINGS and attrs["tiles"] == 123
    assert attrs["geometry"]["downsample"] == 4.0 and attrs["package_version"]
    ms = run2.group["probability"].attrs["multiscales"][0]
    assert ms["axes"][0]["unit"] == "micrometer"
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [2.0, 2.0]
    # Translation: the centre of pixel (0, 0). Level-0 origin (x=400, y=800) at 0.25 µm/px,
    # 4 level-0 px per result px: centre at +1.5 px -> (200.375 µm, 100.375 µm) as (y, x);
    # level 1 (8 px): +3.5 px -> (200.875, 100.875). The same as frames.py puts layers.
    assert ms["datasets"][0]["coordinateTransformations"][1]["translation"] == [200.375, 100.375]
    assert ms["datasets"][1]["coordinateTransformations"][1]["translation"] == [200.875, 100.875]


def test_other_settings_make_a_new_run(tmp_path, identity):
    store = ResultStore(tmp_path / "s.zarr", identity)
    a = store.create_or_resume(SETTINGS, GEOMETRY)
    b = store.create_or_resume({**SETTINGS, "tta": [0]}, GEOMETRY)
    c = store.create_or_resume({**SETTINGS, "models": ["other"]}, GEOMETRY)
    assert len({a.run_id, b.run_id, c.run_id}) == 3
    assert store.run_ids() == sorted([a.run_id, b.run_id, c.run_id])


def test_other_slide_refused(tmp_path, identity):
    ResultStore(tmp_path / "s.zarr", identity)
    other = {**identity, "sha256_head_tail": "0" * 64}
    with pytest.raises(StoreError, match="another slide"):
        ResultStore(tmp_path / "s.zarr", other)


def test_unwritable_or_missing_directory(tmp_path, identity):
    with pytest.raises(StoreError, match="does not exist"):
        ResultStore(tmp_path / "nope" / "s.zarr", identity)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="is not a directory"):
        ResultStore(blocker / "s.zarr", identity)
    with pytest.raises(StoreError, match="not writable"):
        ResultStore("/proc/s.histo.zarr", identity)  # procfs refuses new files, even for root


def test_no_tissue_cells_marked_done_and_finish_refuses_incomplete(tmp_path, identity):
    run = ResultStore(tmp_path / "s.zarr", identity).create_or_resume(SETTINGS, GEOMETRY)
    mask = np.zeros(GEOMETRY.cell_shape, bool)
    mask[:, :4] = True
    run.mark_done(mask)
    with pytest.raises(StoreError, match="cells not done"):
        run.finish()
    assert run.status == "cancelled" or run.status == "running"
    for r in range(GEOMETRY.cell_shape[0]):
        for c in range(4, GEOMETRY.cell_shape[1]):
            run.write_cell(r, c, cell_values(GEOMETRY, r, c))
    run.finish()
    assert run.complete
    assert float(run.array("probability")[:, : 4 * 128].max()) == 0.0


def test_killed_run_never_reads_as_done(tmp_path, identity):
    """Buffered but unflushed cells (a kill) come back as not done."""
    path = tmp_path / "s.zarr"
    run = ResultStore(path, identity).create_or_resume(SETTINGS, GEOMETRY)
    run.write_cell(0, 0, cell_values(GEOMETRY, 0, 0))  # chunk not full: only buffered
    del run  # no flush: as if killed
    again = ResultStore(path, identity).create_or_resume(SETTINGS, GEOMETRY)
    assert not again.done.any() and again.status == "running"


def test_wrong_cell_shape(tmp_path, identity):
    run = ResultStore(tmp_path / "s.zarr", identity).create_or_resume(SETTINGS, GEOMETRY)
    bad = {name: np.zeros((5, 5), np.float32) for name in RESULT_ARRAYS}
    with pytest.raises(ValueError, match=r"cell \(0, 0\) `probability` shape"):
        run.write_cell(0, 0, bad)


def test_corrupt_store_is_a_store_error(tmp_path, identity):
    path = tmp_path / "s.zarr"
    path.mkdir()
    (path / "zarr.json").write_text("{ not json")
    with pytest.raises(StoreError, match=str(path)):
        ResultStore(path, identity)
    (path / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
    )
    with pytest.raises(StoreError, match="not a napari-histo result store"):
        ResultStore(path, identity, mode="r")


def test_a_damaged_run_raises_one_store_error_naming_the_store(tmp_path, identity):
    import shutil

    path = tmp_path / "s.histo.zarr"
    run = finished_run(path, identity)
    level = path / run.group.path
    # Every chunk of one level overwritten with garbage: the codec cannot decode it.
    for chunk in (level / "aleatoric" / "1" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"\xff" * 64)
    shutil.rmtree(level / "epistemic")  # an array gone
    (again,) = ResultStore(path, identity, mode="r").runs()
    for call, what in [
        (lambda: again.read_level("aleatoric", 1), "cannot be decoded"),
        (lambda: again.levels("epistemic"), "has no readable pyramid"),
        (lambda: again.array("epistemic", 0), "missing or unreadable"),
    ]:
        with pytest.raises(StoreError, match=what) as info:
            call()
        assert str(path) in str(info.value) and "damaged" in str(info.value)


def test_a_complete_run_without_its_chunk_files_is_refused_not_read_as_zeros(
    tmp_path, identity, small_svs
):
    import shutil

    from napari_histo.io.store import default_store_path, latest_complete_run

    path = default_store_path(small_svs, tmp_path)
    run = finished_run(path, identity)
    run.check_data()  # whole: passes
    assert latest_complete_run(small_svs, out_dir=tmp_path).run_id == run.run_id
    chunks = [f for f in (path / run.group.path / "probability" / "0").rglob("c/*/*")]
    assert len(chunks) == run.group.attrs["chunks"]["probability"] > 1
    chunks[0].unlink()  # a copy that lost one chunk file
    for call in (
        lambda: ResultStore(path, identity).create_or_resume(SETTINGS, GEOMETRY),
        lambda: latest_complete_run(small_svs, out_dir=tmp_path),
    ):
        with pytest.raises(StoreError, match=r"probability has \d+ of its \d+ data chunks") as info:
            call()
        assert str(path) in str(info.value)
    shutil.rmtree(path / run.group.path / "probability" / "0" / "c")  # all of them
    with pytest.raises(StoreError, match="probability has 0 of its"):
        latest_complete_run(small_svs, out_dir=tmp_path)
    # A run finished before the record existed is not checked.
    (again,) = ResultStore(path, identity).runs()
    del again.group.attrs["chunks"]
    again.check_data()


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda p: (p / "runs" / "zarr.json").write_text("not json"), "runs cannot be listed"),
        (lambda p: (p / "zarr.json").write_text("[1, 2, 3]"), "not a readable zarr result store"),
        (
            lambda p: (p / "zarr.json").write_text(
                json.dumps(
                    {
                        **json.loads((p / "zarr.json").read_text()),
                        "attributes": {"napari_histo": {"format": 1, "slide": "x"}},
                    }
                )
            ),
            "damaged store metadata",
        ),
    ],
)
def test_garbled_store_metadata_is_one_store_error(tmp_path, identity, damage, what):
    path = tmp_path / "s.histo.zarr"
    ResultStore(path, identity).create_or_resume(SETTINGS, GEOMETRY).cancel()
    damage(path)
    with pytest.raises(StoreError, match=what) as info:
        list(ResultStore(path, identity, mode="r").runs())
    assert str(path) in str(info.value)
