"""The viewer's levels: exact window reads, in parallel bands, equal to the dask pyramid."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histo.io.pyramid import open_pyramid
from napari_histo.io.slide import Slide
from napari_histo.io.windows import MIN_PARALLEL_PX, LevelWindows, viewer_levels

KEYS = [
    (slice(10, 700), slice(5, 900)),
    (slice(None, None, 3), slice(1000, 50, -7)),
    (5,),
    (-1, slice(2, 9), 1),
    (Ellipsis, 0),
    (slice(-50, None),),
    (slice(0, 0),),
    (3, 4),
    (slice(100, 2000), slice(None), slice(0, 2)),
]


@pytest.mark.parametrize("direct", [True, False])
def test_windows_equal_the_slide_for_every_index(cmu_svs, direct):
    with Slide(cmu_svs, direct=direct) as slide:
        width, height = slide.level_dimensions[0]
        full = slide.read_level_region(0, 0, 0, width, height)
        level = LevelWindows(slide, 0, open_pyramid(slide).levels[0], threads=2)
        assert level.shape == full.shape and level.dtype == np.uint8 and level.ndim == 3
        assert level.size == full.size and len(level) == height
        for key in KEYS:
            got, want = np.asarray(level[key]), full[key]
            assert got.shape == want.shape and np.array_equal(got, want), key
        np.testing.assert_array_equal(np.asarray(level), full)
        assert slide.fast_levels[0] is direct


def test_large_windows_are_read_in_bands_on_tile_rows(cmu_svs):
    with Slide(cmu_svs) as slide:
        level = LevelWindows(slide, 0, open_pyramid(slide).levels[0], threads=3)
        tile_h = slide.tile_size(0)[1]
        cuts = level._bands(17, 2900)
        assert cuts[0] == 17 and cuts[-1] == 2900 and len(cuts) == 4
        assert all(c % tile_h == 0 for c in cuts[1:-1])
        assert level._bands(17, 200) == [17, 200]  # one tile row: one band
        # the banded read (large window) equals one read of the same window
        h, w = 2000, MIN_PARALLEL_PX // 2000 + 100
        np.testing.assert_array_equal(
            level[100 : 100 + h, 50 : 50 + w], slide.read_level_region(0, 50, 100, w, h)
        )


def test_viewer_levels_match_the_dask_pyramid(small_svs):
    with Slide(small_svs) as slide:
        pyramid = open_pyramid(slide, max_top_px=256)
        levels = viewer_levels(slide, pyramid)
        assert len(levels) == len(pyramid.levels) > pyramid.file_level_count
        for shown, lazy in zip(levels, pyramid.levels, strict=True):
            assert shown.shape == lazy.shape and shown.dtype == lazy.dtype
            h, w = shown.shape[:2]
            window = (slice(h // 3, h // 3 + 300), slice(w // 5, w // 5 + 500))
            np.testing.assert_array_equal(np.asarray(shown[window]), np.asarray(lazy[window]))
        assert all(isinstance(lv, LevelWindows) for lv in levels[: pyramid.file_level_count])


def test_huge_or_strided_slices_stay_lazy_and_copies_are_views(cmu_svs, monkeypatch):
    import copy

    import dask.array as da

    from napari_histo.io import windows

    with Slide(cmu_svs) as slide:
        level = LevelWindows(slide, 0, open_pyramid(slide).levels[0])
        assert level.chunks == (240, 240, 3)  # the CMU slide's tiles, decoded one by one
        assert isinstance(level[::4, ::4], da.Array)  # strided: dask's lazy slice
        assert isinstance(level[:100, :100], np.ndarray)
        monkeypatch.setattr(windows, "MAX_DIRECT_PX", 10_000)
        assert isinstance(level[..., 1], da.Array)  # napari's Split RGB on a huge level
        assert copy.deepcopy(level) is level and copy.copy(level) is level
        with pytest.raises(ValueError, match="without reading"):
            level.__array__(copy=False)


def test_bad_indices_say_what_is_wrong(cmu_svs):
    with Slide(cmu_svs) as slide:
        level = LevelWindows(slide, 0, open_pyramid(slide).levels[0])
        with pytest.raises(IndexError, match="out of bounds"):
            level[5000]
        with pytest.raises(TypeError, match="int or slice"):
            level[[1, 2]]
        with pytest.raises(IndexError, match="too many"):
            level[1, 2, 0, 0]


@pytest.mark.parametrize(
    ("tile", "direct", "want"), [(128, True, 256), (512, True, 512), (128, False, 256)]
)
def test_chunks_napari_widens_views_to_are_the_cells_reads_decode(tmp_path, tile, direct, want):
    """A view is widened to whole cells (what a read decodes anyway), small tiles
    grouped to about 256 px; not the dask level's ~512-px chunks."""
    from napari.layers.utils.layer_utils import expand_corners_to_chunk_boundaries

    from tests.slides import write_generic_tiff

    image = np.random.default_rng(0).integers(0, 255, (1024, 1536, 3), dtype=np.uint8)
    path = tmp_path / f"tiled{tile}.tiff"
    write_generic_tiff(path, image, tile=tile)
    with Slide(path, direct=direct) as slide:
        level = viewer_levels(slide, open_pyramid(slide))[0]
        assert level.chunks == (want, want, 3)
        corners = np.array([[300, 700, 0], [555, 999, 2]])
        widened = expand_corners_to_chunk_boundaries(corners, level, (0, 1))
        assert (widened[:, :2] % want == [[0, 0], [want - 1, want - 1]]).all()
        window = level[widened[0, 0] : widened[1, 0] + 1, widened[0, 1] : widened[1, 1] + 1]
        np.testing.assert_array_equal(
            window, slide.read_level_region(0, *widened[0, 1::-1], *(window.shape[1::-1]))
        )


def test_holds_pause_background_work_once_around_reads(cmu_svs):
    import threading

    from napari_histo.io.windows import hold_during_reads

    calls = []
    release = hold_during_reads(lambda: calls.append("pause"), lambda: calls.append("resume"))

    def broken():
        raise RuntimeError("no such process")

    release_broken = hold_during_reads(broken, broken)  # ignored, the read goes on
    try:
        with Slide(cmu_svs) as slide:
            level = viewer_levels(slide, open_pyramid(slide))[0]
            np.asarray(level[:300, :300])
            assert calls == ["pause", "resume"]
            # Reads at once on two threads hold once.
            barrier = threading.Barrier(2)
            original = level._read

            def slow_read(*args):
                barrier.wait(timeout=10)
                return original(*args)

            level._read = slow_read
            errors = []

            def read():
                try:
                    level[:200, :200]
                except Exception as err:  # raised on a thread: seen here
                    errors.append(err)

            threads = [threading.Thread(target=read) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == [] and calls == ["pause", "resume"] * 2
    finally:
        release_broken()
        release()
    assert calls[-1] == "resume"  # a release resumes, in case a read is under way
    with Slide(cmu_svs) as slide:
        np.asarray(viewer_levels(slide, open_pyramid(slide))[0][:50, :50])
    assert calls == ["pause", "resume"] * 2 + ["resume"]  # released: no longer called


def test_a_hold_released_during_a_read_is_resumed_after_its_pause(cmu_svs):
    import threading

    from napari_histo.io.windows import hold_during_reads

    calls = []
    release = hold_during_reads(lambda: calls.append("pause"), lambda: calls.append("resume"))
    inside, finish = threading.Event(), threading.Event()
    with Slide(cmu_svs) as slide:
        level = viewer_levels(slide, open_pyramid(slide))[0]
        original = level._read

        def blocking_read(*args):
            inside.set()
            assert finish.wait(timeout=10)
            return original(*args)

        level._read = blocking_read
        reader = threading.Thread(target=lambda: level[:100, :100])
        reader.start()
        assert inside.wait(timeout=10)
        release()  # the job ends while the viewer reads
        late = []
        release_late = hold_during_reads(
            lambda: late.append("pause"), lambda: late.append("resume")
        )
        finish.set()
        reader.join()
        release_late()
    assert calls == ["pause", "resume"]  # resumed by the release, not left stopped
    assert "pause" not in late  # added mid-read: not paused by that read
