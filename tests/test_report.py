"""Lesion GeoJSON, OME-Zarr export and the HTML slide report, on a real engine run."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from napari_histo.analysis.export import (
    OME_ARRAYS,
    lesions_geojson,
    write_lesions_geojson,
    write_ome_zarr,
)
from napari_histo.analysis.report import area_text, run_on_thumbnail, slide_report, write_report
from napari_histo.analysis.results import Lesion, SlideMeasurements
from napari_histo.analysis.stored import measure_run
from napari_histo.errors import ExportError
from napari_histo.inference.engine import EngineConfig, infer_slide, run
from napari_histo.io.annotations import read_annotations
from napari_histo.models import latest_cards, load_model
from napari_histo.synthetic import write_synthetic_slide

SLIDE_PX = 2048  # level 0, 0.25 µm/px; models at 1 µm/px give a 512² result, 2 levels


def make_run(root, slide_path=None, members=("deeplabv3plus", "resunet")):
    """A complete tumor run of a small synthetic slide by default models (~10 s).

    Two shipped (v2, 1 µm/px) members, so lesions are real and epistemic
    uncertainty is not zero. Returns ``(slide_path, run)``.
    """
    if slide_path is None:
        slide_path = write_synthetic_slide(root / "s.svs", SLIDE_PX, seed=2001, workers=1).path
    cards = latest_cards()
    models = [load_model(cards[name]) for name in members]
    result = run(infer_slide(slide_path, models, config=EngineConfig(tta=1)))
    assert result.run.complete
    return slide_path, result.run


def square(x, y, side):
    return np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side]], np.float64)


def make_measurements(slide="s.svs", lesions=None):
    """Measurements of three lesions (level-0 px outlines inside a 2048² slide)."""
    if lesions is None:
        lesions = (
            Lesion(1, 0.25, 0.6, 0.91, 0.012, "micro", (400, 300, 600, 500),
                   np.array([[400, 300], [1000, 320], [900, 800], [420, 700]], np.float64)),
            Lesion(2, 0.01, 0.15, 0.7, None, "ITC", (1500, 1500, 100, 100),
                   square(1500, 1500, 100)),
            Lesion(3, 0.001, 0.02, 0.6, float("nan"), "ITC", (100, 1800, 8, 8),
                   np.array([[100, 1800], [108, 1800]], np.float64)),  # degenerate outline
        )  # fmt: skip
    return SlideMeasurements(
        slide=slide, mpp_um=1.0, threshold=0.5, tissue_area_mm2=0.21, tumor_area_mm2=0.261,
        tumor_bed_area_mm2=0.4, tumor_burden=0.65, lesions=tuple(lesions), size_class="micro",
        nuclei_tumor=1234, nuclei_non_tumor=56, nuclei_density_tumor=4936.0,
        nuclei_density_non_tumor=112.5,
    )  # fmt: skip


@pytest.fixture(scope="module")
def slide_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("report"))


# -- GeoJSON ----------------------------------------------------------------------------
def test_lesions_geojson_reads_back_as_tumor_annotations(tmp_path):
    m = make_measurements()
    path = write_lesions_geojson(tmp_path / "lesions.geojson", m)
    loaded = read_annotations(path)
    assert not [p for p in loaded.problems if "skipped" in p]
    anns = loaded.annotations
    assert [a.label for a in anns] == ["Tumor"] * 3
    assert {a.object_type for a in anns} == {"annotation"}
    assert anns[0].color == (200, 0, 0) or anns[0].color is None
    np.testing.assert_allclose(anns[0].coords, m.lesions[0].outline_l0)
    np.testing.assert_allclose(anns[1].coords, m.lesions[1].outline_l0)
    np.testing.assert_allclose(anns[2].coords, square(100, 1800, 8))  # the bbox instead
    assert [a.properties["name"] for a in anns] == [
        "Lesion 1 (micro)", "Lesion 2 (ITC)", "Lesion 3 (ITC)"
    ]  # fmt: skip
    assert anns[0].properties["measurements"] == {
        "Area mm²": 0.25, "Longest diameter mm": 0.6, "Mean probability": 0.91,
        "Mean epistemic": 0.012,
    }  # fmt: skip
    assert "Mean epistemic" not in anns[1].properties["measurements"]  # None: left out
    assert "Mean epistemic" not in anns[2].properties["measurements"]  # NaN: left out


def test_lesions_geojson_is_a_closed_ring_feature_collection():
    doc = json.loads(lesions_geojson(make_measurements()))
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 3
    for feature in doc["features"]:
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
        assert feature["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert json.loads(lesions_geojson(make_measurements(lesions=())))["features"] == []


def test_lesions_geojson_unwritable_path_names_it(tmp_path):
    target = tmp_path / "missing" / "lesions.geojson"
    with pytest.raises(ExportError, match=re.escape(str(target))):
        write_lesions_geojson(target, make_measurements())


# -- OME-Zarr ---------------------------------------------------------------------------
def read_ome(path):
    from ome_zarr.format import FormatV04
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(path, fmt=FormatV04()))())
    assert len(nodes) == 1
    return nodes[0]


def test_ome_zarr_reads_back_with_ome_zarr_py(slide_run, tmp_path):
    _, run_ = slide_run
    path = write_ome_zarr(run_, tmp_path / "result.ome.zarr", block_px=200)  # blocks < level
    node = read_ome(path)
    levels = run_.levels("probability")
    assert len(node.data) == len(levels) >= 2
    for level, data in enumerate(node.data):
        assert data.shape == (len(OME_ARRAYS), *levels[level].shape)
        for c, name in enumerate(OME_ARRAYS):
            expected = np.asarray(run_.array(name, level)[...])
            np.testing.assert_array_equal(np.asarray(data[c]), expected, err_msg=name)
    meta = node.metadata
    assert [a["name"] for a in meta["axes"]] == ["c", "y", "x"]
    assert meta["axes"][1]["unit"] == "micrometer"
    assert meta["channel_names"] == list(OME_ARRAYS)
    mpp = run_.geometry.mpp
    scales = [t[0]["scale"] for t in meta["coordinateTransformations"]]
    assert scales == [[1.0, mpp * 2**k, mpp * 2**k] for k in range(len(levels))]
    assert [p.name for p in tmp_path.iterdir()] == ["result.ome.zarr"]  # no temporary left


def test_ome_zarr_replaces_a_folder_refuses_a_file(slide_run, tmp_path):
    _, run_ = slide_run
    path = tmp_path / "r.ome.zarr"
    write_ome_zarr(run_, path, arrays=("probability",))
    write_ome_zarr(run_, path, arrays=("epistemic", "entropy"))
    assert read_ome(path).metadata["channel_names"] == ["epistemic", "entropy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.ome.zarr"]
    file = tmp_path / "file.ome.zarr"
    file.write_text("x")
    with pytest.raises(ExportError, match=re.escape(str(file))):
        write_ome_zarr(run_, file)
    assert file.read_text() == "x"
    with pytest.raises(ValueError, match="arrays"):
        write_ome_zarr(run_, path, arrays=("probability", "nonsense"))


def test_ome_zarr_refuses_an_incomplete_run(slide_run, tmp_path):
    _, run_ = slide_run
    run_.group.attrs["status"] = "cancelled"
    try:
        with pytest.raises(ExportError, match="not complete"):
            write_ome_zarr(run_, tmp_path / "r.ome.zarr")
    finally:
        run_.group.attrs["status"] = "complete"
    assert not list(tmp_path.iterdir())


# -- report -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def measured(slide_run):
    slide_path, run_ = slide_run
    return measure_run(run_, slide_path)


def test_slide_report_from_a_real_run(slide_run, measured, tmp_path):
    slide_path, run_ = slide_run
    assert measured.lesions  # the default models find the synthetic tumor
    path = slide_report(run_, slide_path, measured, tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<title>Slide report: s.svs</title>" in text
    assert text.count('<img src="data:image/png;base64,') == 2  # thumbnail, histogram
    assert re.search(r"https?://", text) is None and "<link" not in text
    assert "<script" not in text
    for lesion in measured.lesions:
        area = area_text(lesion.area_mm2)
        row = (
            f'<tr><td class="num">{lesion.label}</td><td class="num">{area}</td>'
            f'<td class="num">{lesion.longest_diameter_mm:.3f}</td><td>{lesion.size_class}</td>'
        )
        assert row in text
    assert "deeplabv3plus 2.1" in text and "resunet 2.1" in text and run_.run_id in text
    assert f"<td>Slide size class</td><td>{measured.size_class}</td>" in text


def test_report_summary_with_nuclei(tmp_path):
    thumb = np.full((64, 64, 3), 230, np.uint8)
    text = write_report(
        tmp_path / "r.html", make_measurements(), thumbnail=thumb, downsample=32.0
    ).read_text(encoding="utf-8")
    assert '<td class="num">1</td><td class="num">0.25</td><td class="num">0.600</td>' in text
    assert "<td>micro</td>" in text and "<td>ITC</td>" in text
    assert "Nuclei density in tumor (per mm²)" in text and "4936.0" in text
    assert "65.0 %" in text


def test_report_escapes_text(tmp_path):
    name = '<script>alert("x")</script> & Co.svs'
    m = make_measurements(slide=name)
    thumb = np.full((64, 64, 3), 230, np.uint8)
    path = write_report(
        tmp_path / "r.html", m, thumbnail=thumb, downsample=32.0,
        probability=np.zeros((32, 32), np.float32), epistemic=np.zeros((64, 64), np.float32),
        provenance={"Model <1>": 'a "quoted" & <b>bold</b> value'},
    )  # fmt: skip
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text and "<b>bold" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co.svs" in text
    assert "Model &lt;1&gt;" in text and "&lt;b&gt;bold&lt;/b&gt;" in text


def test_report_without_lesions_or_uncertainty(tmp_path):
    m = make_measurements(lesions=())
    thumb = np.full((40, 50, 3), 230, np.uint8)
    text = write_report(tmp_path / "r.html", m, thumbnail=thumb, downsample=40.0).read_text()
    assert "No lesion at this threshold" in text
    assert text.count("data:image/png;base64,") == 1 and "Epistemic uncertainty" not in text


def test_report_unwritable_path_names_it(tmp_path):
    target = tmp_path / "missing" / "r.html"
    thumb = np.full((40, 50, 3), 230, np.uint8)
    with pytest.raises(ExportError, match=re.escape(str(target))):
        write_report(target, make_measurements(), thumbnail=thumb, downsample=40.0)


def test_run_on_thumbnail_samples_the_result_grid(slide_run):
    _, run_ = slide_run
    geometry = run_.geometry  # downsample 4, origin (0, 0), 512²
    full = np.asarray(run_.array("probability")[...])
    same = run_on_thumbnail(run_, "probability", geometry.shape, geometry.downsample)
    np.testing.assert_array_equal(same, full)
    coarse = run_on_thumbnail(run_, "probability", (256, 256), 8.0)
    np.testing.assert_array_equal(coarse, np.asarray(run_.array("probability", 1)[...]))
    wider = run_on_thumbnail(run_, "probability", (300, 300), 8.0)  # beyond the result: NaN
    assert np.isnan(wider[256:]).all() and np.isfinite(wider[:256, :256]).all()
