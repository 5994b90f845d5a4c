"""Nuclei segmentation, seamless tiling and measurements (napari_histo.nuclei.classical)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_histo.io.slide import Slide
from napari_histo.metrics import aggregated_jaccard_index, panoptic_quality
from napari_histo.nuclei.classical import (
    ClassicalParams,
    iter_segment_region,
    segment_nuclei,
    segment_region,
)
from napari_histo.nuclei.features import (
    measure_nuclei,
    nuclei_to_geojson_features,
    read_nuclei_csv,
    write_nuclei_csv,
)
from napari_histo.synthetic import read_truth, write_synthetic_slide

MPP = 0.25  # synthetic slides' level-0 µm/px


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 2048² synthetic slide (seed 5: tumour, normal tissue, a pen mark) and its truth."""
    path = tmp_path_factory.mktemp("nuclei") / "syn.svs"
    made = write_synthetic_slide(path, size=2048, seed=5, workers=1)
    truth = read_truth(made.truth_path)
    with Slide(made.path) as slide:
        yield slide, truth


def _disk(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


# -- segmentation quality -------------------------------------------------------


def test_classical_on_synthetic_tiles(synthetic):
    slide, truth = synthetic
    labels = np.asarray(truth.nuclei[...])
    scores = []
    for y in range(0, 2048, 512):
        for x in range(0, 2048, 512):
            gt = labels[y : y + 512, x : x + 512]
            if len(np.unique(gt)) < 16:  # mostly glass: too few nuclei to score
                continue
            pred = segment_nuclei(slide.read_region(0, x, y, 512, 512), MPP)
            assert pred.dtype == np.uint32
            scores.append((aggregated_jaccard_index(gt, pred), *panoptic_quality(gt, pred)))
    aji, pq, dq, sq = np.mean(scores, axis=0)
    print(
        f"\nclassical on {len(scores)} synthetic 512² tiles: AJI {aji:.3f} PQ {pq:.3f} "
        f"DQ {dq:.3f} SQ {sq:.3f}"
    )
    assert len(scores) >= 6
    assert aji >= 0.7
    assert pq >= 0.65
    assert dq >= 0.8
    assert min(s[0] for s in scores) >= 0.5


def test_blank_and_stroma_only_give_no_nuclei():
    white = np.full((256, 256, 3), 245, np.uint8)
    assert segment_nuclei(white, 0.5).max() == 0
    pink = np.empty((256, 256, 3), np.uint8)
    pink[:] = (235, 160, 200)
    assert segment_nuclei(pink, 0.5).max() == 0
    assert segment_nuclei(white[:1, :1], 0.5).shape == (1, 1)


def test_dark_disks_are_found_and_touching_ones_split():
    rgb = np.full((160, 200, 3), (235, 170, 205), np.uint8)  # pink stroma
    rgb[:, :20] = 245  # some glass
    for centre in [(40, 60), (40, 81), (110, 140)]:  # first two touch
        rgb[_disk(rgb.shape[:2], centre, 11)] = (70, 50, 130)
    labels = segment_nuclei(rgb, 0.5)
    assert labels.max() == 3
    for centre in [(40, 60), (40, 81), (110, 140)]:
        assert labels[centre] > 0
    assert len({labels[40, 60], labels[40, 81], labels[110, 140]}) == 3


def test_clear_border():
    rgb = np.full((100, 100, 3), (235, 170, 205), np.uint8)
    rgb[_disk((100, 100), (50, 4), 10)] = (70, 50, 130)
    rgb[_disk((100, 100), (50, 60), 10)] = (70, 50, 130)
    assert segment_nuclei(rgb, 0.5).max() == 2
    cleared = segment_nuclei(rgb, 0.5, clear_border=True)
    assert cleared.max() == 1 and cleared[50, 60] == 1


def test_real_aperio_crop(cmu_svs):
    with Slide(cmu_svs) as slide:
        mpp = slide.require_mpp()
        rgb = slide.read_region(0, 700, 500, 1024, 1024)
    labels = segment_nuclei(rgb, mpp)
    table = measure_nuclei(labels, rgb, mpp)
    n = int(labels.max())
    median_area = float(np.median(table["area_um2"]))
    print(f"\nCMU-1-Small-Region 1024² crop: {n} nuclei, median area {median_area:.1f} µm²")
    assert 200 <= n <= 3000
    assert 8 <= median_area <= 80
    assert table["area_um2"].min() >= ClassicalParams().min_area_um2 - 1e-9
    assert table["area_um2"].max() <= ClassicalParams().max_area_um2 + 1e-9


# -- seamless tiling --------------------------------------------------------------


REGION = (0, 256, 2048, 1536)


@pytest.fixture(scope="module")
def whole_region(synthetic):
    slide, _ = synthetic
    return segment_region(slide, REGION, tile_px=4096)  # one tile


def _assert_instances_sound(labels):
    ids = np.unique(labels)
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, len(ids)))  # unique, sequential
    for index, box in enumerate(ndi.find_objects(labels)):
        _, n = ndi.label(labels[box] == index + 1)
        assert n == 1, f"label {index + 1} is in {n} pieces"


def test_one_tile_equals_segment_nuclei(synthetic, whole_region):
    slide, _ = synthetic
    x, y, w, h = REGION
    direct = segment_nuclei(slide.read_region(0, x, y, w, h), MPP)
    assert aggregated_jaccard_index(direct, whole_region) == pytest.approx(1.0)


def test_tiled_equals_one_call(synthetic, whole_region):
    slide, _ = synthetic
    events = []
    tiled = segment_region(slide, REGION, tile_px=512, progress=lambda d, t: events.append((d, t)))
    assert tiled.shape == (1536, 2048) and tiled.dtype == np.uint32
    assert events[-1][0] == events[-1][1] and len(events) == events[-1][1]
    assert int(tiled.max()) > 100
    _assert_instances_sound(tiled)
    # Same nuclei, pixel for pixel, modulo relabeling: a bijective label mapping.
    assert np.array_equal(tiled > 0, whole_region > 0)
    pairs = np.unique(np.stack([tiled[tiled > 0], whole_region[tiled > 0]]), axis=1)
    assert len(pairs[0]) == tiled.max() == whole_region.max()
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == len(pairs[0])


def test_minimum_overlap_cuts_and_duplicates_nothing(synthetic, whole_region):
    slide, _ = synthetic
    overlap = math.ceil(2 * ClassicalParams().max_diameter_um / MPP)
    tiled = segment_region(slide, REGION, tile_px=384, overlap_px=overlap)
    _assert_instances_sound(tiled)
    # Without full context the background estimate differs a little near seams,
    # but every nucleus is whole and present once.
    _, dq, _ = panoptic_quality(whole_region, tiled)
    assert dq >= 0.97
    assert aggregated_jaccard_index(whole_region, tiled) >= 0.95
    # Tile seams: every label crossing a seam row is whole, with pixels on both sides.
    step = 384 - overlap
    for row in range(step, 1536 - 1, step):
        for lab in np.setdiff1d(np.unique(tiled[row]), [0]):
            rows = np.nonzero((tiled == lab).any(axis=1))[0]
            assert rows.min() <= row <= rows.max()


def test_generator_form(synthetic):
    slide, _ = synthetic
    gen = iter_segment_region(slide, (512, 512, 700, 600), tile_px=600)
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            labels = stop.value
            break
    total = progress[0][1]
    assert [p[0] for p in progress] == list(range(1, total + 1))
    assert labels.shape == (600, 700) and labels.dtype == np.uint32


def test_region_at_lower_level(tmp_path):
    made = write_synthetic_slide(
        tmp_path / "big.svs", size=4096, seed=2, workers=1, nuclei_regions=None
    )
    with Slide(made.path) as slide:
        labels = segment_region(slide, (0, 0, 4096, 4096), level=1, tile_px=1024)
    assert labels.shape == (1024, 1024)  # level 1 is downsample 4


# -- measurements ---------------------------------------------------------------


def test_disk_measurements():
    radius, mpp = 20, 0.5
    labels = np.zeros((100, 120), np.uint32)
    labels[_disk(labels.shape, (50, 60), radius)] = 3
    rgb = np.full((100, 120, 3), 200, np.uint8)
    table = measure_nuclei(labels, rgb, mpp, origin_l0=(1000, 2000), downsample=2.0)
    assert list(table["id"]) == [3]
    assert table["area_um2"][0] == pytest.approx(math.pi * radius**2 * mpp**2, rel=0.05)
    assert table["eccentricity"][0] < 0.1
    assert table["solidity"][0] > 0.95
    # Pixel (row 50, col 60) at downsample 2 covers level-0 x in [1120, 1122): centre 1121.
    mpp_l0 = mpp / 2.0
    assert table["centroid_x_um"][0] == pytest.approx(1121 * mpp_l0)
    assert table["centroid_y_um"][0] == pytest.approx(2101 * mpp_l0)
    assert set(table) == {
        "id",
        "centroid_x_um",
        "centroid_y_um",
        "area_um2",
        "eccentricity",
        "solidity",
        "mean_haematoxylin",
    }


def test_tumor_probability_column():
    labels = np.zeros((50, 50), np.uint32)
    labels[5:10, 5:10] = 1
    labels[30:40, 30:40] = 2
    rgb = np.full((50, 50, 3), 200, np.uint8)
    seen = []

    def prob(xy):
        seen.append(xy)
        return (xy[:, 0] > 20).astype(float)

    table = measure_nuclei(labels, rgb, 0.5, tumor_probability=prob)
    assert seen[0].shape == (2, 2)
    assert list(table["tumor_probability"]) == [0.0, 1.0]
    with pytest.raises(ValueError, match="tumor_probability"):
        measure_nuclei(labels, rgb, 0.5, tumor_probability=lambda xy: np.zeros(5))


def test_tumor_nuclei_larger_than_normal(synthetic):
    slide, truth = synthetic
    rgb = slide.read_region(0, 0, 0, 2048, 2048)
    labels = segment_region(slide, (0, 0, 2048, 2048), tile_px=1024)
    table = measure_nuclei(labels, rgb, MPP)
    gt = np.asarray(truth.nuclei[...])
    cols = np.clip(np.floor(table["centroid_x_um"] / MPP).astype(int), 0, 2047)
    rows = np.clip(np.floor(table["centroid_y_um"] / MPP).astype(int), 0, 2047)
    cls = truth.class_of(gt[rows, cols])
    tumor, normal = table["area_um2"][cls == 2], table["area_um2"][cls == 1]
    print(
        f"\nmean area: tumour {tumor.mean():.1f} µm² (n={len(tumor)}), "
        f"normal {normal.mean():.1f} µm² (n={len(normal)})"
    )
    assert len(tumor) >= 20 and len(normal) >= 20
    assert tumor.mean() > 1.5 * normal.mean()


def test_csv_round_trip(tmp_path):
    labels = np.zeros((60, 60), np.uint32)
    labels[_disk((60, 60), (20, 20), 8)] = 1
    labels[_disk((60, 60), (40, 45), 5)] = 2
    rgb = np.full((60, 60, 3), 180, np.uint8)
    table = measure_nuclei(labels, rgb, 0.37, tumor_probability=lambda xy: np.full(len(xy), 0.3))
    path = write_nuclei_csv(tmp_path / "nuclei.csv", table)
    assert [p.name for p in tmp_path.iterdir()] == ["nuclei.csv"]  # no temporary left
    back = read_nuclei_csv(path)
    assert list(back) == list(table)
    for key in table:
        np.testing.assert_array_equal(back[key], table[key])
    assert back["id"].dtype == np.int64
    write_nuclei_csv(path, {k: v[:0] for k, v in table.items()})  # replaces, empty ok
    assert len(read_nuclei_csv(path)["id"]) == 0


def test_geojson_features():
    labels = np.zeros((60, 60), np.uint32)
    labels[_disk((60, 60), (20, 20), 8)] = 4
    labels[40:50, 40:52] = 9
    rgb = np.full((60, 60, 3), 180, np.uint8)
    table = measure_nuclei(labels, rgb, 0.5)
    features = nuclei_to_geojson_features(labels, table, origin_l0=(100, 200), downsample=1.0)
    assert len(features) == len(table["id"]) == 2
    json.dumps(features)
    rect = features[1]
    assert rect["properties"]["objectType"] == "detection"
    assert rect["properties"]["classification"]["name"] == "Nucleus"
    assert set(rect["properties"]["measurements"]) == set(table) - {"id"}
    ring = np.array(rect["geometry"]["coordinates"][0])
    assert np.array_equal(ring[0], ring[-1])
    # Rectangle rows 40..49, cols 40..51: level-0 x in [140, 152], y in [240, 250], the
    # outline passing through the middle of the edge pixels' outer halves.
    assert ring[:, 0].min() >= 140 and ring[:, 0].max() <= 152
    assert ring[:, 1].min() >= 240 and ring[:, 1].max() <= 250
    assert ring[:, 0].max() - ring[:, 0].min() == pytest.approx(12, abs=1)


# -- bad input --------------------------------------------------------------------


GOOD = np.full((32, 32, 3), 200, np.uint8)


@pytest.mark.parametrize(
    ("rgb", "mpp", "method", "match"),
    [
        (GOOD.astype(float), 0.5, "classical", "`rgb` must be uint8"),
        (GOOD[..., 0], 0.5, "classical", r"`rgb` must have shape \(H, W, 3\)"),
        (np.zeros((4, 4, 4), np.uint8), 0.5, "classical", "`rgb` must have shape"),
        ([[1, 2, 3]], 0.5, "classical", "`rgb` must be a numpy array"),
        (GOOD, 0.0, "classical", "`mpp` must be a finite number > 0, got 0.0"),
        (GOOD, -0.5, "classical", "`mpp` .* got -0.5"),
        (GOOD, float("nan"), "classical", "`mpp`"),
        (GOOD, "0.5", "classical", "`mpp`"),
        (GOOD, 0.5, "stardist", "`method` must be one of .* got 'stardist'"),
        (GOOD, 5.0, "learned", "`mpp` 5 µm/px is outside what the learned nuclei model"),
    ],
)
def test_segment_bad_input(rgb, mpp, method, match):
    with pytest.raises(ValueError, match=match):
        segment_nuclei(rgb, mpp, method)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"region_l0": (0, 0, 5000, 10)}, "region_l0"),
        ({"region_l0": (0, 0, 10)}, "region_l0"),
        ({"region_l0": (-1, 0, 10, 10)}, "region_l0"),
        ({"overlap_px": 20}, "overlap_px` must be >= 2x the largest nucleus diameter"),
        ({"tile_px": 100, "overlap_px": 200}, "tile_px` must exceed"),
        ({"level": 9}, "`level` must be <"),
        ({"method": "nope"}, "method"),
    ],
)
def test_region_bad_input(synthetic, kwargs, match):
    slide, _ = synthetic
    kwargs = {"region_l0": (0, 0, 100, 100), **kwargs}
    with pytest.raises(ValueError, match=match):
        segment_region(slide, **kwargs)
    with pytest.raises(ValueError, match=match):
        iter_segment_region(slide, **kwargs)  # raised at the call, before any next()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma_um": 0}, "sigma_um"),
        ({"min_area_um2": 50, "max_area_um2": 10}, "max_area_um2"),
        ({"tissue_od": -1}, "tissue_od"),
    ],
)
def test_params_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassicalParams(**kwargs)


def test_measure_bad_input():
    with pytest.raises(ValueError, match="`labels` shape"):
        measure_nuclei(np.zeros((3, 3), np.uint32), GOOD, 0.5)
    with pytest.raises(ValueError, match="`labels` must have an integer dtype"):
        measure_nuclei(np.zeros((32, 32)), GOOD, 0.5)
    with pytest.raises(ValueError, match="`downsample`"):
        measure_nuclei(np.zeros((32, 32), np.uint32), GOOD, 0.5, downsample=0)
