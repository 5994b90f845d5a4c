"""Tissue detection: constructed images, real slide files, synthetic ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk, line
from skimage.transform import resize

from napari_histo import tissue
from napari_histo.io.slide import Slide
from napari_histo.tissue import pen_mask, read_downsampled, slide_tissue_mask, tissue_mask

GLASS = (242, 240, 244)
PINK = (222, 160, 196)
PURPLE = (120, 72, 158)
BLUE_INK = (40, 80, 190)


def _glass(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    image = np.empty((*shape, 3), np.float64)
    image[:] = GLASS
    return image


def _finish(image: np.ndarray, rng: np.random.Generator, sigma: float = 3.0) -> np.ndarray:
    noisy = image + rng.normal(0, sigma, image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _paint_tissue(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    """Pink stroma with purple nuclei dots inside `mask`."""
    image[mask] = PINK
    nuclei = (rng.random(mask.shape) < 0.05) & mask
    nuclei = ndimage.binary_dilation(nuclei) & mask
    image[nuclei] = PURPLE


def _blobs(shape=(256, 320), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, bool)
    for cy, cx, r in [(70, 80, 45), (170, 200, 60), (80, 250, 30), (200, 60, 25)]:
        rr, cc = disk((cy, cx), r, shape=shape)
        truth[rr, cc] = True
    image = _glass(shape, rng)
    _paint_tissue(image, truth, rng)
    return _finish(image, rng), truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# -- tissue_mask on constructed images ---------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blobs_are_found(seed):
    rgb, truth = _blobs(seed=seed)
    mask = tissue_mask(rgb, mpp=8.0)
    assert mask.dtype == bool and mask.shape == truth.shape
    assert _iou(mask, truth) >= 0.95


def test_without_mpp_uses_pixel_defaults():
    rgb, _ = _blobs()
    np.testing.assert_array_equal(tissue_mask(rgb), tissue_mask(rgb, mpp=tissue.ASSUMED_MPP))


def test_all_glass_is_empty(rng):
    rgb = _finish(_glass((128, 128), rng), rng, sigma=4.0)
    assert not tissue_mask(rgb, mpp=8.0).any()
    assert not tissue_mask(np.full((64, 64, 3), 255, np.uint8)).any()


def test_glass_with_colour_cast_is_empty(rng):
    image = _glass((128, 128), rng)
    image[:, 64:] = (225, 232, 245)  # bluish-white glass, saturation ~0.08
    assert not tissue_mask(_finish(image, rng), mpp=8.0).any()


def test_all_tissue_is_full(rng):
    image = np.empty((128, 128, 3))
    _paint_tissue(image, np.ones((128, 128), bool), rng)
    image[:, :40] = (200, 110, 170)  # and a darker, more saturated region
    assert tissue_mask(_finish(image, rng), mpp=8.0).all()


def test_pale_and_dark_tissue_both_found(rng):
    image = _glass((128, 192), rng)
    pale, dark = np.zeros((128, 192), bool), np.zeros((128, 192), bool)
    pale[20:100, 20:90] = True
    dark[20:100, 110:180] = True
    image[pale] = (236, 200, 222)  # faint eosin, saturation ~0.15
    image[dark] = PURPLE
    mask = tissue_mask(_finish(image, rng, sigma=2.0), mpp=8.0)
    assert _iou(mask, pale | dark) >= 0.95


def test_blue_pen_on_glass_is_excluded(rng):
    rgb, truth = _blobs()
    image = rgb.astype(np.float64)
    pen = np.zeros(truth.shape, bool)
    rr, cc = line(240, 5, 235, 310)
    pen[rr, cc] = True
    pen = ndimage.binary_dilation(pen, iterations=3)
    image[pen] = BLUE_INK
    rgb = _finish(image, rng)
    with_pen = tissue_mask(rgb, mpp=8.0, ignore_pen=False)
    assert with_pen[pen & ~truth].mean() > 0.9  # ink is saturated: without the rule it is tissue
    mask = tissue_mask(rgb, mpp=8.0)
    assert not mask[pen & ~truth].any()
    assert _iou(mask, truth) >= 0.95


def test_pen_over_tissue_stays_tissue(rng):
    shape = (160, 160)
    truth = np.zeros(shape, bool)
    truth[30:130, 30:130] = True
    image = _glass(shape, rng)
    _paint_tissue(image, truth, rng)
    image[:, 75:85] = BLUE_INK  # a vertical stroke across glass and tissue
    image[truth & (np.arange(160) >= 85)[None] & (np.arange(160) < 90)[None]] = (150, 152, 150)
    mask = tissue_mask(_finish(image, rng), mpp=8.0)
    assert mask[40:120, 75:85].all()
    assert not mask[:25, 75:85].any() and not mask[135:, 75:85].any()
    assert _iou(mask, truth) >= 0.95


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [
        (BLUE_INK, True),
        ((40, 170, 90), True),  # green ink
        ((30, 30, 34), True),  # black ink
        (PINK, False),
        (PURPLE, False),
        ((90, 40, 110), False),  # dense hematoxylin
        (GLASS, False),
    ],
)
def test_pen_rule(rgb, expected):
    from skimage.color import rgb2hsv

    hsv = rgb2hsv(np.array([[rgb]], np.uint8))
    assert bool(pen_mask(hsv)[0, 0]) is expected


def test_small_specks_removed(rng):
    rgb, truth = _blobs()
    image = rgb.astype(np.float64)
    specks = np.zeros(truth.shape, bool)
    for y, x in [(10, 150), (230, 300), (130, 20), (20, 300)]:
        specks[y : y + 3, x : x + 3] = True  # 9 px at 8 µm/px = 576 µm²
    image[specks] = PURPLE
    mask = tissue_mask(_finish(image, rng), mpp=8.0)
    assert not mask[specks].any()
    assert _iou(mask, truth) >= 0.95


def test_holes_filled_up_to_min_hole(rng):
    shape = (160, 160)
    truth = np.zeros(shape, bool)
    truth[20:140, 20:140] = True
    small, big = np.zeros(shape, bool), np.zeros(shape, bool)
    small[50:56, 50:56] = True  # 36 px = 2304 µm² at 8 µm/px: filled
    big[80:110, 80:110] = True  # 900 px = 57600 µm²: kept
    image = _glass(shape, rng)
    _paint_tissue(image, truth & ~small & ~big, rng)
    rgb = _finish(image, rng)
    mask = tissue_mask(rgb, mpp=8.0)
    assert mask[small].all()
    assert not mask[85:105, 85:105].any()
    assert tissue_mask(rgb, mpp=8.0, min_hole_um2=100_000)[big].all()


def test_sizes_scale_with_mpp(rng):
    rgb, _ = _blobs()
    # The same image at 1 µm/px: blobs become ~0.006 mm² and fall under min_object.
    assert not tissue_mask(rgb, mpp=1.0, min_object_um2=20_000).any()
    assert tissue_mask(rgb, mpp=1.0).any()


# -- bad input ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rgb", "match"),
    [
        (np.zeros((8, 8, 3), np.float32), r"`rgb` must be uint8, got dtype float32"),
        (np.zeros((8, 8, 3), np.uint16), r"`rgb` must be uint8, got dtype uint16"),
        (np.zeros((8, 8), np.uint8), r"`rgb` must have shape \(H, W, 3\), got shape \(8, 8\)"),
        (np.zeros((8, 8, 4), np.uint8), r"`rgb`.*got shape \(8, 8, 4\)"),
        (np.zeros((2, 8, 8, 3), np.uint8), r"`rgb`.*got shape \(2, 8, 8, 3\)"),
        (np.zeros((0, 8, 3), np.uint8), r"`rgb`.*got shape \(0, 8, 3\)"),
    ],
)
def test_bad_rgb(rgb, match):
    with pytest.raises(ValueError, match=match):
        tissue_mask(rgb)


def test_rgb_not_array():
    with pytest.raises(TypeError, match="`rgb` must be a numpy array, got list"):
        tissue_mask([[[0, 0, 0]]])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mpp": 0}, r"`mpp` must be a finite number > 0, got 0"),
        ({"mpp": -0.5}, r"`mpp` must be a finite number > 0, got -0.5"),
        ({"mpp": float("nan")}, r"`mpp` must be .*got nan"),
        ({"min_object_um2": -1}, r"`min_object_um2` must be a finite number >= 0, got -1"),
        ({"closing_um": -2.0}, r"`closing_um` must be .*got -2.0"),
        ({"min_saturation": 1.5}, r"`min_saturation` must be in \[0, 1\], got 1.5"),
        ({"min_saturation": 0.3}, r"`min_saturation` \(0.3\) must be <= `max_saturation`"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tissue_mask(np.zeros((8, 8, 3), np.uint8), **kwargs)


# -- slides -----------------------------------------------------------------------
class _Spy:
    """Wrap a Slide, recording the levels read."""

    def __init__(self, slide: Slide) -> None:
        self._slide = slide
        self.levels: list[int] = []

    def __getattr__(self, name):
        return getattr(self._slide, name)

    def read_level_region(self, level, *args):
        self.levels.append(level)
        return self._slide.read_level_region(level, *args)


def test_slide_tissue_mask_svs(small_svs):
    with Slide(small_svs) as slide:  # 3000 x 2000 px, 0.25 µm/px, levels 1 and 4
        spy = _Spy(slide)
        mask, downsample = slide_tissue_mask(spy, target_mpp=8.0)
    assert downsample == 32.0
    assert set(spy.levels) == {1}  # level 0 is never read
    assert mask.shape == (-(-2000 // 32), -(-3000 // 32))
    # textured_rgb puts a band of glass over the top tenth; the rest is mostly colour.
    assert not mask[:5].any()
    assert mask[8:].mean() > 0.5


def test_slide_tissue_mask_without_mpp(generic_tiff):
    with Slide(generic_tiff) as slide:  # 2600 x 1900, levels 1/2/4, no mpp
        assert slide.mpp is None
        mask, downsample = slide_tissue_mask(slide, target_mpp=0.5)  # target ignored
    assert downsample == tissue.NO_MPP_DOWNSAMPLE
    assert mask.shape == (-(-1900 // 32), -(-2600 // 32))


def test_read_downsampled_in_bands_matches_one_read(wide_tiff, monkeypatch):
    with Slide(wide_tiff) as slide:  # single level 9000 x 2500, 0.5 µm/px
        whole, ds = read_downsampled(slide, 16)
        monkeypatch.setattr(tissue, "READ_BYTES", 3 * 9000 * 16 * 3)  # 3 output rows a band
        spy = _Spy(slide)
        banded, ds2 = read_downsampled(spy, 16)
    assert ds == ds2 == 16.0
    assert len(spy.levels) == -(-2500 // 48)
    np.testing.assert_array_equal(whole, banded)
    expected = slide_image_mean(wide_tiff, 16)
    np.testing.assert_array_equal(banded, expected)


def test_read_downsampled_reports_each_band(wide_tiff, monkeypatch):
    monkeypatch.setattr(tissue, "READ_BYTES", 3 * 9000 * 16 * 3)
    calls = []
    with Slide(wide_tiff) as slide:
        read_downsampled(slide, 32, progress=lambda *a: calls.append(a))
    assert len(calls) > 3
    assert calls == [(i, len(calls)) for i in range(1, len(calls) + 1)]


@pytest.mark.parametrize("factor", [2, 16, 17, 32, 34, 48, 255])
@pytest.mark.parametrize("fill", ["random", "white"])
def test_block_sums_are_exact_at_any_factor(factor, fill):
    # Above 16, factors with a divisor <= 16 sum in two steps (34: 2, then 17),
    # primes in one; all equal the plain sum, white (the largest sums) included.
    from napari_histo.resample import block_sums

    shape = (factor * 3, factor * 5, 3)
    rng = np.random.default_rng(factor)
    image = (
        np.full(shape, 255, np.uint8) if fill == "white" else rng.integers(0, 256, shape, np.uint8)
    )
    expected = image.reshape(3, factor, 5, factor, 3).sum(axis=(1, 3), dtype=np.uint64)
    np.testing.assert_array_equal(block_sums(image, factor), expected)


def slide_image_mean(path, k: int) -> np.ndarray:
    with Slide(path) as slide:
        w, h = slide.dimensions
        full = slide.read_region(0, 0, 0, w, h).astype(np.float64)
    pad = np.pad(full, ((0, -h % k), (0, -w % k), (0, 0)), constant_values=255)
    blocks = pad.reshape(pad.shape[0] // k, k, pad.shape[1] // k, k, 3).mean(axis=(1, 3))
    return np.floor(blocks + 0.5).astype(np.uint8)


def test_slide_tissue_mask_bounded(small_svs, monkeypatch):
    monkeypatch.setattr(tissue, "MAX_MASK_PX", 1000)
    with Slide(small_svs) as slide, pytest.raises(ValueError, match=r"`target_mpp` 0\.5 gives"):
        slide_tissue_mask(slide, target_mpp=0.5)


@pytest.mark.parametrize("target_mpp", [0, -1.0, float("inf")])
def test_slide_tissue_mask_bad_target(small_svs, target_mpp):
    with Slide(small_svs) as slide, pytest.raises(ValueError, match="`target_mpp` must be"):
        slide_tissue_mask(slide, target_mpp=target_mpp)


# -- synthetic slides with ground truth ------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 5])
def test_iou_against_synthetic_truth(tmp_path, seed):
    from napari_histo.synthetic import read_truth, write_synthetic_slide

    synthetic = write_synthetic_slide(tmp_path / "s.svs", 8192, seed=seed, nuclei_regions=None)
    truth = read_truth(synthetic.truth_path)
    expected = np.asarray(truth.tissue[...]).astype(bool)
    with Slide(synthetic.path) as slide:
        mask, downsample = slide_tissue_mask(slide, target_mpp=8.0)
    assert downsample == 32.0
    got = resize(mask.astype(np.float32), expected.shape, order=0) > 0.5
    assert _iou(got, expected) >= 0.95


def test_tissue_mask_memory_stays_near_the_float32_hsv(rng):
    """rgb2hsv in float64 on a whole mask image peaked near 1 GB on a 100k² slide."""
    import tracemalloc

    from skimage import color

    from napari_histo.tissue import _rgb2hsv_float32

    small = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        _rgb2hsv_float32(small, rows=64), color.rgb2hsv(small).astype(np.float32)
    )
    rgb = np.full((2048, 2048, 3), 240, np.uint8)
    rgb[500:1500, 400:1600] = (180, 90, 160)  # one pink tissue block
    tracemalloc.start()
    try:
        mask = tissue_mask(rgb, mpp=8.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert mask[1000, 1000] and not mask[100, 100]
    hsv_float32 = rgb.size * 4
    # Measured: 142 MB now, 435 MB for rgb2hsv alone before (float64 temporaries).
    assert peak < 4 * hsv_float32, f"peak {peak / 2**20:.0f} MB"
