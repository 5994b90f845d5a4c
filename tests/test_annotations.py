"""Annotation model and granularity conversions on known shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage import draw

from napari_histo.annotations.model import (
    IGNORE_INDEX,
    Annotation,
    AnnotationClass,
    class_index,
    ellipse_polygon,
    mask_to_bbox,
    mask_to_ellipse,
    mask_to_polygons,
    rasterize,
)
from napari_histo.annotations.polygons import (
    find_self_intersections,
    is_simple_polygon,
    simple_polygons,
)


def ellipse_mask(shape, cx, cy, a, b, angle):
    """Pixels whose centres lie in the ellipse (level-0 frame, downsample 1)."""
    ring = ellipse_polygon(cx, cy, a, b, angle, n=4000)
    mask = np.zeros(shape, dtype=bool)
    rr, cc = draw.polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape)
    mask[rr, cc] = True
    return mask


def angle_diff_deg(a, b):
    d = (a - b) % math.pi
    return math.degrees(min(d, math.pi - d))


# -- model --------------------------------------------------------------------------
def test_annotation_fields_and_immutability():
    ann = Annotation("polygon", [[0, 0], [10, 0], [10, 5]], label="tumor", author="ab")
    assert ann.coords.dtype == np.float64 and ann.coords.shape == (3, 2)
    assert not ann.coords.flags.writeable
    assert ann.granularity == "polygon" and ann.object_type == "annotation"
    assert len(ann.id) == 36 and "T" in ann.created
    assert ann.bounds == (0.0, 0.0, 10.0, 5.0)
    other = ann.replace(label="ignore")
    assert other.id == ann.id and other.label == "ignore" and ann.label == "tumor"
    with pytest.raises(AttributeError):
        ann.label = "x"  # type: ignore[misc]


def test_constructors():
    box = Annotation.from_bbox(10, 20, 0, 5)
    assert box.kind == "bbox" and box.granularity == "bbox"
    assert box.bounds == (0.0, 5.0, 10.0, 20.0)
    ell = Annotation.from_ellipse(5, 6, 2, 4, 0.0, n=16)
    cx, cy, a, b, angle = ell.ellipse
    assert (cx, cy, a, b) == (5, 6, 4, 2) and angle == pytest.approx(math.pi / 2)
    assert ell.coords.shape == (16, 2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "circle", "coords": [[0, 0], [1, 0], [0, 1]]}, "`kind`"),
        ({"kind": "polygon", "coords": [[0, 0], [1, 0]]}, "shape"),
        ({"kind": "polygon", "coords": [[0, 0], [1, np.nan], [0, 1]]}, "finite"),
        ({"kind": "polygon", "coords": [[0, 0], [1, 0], [0, 1]], "granularity": "x"}, "granul"),
        ({"kind": "ellipse", "coords": [[0, 0], [1, 0], [0, 1]]}, "`ellipse`"),
        ({"kind": "bbox", "coords": [[0, 0], [1, 0], [0, 1]]}, "4 corners"),
        ({"kind": "point", "coords": [[0, 0]], "holes": ([[0, 0], [1, 0], [0, 1]],)}, "holes"),
        ({"kind": "point", "coords": [[0, 0]], "color": (0, 0, 300)}, "color"),
        ({"kind": "point", "coords": [[0, 0]], "object_type": "cell"}, "object_type"),
    ],
)
def test_annotation_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Annotation(**kwargs)


def test_class_index_defaults_and_mapping():
    assert class_index() == {"tumor": 1, "non-tumor": 2, "ignore": IGNORE_INDEX}
    assert class_index([AnnotationClass("a", (1, 2, 3)), "b"]) == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="0-255"):
        class_index({"a": 300})


# -- mask → bbox / ellipse / polygon ------------------------------------------------
def test_mask_to_bbox_downsample_origin_and_components():
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:5, 3:9] = True
    mask[10:20, 25:30] = True
    boxes = mask_to_bbox(mask, downsample=4, origin=(100, 200), label="ignore")
    assert [b.bounds for b in boxes] == [(112, 208, 136, 220), (200, 240, 220, 280)]
    assert all(b.label == "ignore" and b.granularity == "bbox" for b in boxes)
    (whole,) = mask_to_bbox(mask, per_component=False)
    assert whole.bounds == (3, 2, 30, 20)
    assert mask_to_bbox(np.zeros((4, 4))) == []
    with pytest.raises(ValueError, match="2-D"):
        mask_to_bbox(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="downsample"):
        mask_to_bbox(mask, downsample=0)


@pytest.mark.parametrize(
    ("a", "b", "angle_deg"),
    [(40, 15, 0), (40, 15, 30), (60, 20, -70), (25, 24, 45), (80, 10, 89), (12, 5, 135)],
)
def test_mask_to_ellipse_recovers_rasterised_ellipse(a, b, angle_deg):
    cx, cy, angle = 100.3, 90.7, math.radians(angle_deg)
    mask = ellipse_mask((200, 220), cx, cy, a, b, angle)
    (ell,) = mask_to_ellipse(mask, label="tumor")
    fx, fy, fa, fb, fangle = ell.ellipse
    assert ell.kind == "ellipse" and ell.granularity == "ellipse"
    assert abs(fx - cx) < 0.5 and abs(fy - cy) < 0.5
    assert abs(fa - a) < 1.0 and abs(fb - b) < 1.0
    if a - b > 2:
        assert angle_diff_deg(fangle, angle) < 1.0
    assert -math.pi / 2 < fangle <= math.pi / 2


def test_mask_to_ellipse_at_downsample():
    mask = ellipse_mask((100, 100), 50, 50, 30, 10, math.radians(20))
    (ell,) = mask_to_ellipse(mask, downsample=8, origin=(1000, 2000))
    fx, fy, fa, fb, fangle = ell.ellipse
    assert fx == pytest.approx(1000 + 50 * 8, abs=4) and fy == pytest.approx(2000 + 50 * 8, abs=4)
    assert fa == pytest.approx(240, abs=8) and fb == pytest.approx(80, abs=8)
    assert angle_diff_deg(fangle, math.radians(20)) < 1.0


def test_single_pixel_ellipse_has_pixel_area():
    mask = np.zeros((3, 3), dtype=bool)
    mask[1, 1] = True
    (ell,) = mask_to_ellipse(mask)
    _, _, a, b, _ = ell.ellipse
    assert math.pi * a * b == pytest.approx(1.0, rel=0.1)


def test_mask_to_polygons_square_with_hole_and_island():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35, 5:35] = True
    mask[12:28, 12:28] = False
    mask[18:22, 18:22] = True  # island inside the hole
    polys = mask_to_polygons(mask, tolerance=0.0, label="tumor")
    assert len(polys) == 2
    outer, island = polys
    assert outer.granularity == "pixel" and len(outer.holes) == 1 and not island.holes
    x0, y0, x1, y1 = outer.bounds
    assert (x0, y0, x1, y1) == (5.0, 5.0, 35.0, 35.0)  # pixel edges, level-0
    back = rasterize(polys, mask.shape) > 0
    np.testing.assert_array_equal(back, mask)


def test_mask_to_polygons_roundtrip_random_blobs_with_simplification():
    rng = np.random.default_rng(3)
    mask = np.zeros((120, 160), dtype=bool)
    for _ in range(6):
        r, c = rng.integers(15, 105), rng.integers(15, 145)
        rr, cc = draw.ellipse(r, c, rng.integers(4, 14), rng.integers(4, 14), mask.shape)
        mask[rr, cc] = True
    exact = rasterize(mask_to_polygons(mask, tolerance=0.0), mask.shape) > 0
    np.testing.assert_array_equal(exact, mask)
    polys = mask_to_polygons(mask, tolerance=0.5)
    back = rasterize(polys, mask.shape) > 0
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > 0.97
    # polygons at 4x downsample land on level-0 coordinates
    polys4 = mask_to_polygons(mask, downsample=4, origin=(8, 12), tolerance=0.0)
    back4 = rasterize(polys4, mask.shape, downsample=4, origin=(8, 12)) > 0
    np.testing.assert_array_equal(back4, mask)


# -- vector → mask ------------------------------------------------------------------
def test_rasterize_bbox_at_downsample_and_classes():
    box = Annotation.from_bbox(0, 0, 16, 8, label="tumor")
    out = rasterize([box], (10, 10), downsample=4)
    expected = np.zeros((10, 10), dtype=np.uint8)
    expected[0:2, 0:4] = 1
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8


def test_rasterize_order_ignore_and_unknown_label():
    big = Annotation.from_bbox(0, 0, 10, 10, label="non-tumor")
    small = Annotation.from_bbox(2, 2, 4, 4, label="ignore")
    pt = Annotation("point", [[1, 1]], label="whatever")
    out = rasterize([big, small, pt], (10, 10))
    assert out[0, 0] == 2 and out[3, 3] == IGNORE_INDEX
    out = rasterize([small, big], (10, 10))
    assert out[3, 3] == 2
    with pytest.raises(ValueError, match="label 'mystery'"):
        rasterize([big.replace(label="mystery")], (10, 10))


def test_rasterize_ellipse_area_and_polygon_with_hole():
    ell = Annotation.from_ellipse(100, 80, 60, 30, math.radians(25), n=8)  # coarse outline
    out = rasterize([ell], (200, 200))
    assert (out == 1).sum() == pytest.approx(math.pi * 60 * 30, rel=0.01)  # exact ellipse used
    ring = [[0, 0], [40, 0], [40, 40], [0, 40]]
    hole = [[10, 10], [30, 10], [30, 30], [10, 30]]
    donut = Annotation("polygon", ring, holes=(hole,))
    out = rasterize([donut], (40, 40), downsample=2)
    assert out[2, 2] == 1 and out[10, 10] == 0 and (out == 1).sum() == 400 - 100


def test_ellipse_rasterise_fit_roundtrip_at_downsample():
    ell = Annotation.from_ellipse(5000, 3000, 800, 300, math.radians(-35))
    mask = rasterize([ell], (200, 200), downsample=16, origin=(3400, 1400)) > 0
    (fit,) = mask_to_ellipse(mask, downsample=16, origin=(3400, 1400))
    fx, fy, fa, fb, fangle = fit.ellipse
    assert abs(fx - 5000) < 16 and abs(fy - 3000) < 16
    assert abs(fa - 800) < 16 and abs(fb - 300) < 16
    assert angle_diff_deg(fangle, math.radians(-35)) < 1.0


# -- validity -----------------------------------------------------------------------
def test_self_intersections():
    assert find_self_intersections([[0, 0], [2, 2], [2, 0], [0, 2]]) == [(0, 2)]
    assert is_simple_polygon(ellipse_polygon(0, 0, 50, 20, 0.3, n=500))
    assert is_simple_polygon([[0, 0], [1, 0], [1, 0], [1, 1]])  # duplicate vertex is fine
    touching = [[0, 0], [4, 0], [4, 4], [2, 4], [2, 0], [0, 4]]  # vertex on an edge
    assert find_self_intersections(touching) == [(0, 3), (0, 4)]
    assert find_self_intersections(touching, max_pairs=3) == [(0, 3), (0, 4)]
    collinear = [[0, 0], [4, 0], [4, 2], [3, 0], [1, 0], [0, 2]]  # overlapping edges
    assert not is_simple_polygon(collinear)


def test_simple_polygons_batch_matches_single():
    rng = np.random.default_rng(0)
    rings = [
        ellipse_polygon(0, 0, 10, 5, 0.1, n) + rng.normal(0, 0.8, (n, 2))
        for n in rng.integers(4, 80, 300)
    ]
    rings.append(ellipse_polygon(0, 0, 100, 50, 0, 700))
    batch = simple_polygons(rings)
    single = np.array([is_simple_polygon(r) for r in rings])
    np.testing.assert_array_equal(batch, single)
    assert 0 < batch.sum() < len(rings)
