"""Slide measurements on hand-computed arrays, and measure_run on a real result store."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import pdist

from napari_histo.analysis.measure import (
    ITC_MAX_MM,
    MICRO_MAX_MM,
    area_mm2,
    find_lesions,
    measure_arrays,
    nuclei_counts,
    size_class,
    slide_size_class,
    tumor_bed,
    tumor_burden,
)
from napari_histo.analysis.stored import measure_run
from napari_histo.errors import StoreError


def rectangle(shape=(30, 40), rows=slice(5, 15), cols=slice(5, 25), value=0.9):
    probability = np.zeros(shape, np.float32)
    probability[rows, cols] = value
    return probability


def shoelace(xy):
    x, y = xy[:, 0], xy[:, 1]
    return abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))) / 2


# -- areas and lesions ---------------------------------------------------------------
def test_rectangle_area_diameter_bbox_outline():
    probability = rectangle()  # 10 x 20 px at 5 µm/px
    assert area_mm2(probability > 0, 5.0) == pytest.approx(0.005)
    (lesion,) = find_lesions(probability, 5.0, origin_l0=(100, 200), downsample=4.0)
    assert lesion.label == 1
    assert lesion.area_mm2 == pytest.approx(200 * 25 / 1e6)
    # Feret between pixel corners: the rectangle's diagonal, sqrt(10² + 20²) px.
    assert lesion.longest_diameter_mm == pytest.approx(math.hypot(10, 20) * 5 / 1000)
    assert lesion.mean_probability == pytest.approx(0.9)
    assert lesion.mean_epistemic is None
    assert lesion.size_class == "ITC"
    # Grid px (i, j) covers level-0 [100 + 4j, 100 + 4(j+1)) x [200 + 4i, ...).
    assert lesion.bbox_l0 == (120, 220, 80, 40)
    outline = lesion.outline_l0
    assert outline.shape[1] == 2 and not np.array_equal(outline[0], outline[-1])
    assert outline[:, 0].min() == 120 and outline[:, 0].max() == 200
    assert outline[:, 1].min() == 220 and outline[:, 1].max() == 260
    # Along the pixel edges, each corner cut at 45° (4 triangles of 1/8 px²).
    assert shoelace(outline) == pytest.approx((200 - 4 / 8) * 16)


def test_single_pixel_measures_its_diagonal():
    probability = np.zeros((5, 5))
    probability[2, 3] = 1.0
    (lesion,) = find_lesions(probability, 8.0, origin_l0=(10, 20), downsample=2.0)
    assert lesion.longest_diameter_mm == pytest.approx(math.sqrt(2) * 8 / 1000)
    assert lesion.area_mm2 == pytest.approx(64e-6)
    assert lesion.bbox_l0 == (16, 24, 2, 2)


def test_two_squares_sorted_by_area_with_level0_bbox():
    probability = np.zeros((40, 60), np.float32)
    probability[1:5, 3:7] = 0.6  # 4 x 4, first in raster order
    probability[10:16, 30:36] = 0.8  # 6 x 6
    epistemic = np.where(probability == 0.6, 0.1, 0.3).astype(np.float32)
    lesions = find_lesions(
        probability, 2.0, epistemic=epistemic, origin_l0=(1000, 2000), downsample=2.5
    )
    assert [lesion.label for lesion in lesions] == [1, 2]
    big, small = lesions
    assert big.area_mm2 == pytest.approx(36 * 4e-6) and small.area_mm2 == pytest.approx(16 * 4e-6)
    assert big.mean_probability == pytest.approx(0.8)
    assert small.mean_probability == pytest.approx(0.6)
    assert big.mean_epistemic == pytest.approx(0.3) and small.mean_epistemic == pytest.approx(0.1)
    # x: 1000 + 30 * 2.5 = 1075 to 1000 + 36 * 2.5 = 1090.
    assert big.bbox_l0 == (1075, 2025, 15, 15)
    # Non-integer edges: x 1007.5 to 1017.5 -> 1007..1018; y 2002.5 to 2012.5 -> 2002..2013.
    assert small.bbox_l0 == (1007, 2002, 11, 11)
    assert big.longest_diameter_mm == pytest.approx(math.hypot(6, 6) * 2 / 1000)


def test_eight_connected_diagonal_is_one_lesion():
    probability = np.eye(4)
    (lesion,) = find_lesions(probability, 1.0)
    assert lesion.longest_diameter_mm == pytest.approx(math.hypot(4, 4) / 1000)
    assert len(find_lesions(probability, 1.0, min_area_um2=4.0)) == 1
    assert find_lesions(probability, 1.0, min_area_um2=4.1) == ()


def test_outline_of_a_ring_is_its_outer_boundary():
    probability = np.zeros((12, 12))
    probability[1:11, 1:11] = 1
    probability[4:8, 4:8] = 0  # a 4 x 4 hole
    (lesion,) = find_lesions(probability, 1.0)
    assert lesion.area_mm2 == pytest.approx((100 - 16) * 1e-6)
    assert shoelace(lesion.outline_l0) == pytest.approx(100 - 4 / 8)


def test_threshold_is_inclusive_and_no_lesion_case():
    probability = rectangle(value=0.5)
    assert len(find_lesions(probability, 1.0, threshold=0.5)) == 1
    assert find_lesions(probability, 1.0, threshold=0.51) == ()
    assert find_lesions(np.zeros((8, 8)), 1.0) == ()


def test_tissue_restricts_lesions():
    probability = rectangle()  # rows 5:15, cols 5:25
    tissue = np.ones(probability.shape, bool)
    tissue[:, 14:16] = False  # cut into 5:14 (9 wide) and 16:25 (9 wide)
    lesions = find_lesions(probability, 1.0, tissue=tissue)
    assert [round(lesion.area_mm2 * 1e6) for lesion in lesions] == [90, 90]
    assert [lesion.bbox_l0[0] for lesion in lesions] == [5, 16]  # ties: raster order
    measured = measure_arrays("s", probability, tissue, 1.0, min_area_um2=0.0)
    assert measured.tumor_area_mm2 == pytest.approx(180e-6)
    assert measured.tissue_area_mm2 == pytest.approx((30 * 40 - 2 * 30) * 1e-6)
    # Lesions below the smallest lesion area are noise: not tumor, not lesions.
    small = measure_arrays("s", probability, tissue, 1.0, min_area_um2=100.0)
    assert small.tumor_area_mm2 == 0.0 and small.lesions == () and small.size_class == "negative"


def test_tumor_bed_is_per_tissue_section_and_ignores_specks():
    tissue = np.zeros((40, 60), bool)
    tissue[5:35, 2:25] = True  # section A
    tissue[5:35, 35:58] = True  # section B, glass between
    probability = np.zeros(tissue.shape, np.float32)
    probability[10:14, 5:9] = 1.0  # 16 px in A
    probability[25:29, 18:22] = 1.0  # 16 px in A: A's bed is the hull of both
    probability[20:24, 40:44] = 1.0  # 16 px in B: its own bed, the glass not bridged
    probability[32, 50] = 1.0  # a 1 px speck in B: too small to count
    measured = measure_arrays("s", probability, tissue, 1.0, min_area_um2=10.0)
    hull_a = tumor_bed(probability[:, :30] >= 0.5, tissue[:, :30]).sum()
    assert measured.tumor_bed_area_mm2 == pytest.approx((hull_a + 16) * 1e-6)
    assert measured.tumor_area_mm2 == pytest.approx(48e-6)
    assert measured.tumor_burden == pytest.approx(48 / (hull_a + 16))


def test_feret_equals_brute_force_over_pixel_corners():
    rng = np.random.default_rng(7)
    probability = ndimage.gaussian_filter(rng.random((300, 300)), 3)
    threshold = float(np.quantile(probability, 0.8))
    lesions = find_lesions(probability, 1000.0, threshold=threshold)  # 1 px = 1 mm
    labels, count = ndimage.label(probability >= threshold, np.ones((3, 3)))
    assert len(lesions) == count > 20
    expected = []
    for k in range(1, count + 1):
        rows, cols = np.nonzero(labels == k)
        corners = np.concatenate(
            [np.column_stack([cols + dx, rows + dy]) for dx in (0, 1) for dy in (0, 1)]
        )
        expected.append(np.sqrt(pdist(corners.astype(float), "sqeuclidean").max()))
    got = sorted(lesion.longest_diameter_mm for lesion in lesions)
    np.testing.assert_allclose(got, sorted(expected), rtol=1e-12)


def test_large_grid_with_many_lesions_is_fast():
    rng = np.random.default_rng(0)
    probability = ndimage.gaussian_filter(rng.random((4096, 4096), np.float32), 8)
    probability = (probability - probability.min()) / (probability.max() - probability.min())
    start = time.perf_counter()
    lesions = find_lesions(probability, 8.0, threshold=0.62)
    elapsed = time.perf_counter() - start
    assert len(lesions) > 1000
    areas = [lesion.area_mm2 for lesion in lesions]
    assert areas == sorted(areas, reverse=True)
    assert elapsed < 6.0, f"{len(lesions)} lesions took {elapsed:.1f} s"


# -- tumor bed and burden ------------------------------------------------------------
def two_squares(a=10):
    tumor = np.zeros((40, 60), bool)
    tumor[10 : 10 + a, 10 : 10 + a] = True
    tumor[10 : 10 + a, 40 : 40 + a] = True
    return tumor


def test_bed_is_hull_of_two_squares_and_burden():
    tumor = two_squares()
    tissue = np.ones(tumor.shape, bool)
    bed = tumor_bed(tumor, tissue)
    expected = np.zeros_like(tumor)
    expected[10:20, 10:50] = True  # the hull: 10 x 40 px
    assert np.array_equal(bed, expected)
    assert tumor_burden(tumor, tissue) == pytest.approx(2 * 10**2 / (10 * 40))
    measured = measure_arrays("s", tumor.astype(np.float32), tissue, 2.0)
    assert measured.tumor_bed_area_mm2 == pytest.approx(400 * 4e-6)
    assert measured.tumor_burden == pytest.approx(0.5)


def test_bed_is_cut_by_tissue():
    tumor = two_squares()
    tissue = np.ones(tumor.shape, bool)
    tissue[:, 25:30] = False  # glass between the squares
    assert int(tumor_bed(tumor, tissue).sum()) == 400 - 10 * 5
    assert tumor_burden(tumor, tissue) == pytest.approx(200 / 350)


def test_burden_nan_without_tumor_in_tissue():
    tumor = two_squares()
    assert math.isnan(tumor_burden(np.zeros_like(tumor), np.ones_like(tumor)))
    assert math.isnan(tumor_burden(tumor, np.zeros_like(tumor)))
    assert not tumor_bed(tumor, np.zeros_like(tumor)).any()


# -- size classes --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("diameter", "expected"),
    [
        (0.0, "ITC"),
        (ITC_MAX_MM, "ITC"),
        (np.nextafter(ITC_MAX_MM, 1), "micro"),
        (0.2001, "micro"),
        (MICRO_MAX_MM, "micro"),
        (np.nextafter(MICRO_MAX_MM, 3), "macro"),
        (2.001, "macro"),
    ],
)
def test_size_class_boundaries(diameter, expected):
    assert size_class(diameter) == expected


def test_slide_class_from_largest_lesion():
    assert slide_size_class(()) == "negative"
    probability = np.zeros((20, 300), np.float32)
    probability[2, 5:10] = 1  # 1 x 5 px
    probability[10, 20:270] = 1  # 1 x 250 px: sqrt(1 + 250²) * 8 µm = 2.000016 mm
    lesions = find_lesions(probability, 8.0)
    assert [lesion.size_class for lesion in lesions] == ["macro", "ITC"]
    assert slide_size_class(lesions) == "macro"
    assert slide_size_class(lesions[1:]) == "ITC"
    measured = measure_arrays("s", probability, np.ones(probability.shape, bool), 8.0)
    row = measured.row()
    assert (row["size_class"], row["itc_count"], row["micro_count"], row["macro_count"]) == (
        "macro",
        1,
        0,
        1,
    )
    assert row["largest_lesion_mm"] == pytest.approx(math.hypot(1, 250) * 8 / 1000)


# -- nuclei --------------------------------------------------------------------------
def test_nuclei_counts_and_densities():
    tissue = np.ones((10, 10), bool)
    tissue[:, 9] = False
    tumor = np.zeros((10, 10), bool)
    tumor[:5] = True  # includes (row, 9), off tissue
    # Grid px (i, j) covers level-0 [100 + 2j, 100 + 2(j+1)) x [50 + 2i, ...).
    centroids = np.array(
        [
            [101.0, 51.0],  # (0, 0): tumor
            [108.0, 59.9],  # (4, 4): tumor
            [106.5, 64.0],  # (7, 3): non-tumor tissue
            [119.0, 52.0],  # (0, 9): tumor but off tissue
            [99.9, 60.0],  # left of the grid
            [120.0, 60.0],  # x = right edge of the grid: outside
            [110.0, 70.0],  # y = bottom edge: outside
        ]
    )
    n_tumor, n_other, d_tumor, d_other = nuclei_counts(
        centroids, tumor, tissue, mpp_um=4.0, origin_l0=(100, 50), downsample=2.0
    )
    assert (n_tumor, n_other) == (2, 1)
    area = 45 * 16e-6  # 45 px of 4 x 4 µm, in mm², for each
    assert d_tumor == pytest.approx(2 / area) and d_other == pytest.approx(1 / area)
    measured = measure_arrays(
        "s",
        tumor.astype(np.float32),
        tissue,
        4.0,
        origin_l0=(100, 50),
        downsample=2.0,
        nuclei_centroids_l0=centroids,
    )
    assert (measured.nuclei_tumor, measured.nuclei_non_tumor) == (2, 1)
    assert measured.nuclei_density_tumor == pytest.approx(2 / area)


def test_nuclei_density_nan_without_area():
    tissue = np.ones((4, 4), bool)
    counts = nuclei_counts(np.zeros((0, 2)), np.zeros((4, 4), bool), tissue, mpp_um=1.0)
    assert counts[:2] == (0, 0) and math.isnan(counts[2]) and counts[3] == 0.0


# -- rows and dicts ------------------------------------------------------------------
def test_row_and_dict_without_lesions():
    measured = measure_arrays("a.svs", np.zeros((8, 8)), np.ones((8, 8), bool), 2.0)
    row = measured.row()
    assert list(row) == [
        "slide", "mpp_um", "threshold", "tissue_area_mm2", "tumor_area_mm2",
        "tumor_bed_area_mm2", "tumor_burden", "lesion_count", "largest_lesion_mm",
        "size_class", "itc_count", "micro_count", "macro_count", "nuclei_tumor",
        "nuclei_non_tumor", "nuclei_density_tumor", "nuclei_density_non_tumor",
    ]  # fmt: skip
    assert all(isinstance(v, str | float | int) for v in row.values())
    assert row["lesion_count"] == 0 and row["largest_lesion_mm"] == 0
    assert row["size_class"] == "negative" and math.isnan(row["tumor_burden"])
    assert row["nuclei_tumor"] == "" and row["nuclei_density_non_tumor"] == ""
    assert row["tissue_area_mm2"] == pytest.approx(64 * 4e-6)
    data = json.loads(json.dumps(measured.to_dict(), allow_nan=False))
    assert data["tumor_burden"] is None and data["lesions"] == [] and data["nuclei_tumor"] is None


def test_dict_has_lesions_without_outlines():
    probability = rectangle()
    measured = measure_arrays(
        "a.svs", probability, np.ones(probability.shape, bool), 5.0, epistemic=probability / 9
    )
    (lesion,) = json.loads(json.dumps(measured.to_dict(), allow_nan=False))["lesions"]
    assert lesion["bbox_l0"] == [5, 5, 20, 10] and "outline_l0" not in lesion
    assert lesion["mean_epistemic"] == pytest.approx(0.1)


# -- bad input -----------------------------------------------------------------------
GOOD = np.zeros((4, 4), np.float32)
MASK = np.ones((4, 4), bool)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: find_lesions(GOOD, -0.5), r"`mpp_um` must be a finite number > 0, got -0.5"),
        (lambda: find_lesions(GOOD, 0), r"`mpp_um` .* got 0"),
        (lambda: find_lesions(GOOD, float("nan")), r"`mpp_um` .* got nan"),
        (lambda: find_lesions(GOOD, "1"), r"`mpp_um` .* got '1'"),
        (lambda: find_lesions(GOOD, True), r"`mpp_um` .* got True"),
        (lambda: find_lesions(GOOD, 1.0, threshold=0), r"`threshold` must be .* in \(0, 1\]"),
        (lambda: find_lesions(GOOD, 1.0, threshold=1.5), r"`threshold` .* got 1.5"),
        (lambda: find_lesions(np.zeros((2, 2, 2)), 1.0), r"`probability` must be a non-empty 2-D"),
        (lambda: find_lesions(np.zeros((0, 3)), 1.0), r"`probability` must be a non-empty 2-D"),
        (lambda: find_lesions(np.array([["a"]]), 1.0), r"`probability` must be a numeric"),
        (lambda: find_lesions(GOOD, 1.0, tissue=np.ones((4, 5))), r"`tissue` shape \(4, 5\)"),
        (lambda: find_lesions(GOOD, 1.0, epistemic=np.ones(4)), r"`epistemic` must be .* 2-D"),
        (lambda: find_lesions(GOOD, 1.0, downsample=-1), r"`downsample` .* > 0"),
        (lambda: find_lesions(GOOD, 1.0, origin_l0=(1,)), r"`origin_l0` must be a level-0"),
        (lambda: find_lesions(GOOD, 1.0, origin_l0=(0, math.inf)), r"`origin_l0\[1\]`"),
        (lambda: find_lesions(GOOD, 1.0, min_area_um2=-1), r"`min_area_um2` .* >= 0"),
        (lambda: area_mm2(MASK, -1), r"`mpp_um` .* got -1"),
        (lambda: tumor_bed(np.ones((3, 4), bool), MASK), r"`tumor` shape \(3, 4\)"),
        (lambda: tumor_burden(MASK, None), r"`tissue` must be a numeric"),
        (lambda: size_class(-0.1), r"`longest_diameter_mm` must be a finite number >= 0"),
        (lambda: measure_arrays("s", GOOD, MASK[:3], 1.0), r"`tissue` shape \(3, 4\)"),
        (lambda: measure_arrays("s", GOOD, MASK, math.nan), r"`mpp_um` .* got nan"),
        (lambda: measure_arrays(1, GOOD, MASK, 1.0), r"`slide` must be a str"),
        (
            lambda: nuclei_counts(np.zeros((3, 3)), MASK, MASK, mpp_um=1.0),
            r"`centroids_l0` must be a numeric \(n, 2\)",
        ),
        (lambda: nuclei_counts(np.zeros((0, 2)), MASK, MASK, mpp_um=0), r"`mpp_um`"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- a real result store -------------------------------------------------------------
def test_measure_run_on_a_real_store(tmp_path):
    from napari_histo.inference.engine import EngineConfig, infer_slide, run
    from napari_histo.io.slide import Slide
    from napari_histo.models import ModelCard, build_model, load_model, save_model
    from napari_histo.nuclei.store import nuclei_to_store
    from napari_histo.synthetic import write_synthetic_slide
    from napari_histo.tissue import slide_tissue_mask

    slide = write_synthetic_slide(tmp_path / "s.svs", 2048, seed=2001, workers=1).path
    torch.manual_seed(3)
    card = ModelCard(
        name="resunet-test", version="0.1", architecture="resunet",
        config={"width": 4, "num_classes": 2}, input_mpp=1.0, patch_px=128,
        normalisation={"mean": [0.8, 0.6, 0.75], "std": [0.15, 0.2, 0.15]},
        classes=("background", "tumor"), training_data="random initialisation (tests)",
    )  # fmt: skip
    member = load_model(save_model(build_model("resunet", {"width": 4}), card, tmp_path / "m"))
    generator = infer_slide(slide, [member], config=EngineConfig(tta=1), out_dir=tmp_path)
    result_run = run(generator).run
    geometry = result_run.geometry
    assert geometry.downsample == 4.0 and geometry.shape == (512, 512)
    levels = result_run.levels("probability")
    assert [level.shape for level in levels] == [(512, 512), (256, 256)]
    with Slide(slide) as opened:
        mask, mask_downsample = slide_tissue_mask(opened)
    # Nuclei over 512² level-0 px at the middle tissue pixel (the whole slide is slow).
    ys, xs = np.nonzero(mask)
    x0, y0 = (int(np.clip(v[len(v) // 2] * mask_downsample - 256, 0, 1536)) for v in (xs, ys))
    nuclei = nuclei_to_store(slide, block_px=512, out_dir=tmp_path, region_l0=(x0, y0, 512, 512))
    assert nuclei.run.complete

    probability = np.asarray(levels[1][...])
    positive = probability[probability > 0]
    threshold = float(np.quantile(positive, 0.8))  # random weights: lesions wherever they are
    measured = measure_run(
        result_run, slide, threshold=threshold, nuclei_run=nuclei.run, max_px=256 * 256
    )
    assert measured.slide == "s.svs" and measured.mpp_um == 2.0
    # The same from arrays read directly: level 1 is 2x coarser, same origin.
    centres = (np.arange(256) + 0.5) * 8.0 / mask_downsample
    idx = np.minimum(centres.astype(int), mask.shape[0] - 1)
    tissue = mask[np.ix_(idx, idx)]
    features = nuclei.run.features()
    centroids = np.column_stack([features["centroid_x_um"], features["centroid_y_um"]]) / 0.25
    # Nuclei densities count only the 512² region the nuclei run covered.
    centres_l0 = (np.arange(256) + 0.5) * 8.0
    in_x = (centres_l0 >= x0) & (centres_l0 < x0 + 512)
    in_y = (centres_l0 >= y0) & (centres_l0 < y0 + 512)
    expected = measure_arrays(
        "s.svs", probability, tissue, 2.0, threshold=threshold,
        epistemic=np.asarray(result_run.levels("epistemic")[1][...]), downsample=8.0,
        nuclei_centroids_l0=centroids, nuclei_region=in_y[:, None] & in_x[None, :],
    )  # fmt: skip
    assert measured.row() == pytest.approx(expected.row(), nan_ok=True)
    assert measured.to_dict() == expected.to_dict()
    assert 0.01 < measured.tissue_area_mm2 < 0.512**2 and len(measured.lesions) > 0
    assert measured.nuclei_tumor + measured.nuclei_non_tumor > 0
    assert measured.nuclei_tumor + measured.nuclei_non_tumor <= len(features["id"])

    full = measure_run(result_run, slide, threshold=threshold)  # default: level 0
    assert full.mpp_um == 1.0 and full.nuclei_tumor is None
    assert full.tissue_area_mm2 == pytest.approx(measured.tissue_area_mm2, rel=0.05)

    result_run.group.attrs["status"] = "cancelled"
    cancelled = r"s\.svs\.histo\.zarr: run \w+ is cancelled, not complete"
    with pytest.raises(StoreError, match=cancelled):
        measure_run(result_run, slide)
    result_run.group.attrs.update(
        {"status": "complete", "geometry": {**geometry.to_dict(), "mpp": None}}
    )
    no_mpp = result_run.store.open_run(result_run.run_id)
    with pytest.raises(StoreError, match=r"histo\.zarr: run \w+ has no µm/px .* with --mpp"):
        measure_run(no_mpp, slide)
