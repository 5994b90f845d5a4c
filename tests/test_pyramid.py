"""Lazy pyramid: pixels equal OpenSlide on every level, chunking, synthetic levels."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from napari_histo.io.pyramid import MAX_TOP_PX, open_pyramid
from napari_histo.io.slide import Slide
from tests.test_slide import openslide_rgb


class CountingSlide(Slide):
    """A real Slide that counts pixel reads (instrumentation, not a mock)."""

    reads = 0

    def read_level_region(self, *args, **kwargs):
        type(self).reads += 1
        return super().read_level_region(*args, **kwargs)


@pytest.mark.parametrize("fixture", ["small_svs", "generic_tiff", "cmu_svs"])
def test_pyramid_equals_openslide_on_every_level(request, fixture, rng):
    path = request.getfixturevalue(fixture)
    with Slide(path) as slide:
        pyramid = open_pyramid(slide)
        assert pyramid.file_level_count == slide.level_count
        for level in range(slide.level_count):
            array = pyramid.levels[level]
            width, height = slide.level_dimensions[level]
            assert array.shape == (height, width, 3) and array.dtype == np.uint8
            ds = slide.level_downsamples[level]
            for _ in range(5):
                w = int(rng.integers(1, min(width, 900)))
                h = int(rng.integers(1, min(height, 700)))
                x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                got = array[y : y + h, x : x + w].compute(scheduler="threads")
                expected = openslide_rgb(path, level, round(x * ds), round(y * ds), w, h)
                np.testing.assert_array_equal(got, expected)


def test_whole_level_equals_openslide(small_svs):
    with Slide(small_svs) as slide:
        pyramid = open_pyramid(slide)
        for level in range(slide.level_count):
            width, height = slide.level_dimensions[level]
            np.testing.assert_array_equal(
                pyramid.levels[level].compute(),
                openslide_rgb(small_svs, level, 0, 0, width, height),
            )


def test_chunks_follow_native_tiles_with_exact_edges(small_svs, generic_tiff, cmu_svs):
    with Slide(small_svs) as slide:
        level0 = open_pyramid(slide).levels[0]
        assert level0.chunks[0] == (512, 512, 512, 464)
        assert level0.chunks[1] == (512,) * 5 + (440,)
        assert level0.chunks[2] == (3,)
    with Slide(generic_tiff) as slide:  # 128 px tiles grouped 4 x 4
        assert open_pyramid(slide).levels[0].chunksize[:2] == (512, 512)
    with Slide(cmu_svs) as slide:  # 240 px tiles grouped 2 x 2
        chunks = open_pyramid(slide).levels[0].chunks
        assert chunks[0][0] == 480 and sum(chunks[0]) == 2967 and chunks[0][-1] == 2967 % 480
    with Slide(small_svs) as slide:
        assert open_pyramid(slide, chunk_px=300).levels[0].chunksize[:2] == (300, 300)
        with pytest.raises(ValueError, match="`chunk_px`"):
            open_pyramid(slide, chunk_px=4)


def test_opening_reads_no_pixels(small_svs, wide_tiff):
    for path in (small_svs, wide_tiff):
        slide = CountingSlide(path)
        CountingSlide.reads = 0
        pyramid = open_pyramid(slide)
        _ = [level[100:200, 100:300] for level in pyramid.levels]  # slicing is lazy too
        assert CountingSlide.reads == 0
        pyramid.levels[0][:10, :10].compute()
        assert CountingSlide.reads == 1
        slide.close()


def test_synthetic_levels_when_top_is_large(wide_tiff):
    with Slide(wide_tiff) as slide:
        pyramid = open_pyramid(slide)
        shapes = [level.shape[:2] for level in pyramid.levels]
        assert shapes == [(2500, 9000), (1250, 4500), (625, 2250)]
        assert max(shapes[-1]) <= MAX_TOP_PX
        assert pyramid.file_level_count == 1
        assert pyramid.downsamples == (1.0, 2.0, 4.0)
        base = pyramid.levels[0].compute().astype(np.uint16)
        expected = (base[0::2, 0::2] + base[1::2, 0::2] + base[0::2, 1::2] + base[1::2, 1::2] + 2)
        expected = (expected // 4).astype(np.uint8)
        np.testing.assert_array_equal(pyramid.levels[1].compute(), expected)
        assert pyramid.levels[2].chunksize[:2] == (512, 512)


def test_scale_in_micrometres(small_svs, generic_tiff, cmu_svs):
    with Slide(small_svs) as slide:
        pyramid = open_pyramid(slide)
        assert pyramid.scale_um == (0.25, 0.25) and pyramid.units == "µm"
        assert pyramid.level_scale_um(1) == (1.0, 1.0)
    with Slide(cmu_svs) as slide:
        assert open_pyramid(slide).scale_um == (pytest.approx(0.499), pytest.approx(0.499))
    with Slide(generic_tiff) as slide:
        pyramid = open_pyramid(slide)
        assert pyramid.mpp is None and pyramid.scale_um == (1.0, 1.0) and pyramid.units == "px"


def test_single_threaded_and_parallel_compute_agree(small_svs):
    with Slide(small_svs) as slide:
        level0 = open_pyramid(slide).levels[0]
        window = level0[123:1203, 77:1997]
        with dask.config.set(scheduler="synchronous"):
            one = window.compute()
        np.testing.assert_array_equal(one, window.compute(scheduler="threads", num_workers=4))
