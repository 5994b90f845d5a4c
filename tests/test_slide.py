"""Slide: metadata, pixels against OpenSlide itself, threads, lifetime."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openslide
import pytest

from napari_histo.errors import SlideError
from napari_histo.io.slide import Slide, argb_to_rgb


def openslide_rgb(path, level, x, y, w, h) -> np.ndarray:
    """Reference pixels: openslide-python's PIL image composited over white."""
    with openslide.OpenSlide(path) as osr:
        rgba = np.asarray(osr.read_region((x, y), level, (w, h))).astype(np.float64)
    alpha = rgba[..., 3:] / 255
    return np.round(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)


def test_real_aperio_metadata(cmu_svs):
    with Slide(cmu_svs) as slide:
        assert slide.vendor == "aperio"
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1
        assert slide.mpp_x == pytest.approx(0.499)
        assert slide.mpp_y == pytest.approx(0.499)
        assert slide.objective_power == 20
        assert slide.tile_size(0) == (240, 240)
        assert set(slide.associated_names) == {"label", "macro", "thumbnail"}
        label = slide.associated_image("label")
        assert label.dtype == np.uint8 and label.ndim == 3 and label.shape[2] == 3
        assert slide.properties["openslide.vendor"] == "aperio"
        with pytest.raises(TypeError):
            slide.properties["x"] = "y"  # read-only mapping
        assert repr(slide) == f"Slide({str(cmu_svs)!r})"


def test_synthetic_svs_metadata(small_svs):
    with Slide(small_svs) as slide:
        assert slide.vendor == "aperio"
        assert slide.level_dimensions == ((3000, 2000), (750, 500))
        assert slide.level_downsamples == (1.0, 4.0)
        assert slide.mpp == pytest.approx(0.25)
        assert slide.objective_power == 40


@pytest.mark.parametrize("fixture", ["cmu_svs", "small_svs", "generic_tiff"])
def test_read_region_equals_openslide(request, fixture, rng):
    path = request.getfixturevalue(fixture)
    with Slide(path) as slide:
        for level in range(slide.level_count):
            width, height = slide.level_dimensions[level]
            ds = slide.level_downsamples[level]
            for _ in range(6):
                w, h = int(rng.integers(1, 700)), int(rng.integers(1, 500))
                lx, ly = int(rng.integers(0, width - 1)), int(rng.integers(0, height - 1))
                x, y = round(lx * ds), round(ly * ds)
                got = slide.read_region(level, x, y, w, h)
                assert got.shape == (h, w, 3) and got.dtype == np.uint8
                np.testing.assert_array_equal(got, openslide_rgb(path, level, x, y, w, h))
        # The direct tile decoder was used and verified equal to OpenSlide.
        assert any(slide.fast_levels)


@pytest.mark.parametrize("fixture", ["cmu_svs", "small_svs", "generic_tiff"])
def test_openslide_reads_come_from_whole_cached_tiles(request, fixture, rng, monkeypatch):
    """Without direct decoding, windows are whole tiles of the level's grid read by
    OpenSlide once and then served from the tile cache: OpenSlide's pixels either way."""
    path = request.getfixturevalue(fixture)
    with Slide(path, direct=False) as slide:
        calls = []
        read_argb = slide.read_region_argb
        monkeypatch.setattr(slide, "read_region_argb", lambda *a: calls.append(a) or read_argb(*a))
        read = 0
        for level in range(slide.level_count):
            width, height = slide.level_dimensions[level]
            ds = slide.level_downsamples[level]
            tile_w, tile_h = slide.tile_size(level)
            for _ in range(4):
                w, h = int(rng.integers(1, 700)), int(rng.integers(1, 500))
                lx, ly = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                x, y = round(lx * ds), round(ly * ds)
                calls.clear()
                got = slide.read_level_region(level, lx, ly, w, h)
                np.testing.assert_array_equal(got, openslide_rgb(path, level, x, y, w, h))
                # At most one OpenSlide call (none when earlier windows left every
                # tile in the cache), on the tile grid.
                assert len(calls) <= 1
                for call in calls:
                    assert call[0] == level and call[1] / ds % tile_w == call[2] / ds % tile_h == 0
                read += len(calls)
                calls.clear()
                got[...] = 0  # the caller's array, not the cached tiles
                again = slide.read_level_region(level, lx, ly, w, h)
                np.testing.assert_array_equal(again, openslide_rgb(path, level, x, y, w, h))
                assert not calls  # every tile from the cache
        assert read > slide.level_count and slide.fast_levels == (False,) * slide.level_count
        assert 0 < slide.tile_cache.bytes <= slide.tile_cache.max_bytes


def test_outside_scan_is_white(small_svs):
    with Slide(small_svs) as slide:
        width, height = slide.dimensions
        region = slide.read_region(0, width - 50, height - 40, 100, 80)
        assert (region[40:, :] == 255).all()
        assert (region[:, 50:] == 255).all()
        assert not (region[:40, :50] == 255).all()
        assert (slide.read_region(0, -500, -500, 100, 100) == 255).all()


def test_argb_to_rgb_composites_premultiplied_over_white():
    # Opaque red, transparent, half-transparent premultiplied grey.
    argb = np.array([[0xFFFF0000, 0x00000000, 0x80404040]], dtype=np.uint32)
    rgb = argb_to_rgb(argb)
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(rgb[0, 2], [0x40 + 0x7F] * 3)
    with pytest.raises(ValueError, match="uint32"):
        argb_to_rgb(np.zeros((2, 2), np.uint8))


def test_threads_get_own_handles_and_same_pixels(small_svs, rng):
    windows = [
        (int(rng.integers(0, 2)), int(rng.integers(0, 2500)), int(rng.integers(0, 1500)), 300, 200)
        for _ in range(64)
    ]
    with Slide(small_svs) as slide:
        expected = [slide.read_region(*w) for w in windows]
        names: set[str] = set()

        def read(window):
            names.add(threading.current_thread().name)
            return slide.read_region(*window)

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(read, windows))
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)
        # One OpenSlide handle per thread that read (plus the opening thread's).
        assert 2 <= len(slide._handles) <= len(names) + 1
    assert slide.closed and slide._handles == []


def test_read_after_close_raises(small_svs):
    slide = Slide(small_svs)
    slide.close()
    slide.close()  # idempotent
    with pytest.raises(SlideError, match="closed"):
        slide.read_region(0, 0, 0, 10, 10)


def test_missing_mpp(generic_tiff):
    with Slide(generic_tiff) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.mpp is None and slide.mpp_x is None
        with pytest.raises(SlideError, match=r"plain\.tif.*microns-per-pixel"):
            slide.require_mpp()
    with Slide(generic_tiff, mpp=0.5) as slide:
        assert slide.require_mpp() == 0.5


def test_implausible_mpp_is_treated_as_missing(tmp_path):
    import warnings

    from tests.slides import textured_rgb, write_generic_tiff

    path = tmp_path / "dpi72.tif"
    write_generic_tiff(path, textured_rgb(512, 512, seed=5), levels=1, tile=256, mpp=25400 / 72)
    with pytest.warns(UserWarning, match=r"dpi72\.tif: 352\.8 µm/px .* treated as missing") as seen:
        slide = Slide(path)
    assert len(seen) == 1 and slide.mpp is None  # one warning, not one per axis
    slide.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit mpp: no warning
        with Slide(path, mpp=0.5) as slide:
            assert slide.require_mpp() == 0.5


def test_mpp_from_tiff_resolution(wide_tiff):
    with Slide(wide_tiff) as slide:
        assert slide.mpp == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((1.5, 0, 0, 1, 1), TypeError, "`level` must be an int"),
        ((5, 0, 0, 1, 1), ValueError, r"`level` must be in \[0, 1\], got 5"),
        ((0, 0, 0, -1, 1), ValueError, "region size must be >= 0"),
    ],
)
def test_read_region_bad_arguments(small_svs, args, error, match):
    with Slide(small_svs) as slide, pytest.raises(error, match=match):
        slide.read_region(*args)


def test_bad_constructor_arguments(small_svs):
    with pytest.raises(TypeError, match="`path` must be"):
        Slide(123)
    with pytest.raises(ValueError, match=r"`mpp` must be a finite number > 0, got -0\.5"):
        Slide(small_svs, mpp=-0.5)


def test_best_level_and_thumbnail(small_svs):
    with Slide(small_svs) as slide:
        assert slide.best_level_for_downsample(1) == 0
        assert slide.best_level_for_downsample(3.9) == 0
        assert slide.best_level_for_downsample(4) == 1
        assert slide.best_level_for_downsample(100) == 1
        thumb = slide.thumbnail(300)
        assert max(thumb.shape[:2]) == 300 and thumb.shape[2] == 3


def test_direct_tiles_are_cached_read_only_and_bounded(small_svs):
    from napari_histo.io.tiff_tiles import TileCache

    with Slide(small_svs) as slide:
        first = slide.read_level_region(0, 0, 0, 300, 300)
        assert slide.fast_levels[0] is True  # an Aperio SVS of JPEG tiles: decoded directly
        cached = slide.tile_cache.bytes
        assert cached > 0
        again = slide.read_level_region(0, 0, 0, 300, 300)
        np.testing.assert_array_equal(first, again)
        again[...] = 0  # the caller's copy, not the cached tiles
        np.testing.assert_array_equal(slide.read_level_region(0, 0, 0, 300, 300), first)
        assert slide.tile_cache.bytes == cached
    cache = TileCache(max_bytes=3 * 16)
    for i in range(5):
        cache.put((0, 0, i), np.full(16, i, np.uint8))
    assert cache.bytes == 48 and cache.get((0, 0, 0)) == (False, None)
    found, tile = cache.get((0, 0, 4))
    assert found and tile[0] == 4
    cache.put((0, 0, 9), np.zeros(100, np.uint8))  # larger than the whole cache: not kept
    assert cache.get((0, 0, 9))[0] is False
    # Full: the least recently used tile goes, but a level holding under a quarter of
    # the cache (the overview) keeps its tiles.
    fair = TileCache(max_bytes=10 * 16)
    fair.put(("overview", 0, 0), np.zeros(16, np.uint8))
    for i in range(12):
        fair.put(("level 0", 0, i), np.zeros(16, np.uint8))
    assert fair.get(("overview", 0, 0))[0] and fair.bytes == 160
    assert [fair.get(("level 0", 0, i))[0] for i in range(12)] == [False] * 3 + [True] * 9
    with pytest.raises(ValueError, match="max_bytes"):
        TileCache(-1)
