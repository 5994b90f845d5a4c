"""Annotations ↔ layer data, pixel crops, model → annotations, nuclei edits, writer (no Qt)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_histo.annotations.from_probability import (
    probability_to_annotations,
    probability_to_crop,
    probability_window,
)
from napari_histo.annotations.layers import (
    CropGeometry,
    annotations_to_shapes,
    classes_path,
    crop_for_region,
    crop_to_annotations,
    load_classes,
    rasterize_crop,
    save_classes,
    shapes_to_annotations,
)
from napari_histo.annotations.model import DEFAULT_CLASSES, Annotation, AnnotationClass, rasterize
from napari_histo.errors import AnnotationError
from napari_histo.frames import l0_to_world, layer_l0_transform, layer_mpp, world_to_l0
from napari_histo.io.annotations import read_geojson
from napari_histo.nuclei.edit import (
    delete_labels,
    merge_labels,
    relabel,
    split_by_line,
    split_watershed,
)
from napari_histo.plugin.writer import labels_annotations, write_labels, write_shapes

MPP = (0.25, 0.5)


def sample_annotations() -> list[Annotation]:
    ring = np.array([[10.0, 10.0], [60.0, 12.5], [45.0, 70.25], [5.5, 40.0]])
    return [
        Annotation.from_bbox(100.5, 200.25, 300.0, 260.0, author="ann", label="non-tumor"),
        Annotation.from_ellipse(500.0, 400.0, 80.0, 30.0, 0.6, author="bob"),
        Annotation("polygon", ring, label="ignore", granularity="pixel"),
    ]


def test_world_matches_slide_layer_pixel_centres():
    # the slide layer puts the centre of level-0 pixel k (coordinate k + 0.5) at k * mpp
    world = l0_to_world([[10.5, 20.5]], MPP)
    assert world.tolist() == [[20 * 0.25, 10 * 0.5]]
    assert np.allclose(world_to_l0(world, MPP), [[10.5, 20.5]])


def test_shapes_round_trip_within_half_pixel():
    anns = sample_annotations()
    kwargs = annotations_to_shapes(anns, MPP)
    assert kwargs["shape_type"] == ["rectangle", "ellipse", "polygon"]
    assert list(kwargs["features"]["label"]) == ["non-tumor", "tumor", "ignore"]
    assert kwargs["face_color"].shape == (3, 4)
    back = shapes_to_annotations(kwargs["data"], kwargs["shape_type"], kwargs["features"], MPP)
    assert [a.kind for a in back] == ["bbox", "ellipse", "polygon"]
    for a, b in zip(anns, back, strict=True):
        assert (a.id, a.label, a.granularity, a.author, a.created) == (
            b.id, b.label, b.granularity, b.author, b.created,
        )  # fmt: skip
        assert np.abs(a.coords - b.coords).max() < 0.5
    assert np.allclose(back[1].ellipse, anns[1].ellipse, atol=1e-6)


def test_closed_paths_read_back_as_polygons():
    # polygons are shown filled; a closed path (an outline drawn with the path tool) is a polygon
    anns = sample_annotations()
    kwargs = annotations_to_shapes(anns, MPP)
    assert kwargs["shape_type"] == ["rectangle", "ellipse", "polygon"]
    ring = kwargs["data"][2]
    types = ["rectangle", "ellipse", "path"]
    data = [*kwargs["data"][:2], np.vstack([ring, ring[:1]])]  # closed: first vertex repeated
    back = shapes_to_annotations(data, types, kwargs["features"], MPP,
                                 previous={a.id: a for a in anns})  # fmt: skip
    assert all(a is b for a, b in zip(anns, back, strict=True))
    fresh = shapes_to_annotations(data, types, kwargs["features"], MPP)
    assert fresh[2].kind == "polygon" and np.allclose(fresh[2].coords, anns[2].coords)

def test_unmoved_shapes_return_previous_annotation_with_holes():
    hole = np.array([[20.0, 20.0], [30.0, 20.0], [30.0, 30.0]])
    ann = Annotation("polygon", [[0, 0], [100, 0], [100, 100], [0, 100]], holes=(hole,))
    kwargs = annotations_to_shapes([ann], MPP)
    prev = {ann.id: ann}
    same = shapes_to_annotations(kwargs["data"], kwargs["shape_type"], kwargs["features"], MPP,
                                 previous=prev)  # fmt: skip
    assert same[0] is ann
    moved = [kwargs["data"][0] + 1.0]
    got = shapes_to_annotations(moved, ["polygon"], kwargs["features"], MPP, previous=prev)
    assert got[0] is not ann and got[0].id == ann.id and len(got[0].holes) == 1
    assert np.allclose(got[0].coords[:, 0] - ann.coords[:, 0], 1.0 / MPP[1])


def test_new_shapes_get_defaults_and_lines_are_skipped():
    rect = l0_to_world([[0, 0], [10, 0], [10, 10], [0, 10]], MPP)
    line = l0_to_world([[0, 0], [10, 10]], MPP)
    got = shapes_to_annotations([rect, line], ["rectangle", "line"], None, MPP,
                                default_label="non-tumor", default_author="me")  # fmt: skip
    assert len(got) == 1 and got[0].kind == "bbox"
    assert (got[0].label, got[0].author, got[0].granularity) == ("non-tumor", "me", "bbox")
    assert got[0].bounds == (0.0, 0.0, 10.0, 10.0)


def test_crop_transform_and_inverse():
    crop = CropGeometry((100.0, 40.0), 4.0, (10, 20))
    scale, translate = crop.layer_transform(MPP)
    origin, ds = layer_l0_transform(scale, translate, MPP)
    assert np.allclose(origin, (100.0, 40.0)) and ds == pytest.approx(4.0)
    # crop pixel (0, 0)'s centre is level-0 (102, 42): world row (42 - 0.5) * mpp_y
    assert translate == pytest.approx(((42 - 0.5) * 0.25, (102 - 0.5) * 0.5))
    assert crop_for_region((0, 0, 5000, 1000), max_px=2048).downsample == 3.0


def test_crop_commit_round_trip():
    crop = CropGeometry((1000.0, 2000.0), 2.0, (60, 80))
    labels = np.zeros(crop.shape, np.uint8)
    labels[10:30, 5:25] = 1
    labels[40:55, 50:75] = 2
    labels[15:20, 10:15] = 0  # a hole
    anns = crop_to_annotations(labels, crop, author="me")
    assert sorted(a.label for a in anns) == ["non-tumor", "tumor"]
    assert all(a.granularity == "pixel" and a.author == "me" for a in anns)
    tumor = next(a for a in anns if a.label == "tumor")
    assert len(tumor.holes) == 1
    x0, y0, x1, _ = tumor.bounds
    assert abs(x0 - 1010) <= 1 and abs(y0 - 2020) <= 1 and abs(x1 - 1050) <= 1
    assert np.array_equal(rasterize_crop(anns, crop), labels)
    with pytest.raises(ValueError, match="no class"):
        crop_to_annotations(np.full(crop.shape, 7, np.uint8), crop)


def blob(shape=(100, 120), centre=(40, 70), radius=15.0) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(rr - centre[0], cc - centre[1])
    return np.clip(1.0 - d / (2 * radius), 0, 1).astype(np.float32)  # 0.5 at `radius`


def test_probability_blob_to_polygon():
    prob = blob()
    ds, origin = 4.0, (800.0, 400.0)
    polys = probability_to_annotations(prob, 0.5, origin, ds, author="model-user")
    assert len(polys) == 1
    poly = polys[0]
    assert poly.granularity == "polygon" and poly.properties["source"] == "model"
    centre = poly.coords.mean(axis=0)
    assert np.allclose(centre, (800 + 70.5 * ds, 400 + 40.5 * ds), atol=ds)
    area = 0.5 * abs(np.dot(poly.coords[:, 0], np.roll(poly.coords[:, 1], -1))
                     - np.dot(poly.coords[:, 1], np.roll(poly.coords[:, 0], -1)))  # fmt: skip
    assert area == pytest.approx(math.pi * (15 * ds) ** 2, rel=0.1)
    # a region away from the blob gives nothing; one over half of it gives a clipped outline
    assert probability_to_annotations(prob, 0.5, origin, ds, (800, 400, 100, 100)) == []
    half = probability_to_annotations(prob, 0.5, origin, ds, (800 + 70 * ds, 0, 10_000, 10_000))
    assert len(half) == 1 and half[0].bounds[0] >= 800 + 70 * ds - 1e-6


def test_probability_window_reads_only_the_region():
    prob = blob()
    region = (800 + 50 * 4, 400 + 30 * 4, 41, 80)
    window, origin = probability_window(prob, (800.0, 400.0), 4.0, region)
    assert window.shape == (20, 11) and origin == (1000.0, 520.0)
    assert np.array_equal(window, prob[30:50, 50:61])
    whole = probability_to_annotations(prob, 0.5, (800.0, 400.0), 4.0)
    big, big_origin = probability_window(prob, (800.0, 400.0), 4.0, (0, 0, 10**6, 10**6))
    again = probability_to_annotations(big, 0.5, big_origin, 4.0)
    assert np.allclose(whole[0].coords, again[0].coords)


def test_probability_to_crop_resamples():
    prob = blob()
    crop = CropGeometry((800.0 + 40 * 4, 400.0 + 20 * 4), 2.0, (80, 120))
    labels = probability_to_crop(prob, 0.5, (800.0, 400.0), 4.0, crop, value=3)
    assert set(np.unique(labels)) == {0, 3}
    # same pixels as rasterising the probability at the crop's resolution
    rr, cc = np.nonzero(labels)
    expected = [(40 - 20 + 0.5) * 2 - 0.5, (70 - 40 + 0.5) * 2 - 0.5]
    assert np.allclose([rr.mean(), cc.mean()], expected, atol=1.5)


def test_classes_persist(tmp_path):
    path = classes_path(tmp_path / "s.svs.annotations.geojson")
    assert path.name == "s.svs.annotations.classes.json"
    assert load_classes(path) == list(DEFAULT_CLASSES)
    save_classes(path, [*DEFAULT_CLASSES, AnnotationClass("stroma", (1, 2, 3))])
    assert load_classes(path)[-1] == AnnotationClass("stroma", (1, 2, 3))
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match=r"s\.svs\.annotations\.classes\.json"):
        load_classes(path)


# -- nuclei edits -------------------------------------------------------------------------
def nuclei() -> np.ndarray:
    lab = np.zeros((40, 60), np.int32)
    lab[5:15, 5:15] = 1
    lab[5:15, 20:30] = 2
    lab[20:35, 5:55] = 3  # elongated: two touching nuclei
    return lab


def test_delete_and_merge():
    lab = nuclei()
    out = delete_labels(lab, [2])
    assert 2 not in out and (out == 1).sum() == 100 and (lab == 2).sum() == 100
    merged = merge_labels(lab, [2, 1])
    assert set(np.unique(merged)) == {0, 1, 3} and (merged == 1).sum() == 200
    with pytest.raises(ValueError, match="> 0"):
        merge_labels(lab, [0, 1])


def test_split_watershed_touching_discs():
    rr, cc = np.mgrid[:40, :60]
    lab = np.zeros((40, 60), np.int32)
    lab[(np.hypot(rr - 20, cc - 18) < 10) | (np.hypot(rr - 20, cc - 40) < 13)] = 5
    out = split_watershed(lab, 5)
    assert set(np.unique(out)) == {0, 5, 6}
    assert (out[20, 40], out[20, 18]) == (5, 6)  # the larger disc keeps the id
    assert abs(int((out == 6).sum()) - int(math.pi * 100)) < 40


def test_split_watershed_convex_cuts_long_axis():
    lab = nuclei()
    out = split_watershed(lab, 3)
    assert set(np.unique(out)) == {0, 1, 2, 3, 4}
    assert ((out == 3) | (out == 4)).sum() == (lab == 3).sum()
    assert abs(int((out == 3).sum()) - int((out == 4).sum())) < 0.3 * (lab == 3).sum()
    cols3, cols4 = np.nonzero(out == 3)[1], np.nonzero(out == 4)[1]
    assert cols3.max() < cols4.min() or cols4.max() < cols3.min()  # cut across the long axis


def test_split_by_line():
    lab = nuclei()
    out = split_by_line(lab, 3, [[18, 40], [37, 40]])
    assert ((out == 3) | (out == 4)).sum() == (lab == 3).sum()
    assert np.nonzero(out == 4)[1].min() >= 40 and np.nonzero(out == 3)[1].max() <= 40
    assert (out == 3).sum() > (out == 4).sum()  # the largest piece keeps the id
    assert np.array_equal(split_by_line(lab, 3, [[0, 0], [2, 2]]), lab)  # misses it
    assert relabel(out).max() == 4 and set(np.unique(relabel(delete_labels(out, 2)))) == {
        0, 1, 2, 3,
    }  # fmt: skip


# -- writer (plain attributes, as npe2 passes them) ------------------------------------------
def test_writer_shapes_and_labels_round_trip(tmp_path):
    anns = sample_annotations()
    kwargs = annotations_to_shapes(anns, MPP)
    attrs = {"scale": [1.0, 1.0], "translate": [0.0, 0.0], "metadata": {"mpp": MPP},
             "shape_type": kwargs["shape_type"], "features": kwargs["features"]}  # fmt: skip
    (out,) = write_shapes(tmp_path / "s.geojson", kwargs["data"], attrs)
    got = read_geojson(out).annotations
    assert [a.id for a in got] == [a.id for a in anns]
    assert max(np.abs(a.coords - b.coords).max() for a, b in zip(anns, got, strict=True)) < 0.5

    crop = CropGeometry((64.0, 32.0), 2.0, (50, 40))
    labels = np.zeros(crop.shape, np.uint8)
    labels[10:20, 10:30] = 1
    labels[30:45, 5:15] = 255
    scale, translate = crop.layer_transform(MPP)
    attrs = {"scale": list(scale), "translate": list(translate), "metadata": {"mpp": MPP}}
    (out,) = write_labels(tmp_path / "l.geojson", labels, attrs)
    got = read_geojson(out).annotations
    assert sorted(a.label for a in got) == ["ignore", "tumor"]
    assert np.array_equal(rasterize(got, crop.shape, crop.downsample, crop.origin_l0), labels)


def test_writer_labels_without_mpp_are_level0_pixels():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 3:9] = 17
    (ann,) = labels_annotations(labels, {"metadata": {}})
    assert layer_mpp({}, default=(1.0, 1.0)) == (1.0, 1.0)
    with pytest.raises(ValueError, match="no `mpp`"):
        layer_mpp({})
    assert ann.label == "label 17"
    x0, y0, x1, y1 = ann.bounds
    assert abs(x0 - 3) <= 0.5 and abs(y0 - 2) <= 0.5 and abs(x1 - 9) <= 0.5 and abs(y1 - 6) <= 0.5
