"""Which generic tiled TIFF compressions open (pixels checked against the source),
and the one-line error for those OpenSlide cannot decode. The README's format
table lists what these tests verify."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histo.errors import SlideError
from napari_histo.io.slide import Slide
from napari_histo.plugin.reader import napari_get_reader
from tests.slides import _reduce, textured_rgb, write_generic_tiff

IMAGE = textured_rgb(600, 800, seed=3)


@pytest.mark.parametrize(
    ("compression", "max_error"),
    [("jpeg", 40), ("zlib", 0), ("lzw", 0), ("zstd", 0), ("packbits", 0), (None, 0)],
)
def test_generic_tiff_compressions_open(tmp_path, compression, max_error):
    path = tmp_path / f"{compression}.tif"
    write_generic_tiff(path, IMAGE, levels=2, compression=compression, mpp=0.5)
    with Slide(path) as slide:
        assert slide.vendor == "generic-tiff" and slide.level_count == 2
        assert slide.mpp == pytest.approx(0.5, rel=1e-3)
        for level, source in enumerate([IMAGE, _reduce(IMAGE, 2)]):
            height, width = source.shape[:2]
            got = slide.read_level_region(level, 0, 0, width, height).astype(int)
            error = np.abs(got - source)
            assert error.max() <= max_error and error.mean() < 3
    assert napari_get_reader(str(path)) is not None


@pytest.mark.parametrize(
    ("compression", "name"),
    [("webp", r"WEBP \(50001\)"), ("jpeg2000", r"JPEG2000 \(34712\)"), ("lzma", r"LZMA \(34925\)")],
)
def test_undecodable_compression_one_line_error(tmp_path, compression, name):
    path = tmp_path / f"{compression}.tif"
    write_generic_tiff(path, IMAGE, levels=1, compression=compression)
    with pytest.raises(SlideError, match=f"uses {name} TIFF compression, which OpenSlide") as info:
        Slide(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert napari_get_reader(str(path)) is None


def test_philips_tiff_levels_decode_directly_and_equal_openslide(tmp_path, rng):
    """Philips pads every level to whole tiles and OpenSlide crops the levels after
    the first: the direct decoder still finds each level's page and gives OpenSlide's
    pixels (checked on random windows, level edges included)."""
    import openslide

    from napari_histo.bench.formats import write_philips_tiff

    path = write_philips_tiff(tmp_path / "philips.tiff", textured_rgb(700, 1100, seed=4), 0.25)
    reference = openslide.OpenSlide(path)
    with Slide(path) as slide:
        assert slide.vendor == "philips" and slide.level_count == 2
        assert slide.mpp == pytest.approx(0.25)
        for level in range(slide.level_count):
            width, height = slide.level_dimensions[level]
            ds = slide.level_downsamples[level]
            for w, h in [(width, height)] + [(int(rng.integers(1, 400)),) * 2 for _ in range(4)]:
                w, h = min(w, width), min(h, height)
                x, y = width - w, int(rng.integers(0, height - h + 1))
                got = slide.read_level_region(level, x, y, w, h)
                want = reference.read_region((round(x * ds), round(y * ds)), level, (w, h))
                np.testing.assert_array_equal(got, np.asarray(want.convert("RGB")))
        assert slide.fast_levels == (True, True)
    assert napari_get_reader(str(path)) is not None


def test_ndpi_levels_decode_directly_and_equal_openslide(tmp_path, rng):
    """An NDPI (one JPEG per level, a restart marker every 256 columns, McuStarts):
    its file levels are decoded directly, tile by tile as OpenSlide decodes them, and
    equal OpenSlide's pixels; so are the levels OpenSlide adds by JPEG scaling (the
    smallest page decoded at 1/2, 1/4 and 1/8)."""
    import openslide

    from napari_histo.bench.formats import write_ndpi

    path = write_ndpi(tmp_path / "slide.ndpi", textured_rgb(700, 1100, seed=5), 0.25)
    reference = openslide.OpenSlide(path)
    with Slide(path) as slide:
        assert slide.vendor == "hamamatsu" and slide.mpp == pytest.approx(0.25)
        assert slide.tile_size(0) == (256, 8)
        for level in range(slide.level_count):
            width, height = slide.level_dimensions[level]
            ds = slide.level_downsamples[level]
            windows = [(0, 0, width, height)]
            for _ in range(3):
                w, h = int(rng.integers(1, min(width, 600))), int(rng.integers(1, min(height, 400)))
                x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                windows.append((x, y, w, h))
            for x, y, w, h in windows:
                got = slide.read_level_region(level, x, y, w, h)
                want = reference.read_region((round(x * ds), round(y * ds)), level, (w, h))
                np.testing.assert_array_equal(got, np.asarray(want.convert("RGB")))
        # The two JPEGs in the file and OpenSlide's scaled levels of the second.
        assert slide.level_count == 5 and slide.fast_levels == (True,) * 5
        # Reads decode columns of restart intervals about 256 px high as one cell
        # (the viewer's parallel bands end on their edges).
        assert slide.cell_size(0) == (256, 256) and slide.cell_size(4) == (32, 256)
    assert napari_get_reader(str(path)) is not None
