"""Tests of the synthetic H&E slide generator: real files, real OpenSlide, no mocks."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
from skimage.color import rgb2hed

from napari_histo.errors import StoreError
from napari_histo.synthetic import (
    SyntheticSlide,
    read_truth,
    truth_path_for,
    write_synthetic_slide,
)

SIZE = (4096, 3072)  # (width, height): two levels, non-square


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> SyntheticSlide:
    d = tmp_path_factory.mktemp("a")
    return write_synthetic_slide(d / "a.svs", SIZE, seed=7, workers=2)


@pytest.fixture(scope="module")
def slide_w1(tmp_path_factory) -> SyntheticSlide:
    d = tmp_path_factory.mktemp("b")
    return write_synthetic_slide(d / "a.svs", SIZE, seed=7, workers=1)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """2048² slides: seed 7 with and without artefacts, and seed 8."""
    d = tmp_path_factory.mktemp("small")
    kw = dict(workers=1, nuclei_regions=None)
    return {
        "a": write_synthetic_slide(d / "a.svs", 2048, seed=7, **kw),
        "plain": write_synthetic_slide(d / "p.svs", 2048, seed=7, artefacts=False, **kw),
        "b": write_synthetic_slide(d / "b.svs", 2048, seed=8, **kw),
    }


def _rgb(path, level=0, loc=(0, 0), size=None) -> np.ndarray:
    with openslide.OpenSlide(path) as o:
        size = size or o.level_dimensions[level]
        return np.asarray(o.read_region(loc, level, size).convert("RGB"))


def _tissue_box(slide: SyntheticSlide, px: int = 1024) -> tuple[int, int]:
    """Level-0 origin of the ``px``² window with the most nuclei."""
    t = read_truth(slide.truth_path)
    lab = np.asarray(t.nuclei[...])
    h, w = lab.shape
    best, where = -1, (0, 0)
    for y in range(0, h - px + 1, px // 2):
        for x in range(0, w - px + 1, px // 2):
            n = np.count_nonzero(lab[y : y + px : 8, x : x + px : 8])
            if n > best:
                best, where = n, (x, y)
    return where


def test_opens_as_aperio_pyramid(slide):
    assert slide.path.name == "a.svs" and slide.truth_path == truth_path_for(slide.path)
    assert (slide.width, slide.height, slide.seed, slide.mpp) == (*SIZE, 7, 0.25)
    with openslide.OpenSlide(slide.path) as o:
        assert o.properties["openslide.vendor"] == "aperio"
        assert float(o.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(o.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        assert o.properties["openslide.objective-power"] == "40"
        assert o.level_dimensions == ((4096, 3072), (1024, 768))
        assert o.level_downsamples == pytest.approx((1.0, 4.0))
        assert set(o.associated_images) == {"thumbnail", "label", "macro"}
        thumb = np.asarray(o.associated_images["thumbnail"].convert("RGB"))
    assert thumb.shape[1] == 1024 and thumb.std() > 5


def test_big_slide_has_more_levels(tmp_path):
    s = write_synthetic_slide(
        tmp_path / "t.svs", (9000, 1024), seed=1, artefacts=False, nuclei_regions=None, workers=1
    )
    with openslide.OpenSlide(s.path) as o:
        assert o.level_dimensions == ((9000, 1024), (2250, 256), (562, 64))
    l1 = _rgb(s.path, 1).astype(np.float64)[:, :2248]
    avg = l1.reshape(64, 4, 562, 4, 3).mean(axis=(1, 3))
    assert np.abs(avg - _rgb(s.path, 2)).mean() < 6  # JPEG error at 64x; last band included


def test_same_seed_same_pixels_whatever_workers(slide, slide_w1):
    assert np.array_equal(_rgb(slide.path, 1), _rgb(slide_w1.path, 1))
    x, y = _tissue_box(slide)
    a = _rgb(slide.path, 0, (x, y), (1024, 1024))
    assert np.array_equal(a, _rgb(slide_w1.path, 0, (x, y), (1024, 1024)))
    assert a.std() > 10  # it is tissue, not glass


def test_different_seeds_differ(small):
    a, b = _rgb(small["a"].path), _rgb(small["b"].path)
    assert np.abs(a.astype(int) - b).mean() > 5


def test_artefacts_change_pixels(small):
    a, p = _rgb(small["a"].path), _rgb(small["plain"].path)
    assert read_truth(small["plain"].truth_path).attrs["artefacts"] == []
    assert read_truth(small["a"].truth_path).attrs["artefacts"]
    diff = np.abs(a.astype(int) - p).max(axis=2) > 20
    assert 0.001 < diff.mean() < 0.9


def test_only_requested_artefacts(tmp_path):
    s = write_synthetic_slide(
        tmp_path / "pen.svs", 1024, seed=3, artefacts=["pen"], nuclei_regions=None, workers=1
    )
    assert read_truth(s.truth_path).attrs["artefacts"] == ["pen"]


def test_reduced_level_is_area_average(slide):
    l0 = _rgb(slide.path, 0).astype(np.float64)
    l1 = _rgb(slide.path, 1).astype(np.float64)
    avg = l0.reshape(768, 4, 1024, 4, 3).mean(axis=(1, 3))
    assert np.abs(avg - l1).mean() < 2.5  # JPEG error only


def test_truth_masks(slide):
    t = read_truth(slide.truth_path)
    assert t.downsample == slide.truth_downsample == 16
    assert t.tissue.shape == t.tumor.shape == (3072 // 16, 4096 // 16)
    assert t.nuclei.shape == (3072, 4096)
    assert t.attrs["seed"] == 7 and t.attrs["mpp"] == 0.25
    assert (t.attrs["width"], t.attrs["height"]) == SIZE
    assert t.regions == ((0, 0, 4096, 3072),)
    tissue, tumor = np.asarray(t.tissue[...]), np.asarray(t.tumor[...])
    assert set(np.unique(tissue)) <= {0, 1}
    assert 0.15 < tissue.mean() < 0.5
    assert not np.any(tumor & ~tissue)
    assert 0.1 < tumor.sum() / tissue.sum() < 0.5
    # glass outside the tissue mask, stained tissue inside it
    grey = _rgb(slide.path, 1).mean(axis=2)[::4, ::4]
    assert grey[tissue == 0].mean() > 230 > grey[tissue == 1].mean()


def test_nuclei_labels_are_dark_haematoxylin(slide):
    x, y = _tissue_box(slide)
    rgb = _rgb(slide.path, 0, (x, y), (1024, 1024))
    lab = np.asarray(read_truth(slide.truth_path).nuclei[y : y + 1024, x : x + 1024])
    hema = rgb2hed(rgb)[..., 0]
    inside, outside = hema[lab > 0].mean(), hema[lab == 0].mean()
    assert (lab > 0).mean() > 0.05
    assert inside > outside + 3 * hema[lab == 0].std() / 2


def test_tumor_nuclei_are_larger(slide):
    t = read_truth(slide.truth_path)
    lab = np.asarray(t.nuclei[...]).ravel()
    ids, inv, area = np.unique(lab, return_inverse=True, return_counts=True)
    rows = np.bincount(inv, weights=np.repeat(np.arange(3072), 4096)) / area
    cols = np.bincount(inv, weights=np.tile(np.arange(4096), 3072)) / area
    ids, rows, cols, area = ids[1:], rows[1:], cols[1:], area[1:]
    in_tumor = np.asarray(t.tumor[...])[(rows // 16).astype(int), (cols // 16).astype(int)] > 0
    assert in_tumor.sum() > 50 and (~in_tumor).sum() > 50
    assert area[in_tumor].mean() > 2 * area[~in_tumor].mean()
    cls = t.class_of(ids)
    assert set(np.unique(cls)) == {1, 2, 3}
    assert in_tumor[cls == 2].mean() > 0.97  # tumour nuclei lie in the mask (up to its border)
    assert len(np.unique(ids)) == len(ids) == t.attrs["nuclei_count"]


def test_explicit_regions_only(tmp_path):
    s = write_synthetic_slide(
        tmp_path / "r.svs", 2048, seed=4, nuclei_regions=[(512, 256, 700, 900)], workers=1
    )
    t = read_truth(s.truth_path)
    assert t.regions == ((512, 256, 700, 900),)
    lab = np.asarray(t.nuclei[...])
    outside = lab.copy()
    outside[256:1156, 512:1212] = 0
    assert not outside.any() and lab.any()


def test_progress_counts_all_tiles(tmp_path):
    calls = []
    write_synthetic_slide(
        tmp_path / "p.svs",
        4096,
        seed=2,
        nuclei_regions=None,
        workers=1,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1] == (16 * 16 + 4 * 4, 16 * 16 + 4 * 4)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_write_is_atomic_on_error(tmp_path):
    def boom(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_synthetic_slide(tmp_path / "x.svs", 2048, seed=1, workers=2, progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_replaces_existing_outputs(tmp_path):
    p = tmp_path / "x.svs"
    write_synthetic_slide(p, 1024, seed=1, workers=1, nuclei_regions=None)
    s = write_synthetic_slide(p, 1024, seed=2, workers=1, nuclei_regions=None)
    assert read_truth(s.truth_path).attrs["seed"] == 2
    assert sorted(q.name for q in tmp_path.iterdir()) == ["x.svs", "x.truth.zarr"]


def test_unwritable_directory_names_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    target = blocker / "x.svs"
    with pytest.raises(OSError, match=r"x\.svs"):
        write_synthetic_slide(target, 1024, workers=1)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["file"]


def test_read_truth_rejects_other_paths(tmp_path):
    with pytest.raises(StoreError, match=r"nothing\.zarr"):
        read_truth(tmp_path / "nothing.zarr")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": 100}, ValueError, r"`size` must be >= 1024 px, got 100"),
        ({"size": 200_000}, ValueError, r"`size` must be <= 131072 px, got 200000"),
        ({"size": 2048.0}, TypeError, r"`size`.*2048\.0"),
        ({"size": (2048, 10)}, ValueError, r"`size`.*\(2048, 10\)"),
        ({"seed": -1}, ValueError, r"`seed`.*-1"),
        ({"tile_px": 250}, ValueError, r"`tile_px` must be a multiple of 16, got 250"),
        ({"tile_px": 32}, ValueError, r"`tile_px`.*32"),
        ({"jpeg_quality": 0}, ValueError, r"`jpeg_quality`.*got 0"),
        ({"jpeg_quality": 101}, ValueError, r"`jpeg_quality`.*got 101"),
        ({"artefacts": ["pen", "smudge"]}, ValueError, r"`artefacts`.*'smudge'"),
        ({"mpp": 0.0}, ValueError, r"`mpp`.*0\.0"),
        ({"workers": 0}, ValueError, r"`workers`.*got 0"),
        ({"nuclei_regions": "some"}, ValueError, r"`nuclei_regions`.*'some'"),
        ({"nuclei_regions": [(0, 0, 5000, 10)]}, ValueError, r"`nuclei_regions`.*5000"),
        ({"progress": 3}, TypeError, r"`progress`.*int"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    kw = {"size": 1024, "workers": 1} | kwargs
    with pytest.raises(error, match=match):
        write_synthetic_slide(tmp_path / "bad.svs", **kw)
    assert list(tmp_path.iterdir()) == []
