"""Slides that are not 8-bit RGB (16-bit, greyscale, fluorescence): the napari layer
shows the file's own values with contrast limits from the data."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histo.io.native_tiff import data_contrast_limits, native_pyramid
from napari_histo.io.slide import Slide
from napari_histo.plugin.reader import napari_get_reader
from tests.slides import fluorescence_like, write_single_channel_tiff


def _halved(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[0] // 2, image.shape[1] // 2
    return image[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3)).astype(image.dtype)


@pytest.fixture(scope="module")
def grey16(tmp_path_factory):
    """12-bit fluorescence data stored as 16 bit, 1536 x 1024, two levels, mpp 0.5."""
    image = fluorescence_like(1024, 1536, peak=4000, dtype=np.uint16, seed=1)
    path = tmp_path_factory.mktemp("g16") / "grey16.tif"
    write_single_channel_tiff(path, [image, _halved(image)], mpp=0.5)
    return path, image


@pytest.fixture(scope="module")
def fluo8(tmp_path_factory):
    """8-bit single-channel, dark background, spots up to 120 counts."""
    image = fluorescence_like(1024, 1024, peak=120, dtype=np.uint8, seed=2)
    path = tmp_path_factory.mktemp("f8") / "fluo8.tif"
    write_single_channel_tiff(path, [image, _halved(image)], mpp=0.25)
    return path, image


def _layer(path):
    reader = napari_get_reader(str(path))
    assert reader is not None
    ((data, kwargs, kind),) = reader(str(path))
    assert kind == "image"
    return data, kwargs


def test_openslide_keeps_only_the_high_byte_of_16_bit(grey16):
    """Why the native path exists: OpenSlide's 8-bit view of 12-bit data is 0–15."""
    path, image = grey16
    with Slide(path) as slide:
        assert slide.read_region(0, 0, 0, 1536, 1024).max() <= image.max() >> 8


def test_16_bit_layer_is_native_with_data_limits(grey16):
    path, image = grey16
    data, kwargs = _layer(path)
    assert kwargs["rgb"] is False and kwargs["multiscale"] is True
    assert [a.shape for a in data] == [(1024, 1536), (512, 768)]
    assert all(a.dtype == np.uint16 for a in data)
    np.testing.assert_array_equal(data[0][100:400, 200:900].compute(), image[100:400, 200:900])
    np.testing.assert_array_equal(data[1].compute(), _halved(image))
    low, high = kwargs["contrast_limits"]
    assert 0 <= low < 200 and 1000 < high <= 4000
    assert kwargs["scale"] == pytest.approx((0.5, 0.5))
    assert kwargs["colormap"] == "gray" and kwargs["metadata"]["native_dtype"] == "uint16"
    kwargs["metadata"]["slide"].close()


def test_8_bit_fluorescence_limits_follow_the_signal(fluo8):
    path, image = fluo8
    data, kwargs = _layer(path)
    assert data[0].dtype == np.uint8 and data[0].ndim == 2
    low, high = kwargs["contrast_limits"]
    assert low <= np.percentile(image, 1) + 1 and 20 < high <= 120
    kwargs["metadata"]["slide"].close()


def test_napari_accepts_the_native_layer(grey16):
    from napari.layers import Image

    data, kwargs = _layer(grey16[0])
    kwargs["metadata"]["slide"].close()
    layer = Image(data, **kwargs)
    assert layer.multiscale and not layer.rgb
    assert tuple(layer.contrast_limits) == pytest.approx(kwargs["contrast_limits"])


def test_rgb_slides_keep_openslide_pixels_and_fixed_limits(small_svs):
    with Slide(small_svs) as slide:
        assert native_pyramid(slide) is None
    data, kwargs = _layer(small_svs)
    assert kwargs["rgb"] is True and kwargs["contrast_limits"] == (0, 255)
    assert data[0].dtype == np.uint8 and "native_dtype" not in kwargs["metadata"]
    kwargs["metadata"]["slide"].close()


def test_large_single_level_gets_synthetic_levels_in_its_dtype(tmp_path):
    image = fluorescence_like(300, 4500, peak=3000, dtype=np.uint16, seed=3)
    path = tmp_path / "wide16.tif"
    write_single_channel_tiff(path, [image])
    with Slide(path, mpp=1.0) as slide:
        pyramid = native_pyramid(slide)
        assert pyramid is not None
        assert [a.shape for a in pyramid.levels] == [(300, 4500), (150, 2250)]
        assert pyramid.levels[1].dtype == np.uint16 and pyramid.downsamples == (1.0, 2.0)
        np.testing.assert_array_equal(pyramid.levels[1].compute(), _halved(image))
        low, high = data_contrast_limits(pyramid)
        assert high > low


def test_non_integer_downsample_level_is_read_on_its_own_grid(tmp_path):
    """A 1000 px level 0 with a 333 px level 1 (downsample 3.003): exact pixels, no shift."""
    image = fluorescence_like(1000, 1000, peak=4000, dtype=np.uint16, seed=4)
    small = image[::3, ::3][:333, :333].copy()
    path = tmp_path / "odd.tif"
    write_single_channel_tiff(path, [image, small], tile=128)
    with Slide(path, mpp=0.5) as slide:
        assert slide.level_downsamples[1] == pytest.approx(1000 / 333)
        pyramid = native_pyramid(slide)
        assert pyramid is not None
        np.testing.assert_array_equal(pyramid.levels[1].compute(), small)


@pytest.mark.parametrize(
    ("dtype", "photometric", "samples", "native"),
    [
        (np.uint8, "minisblack", 1, True),
        (np.uint16, "minisblack", 1, True),
        (np.uint16, "rgb", 3, True),
        (np.uint8, "rgb", 3, False),
        (np.uint8, "palette", 1, False),
        (np.uint8, "miniswhite", 1, False),
    ],
)
def test_which_pages_are_read_natively(tmp_path, dtype, photometric, samples, native):
    import tifffile

    from napari_histo.io.native_tiff import reads_natively

    shape = (64, 64) if samples == 1 else (64, 64, samples)
    path = tmp_path / "page.tif"
    extra = {"colormap": np.zeros((3, 256), np.uint16)} if photometric == "palette" else {}
    tifffile.imwrite(path, np.zeros(shape, dtype), photometric=photometric, tile=(32, 32), **extra)
    with tifffile.TiffFile(path) as tif:
        assert reads_natively(tif.pages[0]) is native
