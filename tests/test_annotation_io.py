"""GeoJSON / ASAP XML round trips, bad input, fuzzing, atomic writes and autosave."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import napari_histo.io.annotations._common as io_ann
from napari_histo._atomic import atomic_write_text
from napari_histo.annotations.model import Annotation, ellipse_polygon
from napari_histo.errors import AnnotationError
from napari_histo.io.annotations import (
    read_annotations,
    read_asap_xml,
    read_geojson,
    write_asap_xml,
    write_geojson,
)
from napari_histo.io.annotations.autosave import Autosaver, autosave_path

ROOT = Path(__file__).resolve().parents[1]


def sample_annotations() -> list[Annotation]:
    ring = [[100.25, 200.5], [400, 210], [380.125, 500], [90, 480]]
    hole = [[150, 250], [300, 260], [290, 400]]
    return [
        Annotation("polygon", ring, holes=(hole,), label="tumor", author="ann",
                   properties={"name": "lesion 1", "measurements": {"area": 12.5}}),
        Annotation.from_bbox(10, 20, 60.5, 90, label="non-tumor", color=(1, 2, 3)),
        Annotation.from_ellipse(1000.1, 2000.2, 300.3, 100.4, 0.7, label="ignore"),
        Annotation("point", [[5, 6]], label="tumor", object_type="detection"),
        Annotation("point", [[5, 6], [7.5, 8]], label="mitosis"),
        Annotation("polygon", ellipse_polygon(5e4, 6e4, 30, 20, 0.1, 40), granularity="pixel",
                   label="tumor", created="2024-01-02T03:04:05+00:00"),
    ]  # fmt: skip


def assert_same(a: list[Annotation], b: list[Annotation], tol: float = 0.0) -> float:
    assert len(a) == len(b)
    err = 0.0
    for x, y in zip(a, b, strict=True):
        for name in ("id", "kind", "label", "granularity", "author", "created", "object_type",
                     "color", "properties"):  # fmt: skip
            assert getattr(x, name) == getattr(y, name), (name, x, y)
        assert (x.ellipse is None) == (y.ellipse is None)
        if x.ellipse is not None:
            np.testing.assert_allclose(x.ellipse, y.ellipse, atol=tol)
        assert x.coords.shape == y.coords.shape and len(x.holes) == len(y.holes)
        err = max(err, float(np.abs(x.coords - y.coords).max()))
        for hx, hy in zip(x.holes, y.holes, strict=True):
            err = max(err, float(np.abs(hx - hy).max()))
    assert err <= tol
    return err


# -- round trips --------------------------------------------------------------------
def test_geojson_roundtrip_exact(tmp_path):
    anns = sample_annotations()
    path = write_geojson(tmp_path / "a.geojson", anns)
    got = read_geojson(path)
    assert got.problems == []
    assert_same(anns, got.annotations)
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    f0 = doc["features"][0]
    assert f0["properties"]["objectType"] == "annotation"
    assert f0["properties"]["classification"] == {"name": "tumor", "color": [200, 0, 0]}
    assert f0["geometry"]["type"] == "Polygon" and len(f0["geometry"]["coordinates"]) == 2
    assert f0["geometry"]["coordinates"][0][0] == f0["geometry"]["coordinates"][0][-1]
    assert doc["features"][2]["geometry"]["type"] == "Polygon"  # ellipse as polygon


def test_asap_roundtrip_exact(tmp_path):
    anns = sample_annotations()
    path = write_asap_xml(tmp_path / "a.xml", anns)
    got = read_asap_xml(path)
    assert got.problems == []
    assert_same(anns, got.annotations)
    text = path.read_text()
    assert 'Type="Rectangle"' in text and 'Type="Dot"' in text and '<Group Name="tumor"' in text
    assert_same(anns, read_annotations(path).annotations)


QUPATH = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "id": "6f1c1f8e-0000-4000-8000-000000000001",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [
                    [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]],
                     [[2, 2], [4, 2], [4, 4], [2, 2]]],
                    [[[20, 20], [30, 20], [30, 30], [20, 20]]],
                ],
            },
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
                "isLocked": False,
            },
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [5.5, 6.5]},
            "properties": {"objectType": "cell", "classification": {"name": "Lymphocyte",
                                                                      "colorRGB": -16776961}},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]},
            "properties": {"objectType": "annotation", "color": -65536,
                           "measurements": {"Area µm^2": 3.5}},
        },
    ],
}  # fmt: skip


def test_reads_qupath_style_file(tmp_path):
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(QUPATH, indent=2), encoding="utf-8")
    got = read_geojson(path)
    assert got.problems == []
    a, b, c, d = got.annotations
    assert a.id == QUPATH["features"][0]["id"] and len(a.holes) == 1 and a.label == "Tumor"
    assert b.label == "Tumor" and b.id != a.id and b.coords.shape == (3, 2)
    assert a.properties == {"isLocked": False}
    assert c.kind == "point" and c.object_type == "detection" and c.label == "Lymphocyte"
    assert d.label == "unclassified" and d.color == (255, 0, 0)
    assert d.properties == {"measurements": {"Area µm^2": 3.5}}


def test_reads_asap_file_from_asap(tmp_path):
    text = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="metastases" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="1" X="20,5" Y="10" />
        <Coordinate Order="0" X="10" Y="10" />
        <Coordinate Order="2" X="15" Y="30" />
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Rectangle" PartOfGroup="None" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="8" Y="0" />
        <Coordinate Order="2" X="8" Y="4" /><Coordinate Order="3" X="0" Y="4" />
      </Coordinates>
    </Annotation>
    <Annotation Name="d" Type="Dot" PartOfGroup="metastases" Color="#F4FA58">
      <Coordinates><Coordinate Order="0" X="3" Y="4" /></Coordinates>
    </Annotation>
    <Annotation Name="s" Type="Spline" PartOfGroup="metastases" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="0" Y="0" /><Coordinate Order="1" X="5" Y="0" />
        <Coordinate Order="2" X="5" Y="5" />
      </Coordinates>
    </Annotation>
    <Annotation Name="bad" Type="Polygon" PartOfGroup="metastases" Color="#F4FA58">
      <Coordinates><Coordinate Order="0" X="nan" Y="4" /></Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="metastases" PartOfGroup="None" Color="#F4FA58"><Attributes /></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""
    path = tmp_path / "asap.xml"
    path.write_text(text)
    got = read_asap_xml(path)
    poly, rect, dot, spline = got.annotations
    np.testing.assert_array_equal(poly.coords, [[10, 10], [20.5, 10], [15, 30]])
    assert poly.label == "metastases" and poly.color is None
    assert rect.kind == "bbox" and rect.label == "unclassified" and rect.color == (100, 254, 46)
    assert dot.kind == "point" and spline.kind == "polygon"
    assert got.problems == [
        "feature 3: warning: Spline read as a polygon through its control points",
        "feature 4: skipped: coordinate 'nan' is not finite or beyond ±1e+07 px",
    ]


# -- bad input ----------------------------------------------------------------------
def feature(geometry, **props):
    return {"type": "Feature", "geometry": geometry, "properties": props}


SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "unsupported geometry type"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, "a"], [2, 2]]]}, "number pairs"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1e9, 0], [2, 2]]]}, "beyond"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1e400, 0], [2, 2]]]}, "NaN or infinite"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}, "fewer than 3"),
        ({"type": "Polygon", "coordinates": "nope"}, "non-empty list of rings"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1, 1, 1]]]}, "number pairs"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [10**400, 0], [2, 2]]]}, "number pairs"),
        (None, "no geometry"),
        ("not a feature", "must be an object"),
    ],
)
def test_bad_feature_is_skipped_and_named(tmp_path, bad, problem):
    features = [feature(SQUARE), bad if isinstance(bad, str) else feature(bad), feature(SQUARE)]
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps(features))
    got = read_geojson(path)
    assert len(got.annotations) == 2
    assert len(got.problems) == 1 and got.problems[0].startswith("feature 1: skipped:")
    assert problem in got.problems[0]


def test_nan_literals_and_nan_properties(tmp_path):
    path = tmp_path / "nan.geojson"
    path.write_text(
        '{"type":"FeatureCollection","features":['
        '{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[0,0],[NaN,0],[1,1]]]}},'
        '{"type":"Feature","geometry":{"type":"Point","coordinates":[1,2]},'
        '"properties":{"score":Infinity,"ok":1}}]}'
    )
    got = read_geojson(path)
    assert got.problems == [
        "feature 0: skipped: coordinates ring 0 has a NaN or infinite coordinate",
        "feature 1: warning: property 'score' holds NaN/Infinity or is too deep; dropped",
    ]
    assert got.annotations[0].properties == {"ok": 1}
    write_geojson(tmp_path / "again.geojson", got.annotations)  # still writable


def test_self_intersecting_polygon_is_kept_with_warning(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]}
    path = tmp_path / "bowtie.geojson"
    path.write_text(json.dumps([feature(SQUARE), feature(bowtie)]))
    got = read_geojson(path)
    assert len(got.annotations) == 2
    assert got.problems == [
        "feature 1: warning: polygon edges cross or touch (self-intersection); kept"
    ]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"type": "FeatureCollection", "features": [', "not valid JSON"),
        ("", "not valid JSON"),
        ('"hello"', "top level must be"),
        ('{"type": "Polygon"}', "FeatureCollection or Feature"),
        ('{"type": "FeatureCollection", "features": 3}', "'features' must be a list"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply|not valid JSON"),
    ],
)
def test_bad_file_raises_annotation_error_naming_file(tmp_path, text, match):
    path = tmp_path / "broken.geojson"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=match) as info:
        read_geojson(path)
    assert "broken.geojson" in str(info.value) and "\n" not in str(info.value)


def test_bad_bytes_missing_file_and_empty_collection(tmp_path):
    path = tmp_path / "bin.geojson"
    path.write_bytes(b'{"type": "\xff\xfe"}')
    with pytest.raises(AnnotationError, match=r"UTF-8|JSON"):
        read_geojson(path)
    with pytest.raises(AnnotationError, match="cannot read"):
        read_geojson(tmp_path / "missing.geojson")
    path.write_text('{"type": "FeatureCollection", "features": []}')
    got = read_geojson(path)
    assert got.annotations == [] and got.problems == ["file: no features"]


def test_size_cap(tmp_path, monkeypatch):
    path = tmp_path / "big.geojson"
    path.write_text(json.dumps([feature(SQUARE)] * 100))
    monkeypatch.setattr(io_ann, "MAX_FILE_BYTES", 1000)
    with pytest.raises(AnnotationError, match="larger than"):
        read_geojson(path)


def test_failed_import_overwrites_nothing(tmp_path):
    saved = write_geojson(tmp_path / "slide.svs.annotations.geojson", sample_annotations())
    before = saved.read_bytes()
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Fea')
    bad_before = bad.read_bytes()
    with pytest.raises(AnnotationError):
        read_geojson(bad)
    assert saved.read_bytes() == before and bad.read_bytes() == bad_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.geojson", saved.name]


@pytest.mark.slow
def test_fifty_megabyte_file_loads(tmp_path):
    rng = np.random.default_rng(0)
    feats = []
    for i in range(20_000):
        ring = ellipse_polygon(1000 + i, 2000, 40, 20, 0.3, 32) + rng.normal(0, 0.1, (32, 2))
        pts = ring.tolist()
        feats.append(
            feature(
                {"type": "Polygon", "coordinates": [[*pts, pts[0]]]},
                objectType="detection",
                measurements={f"m{k}": float(k) * 1.234567 for k in range(60)},
            )
        )
    path = tmp_path / "big.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    assert path.stat().st_size > 50e6
    start = time.perf_counter()
    got = read_geojson(path)
    elapsed = time.perf_counter() - start
    assert len(got.annotations) == 20_000 and elapsed < 30


def test_ten_thousand_polygons_import_fast(tmp_path):
    rng = np.random.default_rng(1)
    anns = [
        Annotation("polygon", ellipse_polygon(rng.uniform(0, 1e5), rng.uniform(0, 1e5), 40, 25,
                                              rng.uniform(0, 3), 32), label="tumor")
        for _ in range(10_000)
    ]  # fmt: skip
    path = write_geojson(tmp_path / "many.geojson", anns)
    start = time.perf_counter()
    got = read_geojson(path)
    elapsed = time.perf_counter() - start
    assert len(got.annotations) == 10_000 and got.problems == []
    assert elapsed < 10  # ~1.5 s on a 2-core laptop-class CPU


# -- fuzz ---------------------------------------------------------------------------
def _mutate_json(doc, rng):
    """Change one random value, key or list of a parsed JSON document."""
    doc = json.loads(json.dumps(doc))
    parents, node = [], doc
    while isinstance(node, (dict, list)) and node and rng.random() < 0.8:
        key = rng.choice(list(node.keys())) if isinstance(node, dict) else rng.integers(len(node))
        key = str(key) if isinstance(node, dict) else int(key)
        parents.append((node, key))
        node = node[key]
    if not parents:
        return [[], {}, None, 3, "x"][rng.integers(5)]
    parent, key = parents[-1]
    op = rng.integers(5)
    if op == 0 and isinstance(parent, dict):
        del parent[key]
    elif op == 0:
        parent.pop(key)
    elif op == 1:
        parent[key] = [None, True, "NaN", -1, 1e308, [], {}, [[1]], "Polygon", 10**30][
            rng.integers(10)
        ]
    elif op == 2:
        parent[key] = float("nan")
    elif op == 3:
        parent[key] = [node, node]
    else:
        parent[key] = {"type": node} if not isinstance(node, dict) else list(node.values())
    return doc


def test_fuzz_only_annotation_error_or_success(tmp_path):
    rng = np.random.default_rng(20240611)
    base_path = write_geojson(tmp_path / "base.geojson", sample_annotations())
    base = base_path.read_bytes()
    doc = json.loads(base)
    doc["features"].append(QUPATH["features"][0])
    path = tmp_path / "fuzz.geojson"
    outcomes = {"ok": 0, "error": 0}
    for trial in range(400):
        kind = trial % 4
        if kind == 0:  # byte flips
            data = bytearray(base)
            for pos in rng.integers(0, len(data), rng.integers(1, 8)):
                data[pos] = int(rng.integers(0, 256))
            blob = bytes(data)
        elif kind == 1:  # truncation
            blob = base[: int(rng.integers(0, len(base)))]
        elif kind == 2:  # structural mutations
            mutated = doc
            for _ in range(int(rng.integers(1, 4))):
                mutated = _mutate_json(mutated, rng)
            blob = json.dumps(mutated).encode()
        else:  # NaN / Infinity literals spliced in at number positions
            text = base.decode()
            digits = [i for i, ch in enumerate(text) if ch.isdigit()]
            i = int(rng.choice(digits))
            literal = ["NaN", "Infinity", "-Infinity", '"NaN"'][rng.integers(4)]
            blob = (text[:i] + literal + text[i:]).encode()
        path.write_bytes(blob)
        try:
            got = read_geojson(path)
        except AnnotationError as exc:
            assert "\n" not in str(exc)
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        assert all(p.startswith(("feature ", "file:")) for p in got.problems)
        write_geojson(tmp_path / "rewrite.geojson", got.annotations)  # what loads can be saved
    assert outcomes["ok"] >= 20 and outcomes["error"] >= 100, outcomes


def test_fuzz_asap(tmp_path):
    """Like the GeoJSON fuzz: a one-line AnnotationError or a result that can be saved again."""
    rng = np.random.default_rng(7)
    base = write_asap_xml(tmp_path / "base.xml", sample_annotations()).read_bytes()
    path = tmp_path / "fuzz.xml"
    outcomes = {"ok": 0, "error": 0, "skipped": 0}
    for trial in range(300):
        kind = trial % 3
        data = bytearray(base)
        if kind == 0:  # truncation
            data = data[: int(rng.integers(0, len(data)))]
        elif kind == 1:  # printable byte flips
            for pos in rng.integers(0, len(data), rng.integers(1, 6)):
                data[pos] = int(rng.integers(32, 127))
        else:  # a coordinate replaced by a non-number, NaN, Infinity or a huge value
            text = base.decode()
            starts = [i + 4 for i in range(len(text)) if text.startswith(' X="', i)]
            i = int(rng.choice(starts))
            end = text.index('"', i)
            literal = ["NaN", "inf", "-Infinity", "abc", "1e99", ""][rng.integers(6)]
            data = bytearray((text[:i] + literal + text[end:]).encode())
        path.write_bytes(bytes(data))
        try:
            got = read_asap_xml(path)
        except AnnotationError as exc:
            assert "\n" not in str(exc)
            assert str(path) in str(exc)
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        assert all(p.startswith(("feature ", "annotation ", "file:")) for p in got.problems)
        for ann in got.annotations:  # what loads is finite and within the coordinate limit
            assert np.isfinite(ann.coords).all() and np.abs(ann.coords).max() <= 1e7
        write_asap_xml(tmp_path / "rewrite.xml", got.annotations)  # what loads can be saved
        if kind == 2 and got.problems:  # a bad coordinate skips its annotation, not the file
            outcomes["skipped"] += 1
            assert len(got.annotations) >= len(sample_annotations()) - 1
    assert outcomes["ok"] >= 50 and outcomes["error"] >= 50 and outcomes["skipped"] >= 30, outcomes


# -- atomic writes, backups, SIGKILL ------------------------------------------------
def test_atomic_write_rotates_backups(tmp_path):
    path = tmp_path / "a.txt"
    for k in range(6):
        atomic_write_text(path, f"v{k}", backups=3)
    assert path.read_text() == "v5"
    assert [path.with_name(f"a.txt.{k}").read_text() for k in (1, 2, 3)] == ["v4", "v3", "v2"]
    assert not path.with_name("a.txt.4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "a.txt.1", "a.txt.2", "a.txt.3"]
    atomic_write_text(tmp_path / "b.txt", "x", backups=0)
    atomic_write_text(tmp_path / "b.txt", "y", backups=0)
    assert not (tmp_path / "b.txt.1").exists()


def test_autosave_path():
    assert autosave_path("/data/s1.svs") == Path("/data/s1.svs.annotations.geojson")
    assert autosave_path("/data/s1.svs", "/proj") == Path("/proj/s1.svs.annotations.geojson")


CHILD = r"""
import json, sys
from napari_histo._atomic import atomic_write_text
path, seed = sys.argv[1], int(sys.argv[2])
k = 0
while True:
    k += 1
    n = 1 + (k * 7919 + seed) % 4000
    atomic_write_text(path, json.dumps({"k": k, "data": [k] * n}), backups=3)
    if k == 1:
        print("ready", flush=True)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_during_saves_never_leaves_a_broken_file(tmp_path):
    rng = np.random.default_rng(11)
    path = tmp_path / "slide.annotations.geojson"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    last_k = 0
    for trial in range(25):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(trial)],
            stdout=subprocess.PIPE, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.0, 0.15)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for candidate in [path, *(path.with_name(f"{path.name}.{k}") for k in (1, 2, 3))]:
            if candidate == path or candidate.exists():
                text = candidate.read_text()
                assert text, f"trial {trial}: {candidate.name} is empty"
                doc = json.loads(text)
                assert doc["data"] == [doc["k"]] * len(doc["data"])
        last_k = json.loads(path.read_text())["k"]
        assert last_k >= 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(leftovers) <= 25 * 2  # killed mid-write: stray temp files, never the target


# -- autosave -----------------------------------------------------------------------
def test_autosaver_debounces_and_saves_within_delay(tmp_path):
    anns = sample_annotations()
    state = {"anns": anns[:1]}
    path = tmp_path / "s.svs.annotations.geojson"
    saved = threading.Event()
    with Autosaver(path, lambda: list(state["anns"]), delay_s=0.2,
                   on_saved=lambda p: saved.set()) as saver:  # fmt: skip
        start = time.monotonic()
        for k in range(1, 30):
            state["anns"] = anns[: 1 + k % len(anns)]
            saver.changed()  # returns at once
        assert time.monotonic() - start < 0.1
        assert saved.wait(2.0)
        assert time.monotonic() - start < 2.0
        assert saver.saves == 1
        state["anns"] = anns
        saver.changed()
        assert saver.flush() and not saver.pending
        assert not saver.flush()
    assert_same(anns, read_geojson(path).annotations)
    assert path.with_name(path.name + ".1").exists()


def test_autosaver_snapshot_xml_and_close_flushes(tmp_path):
    anns = sample_annotations()
    path = tmp_path / "s.xml"
    saver = Autosaver(path, lambda: [], delay_s=60)
    saver.changed(anns)
    saver.close()
    assert_same(anns, read_asap_xml(path).annotations)
    with pytest.raises(RuntimeError, match="closed"):
        saver.changed()


def test_autosaver_errors_are_reported_and_keep_previous_file(tmp_path):
    path = tmp_path / "a.geojson"
    write_geojson(path, sample_annotations())
    before = path.read_bytes()
    errors = []
    calls = {"n": 0}

    def broken():
        calls["n"] += 1
        raise OSError("disk on fire")

    with Autosaver(path, broken, delay_s=0.0, on_error=errors.append) as saver:
        saver.changed()
        deadline = time.monotonic() + 2
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
    assert errors and isinstance(errors[0], OSError) and saver.last_error is errors[0]
    assert path.read_bytes() == before
    bad_dir = Autosaver(tmp_path / "missing" / "a.geojson", lambda: [], delay_s=0.0,
                        on_error=errors.append)  # fmt: skip
    bad_dir.changed()
    bad_dir.close()
    assert isinstance(errors[-1], OSError)


def test_roundtrip_error_well_below_half_pixel(tmp_path):
    rng = np.random.default_rng(5)
    anns = [
        Annotation("polygon", rng.uniform(0, 1e5, (32, 2)) + rng.uniform(0, 1, (32, 2)))
        for _ in range(50)
    ] + [Annotation.from_ellipse(*rng.uniform(100, 1e5, 2), 300.123, 45.678, math.pi / 7)]
    err_json = assert_same(anns, read_geojson(write_geojson(tmp_path / "r.geojson", anns))
                           .annotations, tol=0.5)  # fmt: skip
    err_xml = assert_same(anns, read_asap_xml(write_asap_xml(tmp_path / "r.xml", anns))
                          .annotations, tol=0.5)  # fmt: skip
    assert err_json == 0.0 and err_xml == 0.0
