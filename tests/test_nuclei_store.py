"""Whole-slide nuclei into the result store, region jobs, exports and the CLI."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_histo.cli import main
from napari_histo.errors import SlideError, StoreError
from napari_histo.io.slide import Slide
from napari_histo.io.store import ResultGeometry
from napari_histo.nuclei.classical import ClassicalParams, segment_nuclei, segment_region
from napari_histo.nuclei.export import (
    export_csv,
    export_geojson,
    iter_region_nuclei,
    tumor_probability_lookup,
)
from napari_histo.nuclei.features import read_nuclei_csv
from napari_histo.nuclei.run import COLUMNS, find_nuclei_runs, open_store_for
from napari_histo.nuclei.store import PYRAMID_TOP_PX, iter_nuclei_to_store, nuclei_to_store
from napari_histo.synthetic import write_synthetic_slide

MPP = 0.25


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A 2048² synthetic slide (seed 5: tumour, normal tissue, glass)."""
    return write_synthetic_slide(
        tmp_path_factory.mktemp("nstore") / "s.svs", size=2048, seed=5, workers=1
    )


@pytest.fixture(scope="module")
def stored(synth, tmp_path_factory):
    """A complete whole-slide run with 512 px blocks (16 blocks, many seams)."""
    out = tmp_path_factory.mktemp("store")
    return nuclei_to_store(synth.path, block_px=512, out_dir=out), out


def test_tiled_store_equals_one_untiled_call(synth, stored):
    result, _ = stored
    run = result.run
    assert run.complete and not result.cancelled and result.nuclei > 100
    tiled = np.asarray(run.labels(0)[...])
    assert tiled.dtype == np.uint32 and tiled.shape == (2048, 2048)
    with Slide(synth.path) as slide:
        rgb = slide.read_region(0, 0, 0, 2048, 2048)
    untiled = segment_nuclei(rgb, MPP, threshold=float(run.group.attrs["threshold"]))
    # Same pixels, and a one-to-one id correspondence: nothing cut or duplicated at seams.
    assert np.array_equal(tiled > 0, untiled > 0)
    pairs = np.unique(np.stack([tiled[tiled > 0], untiled[tiled > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert pairs.shape[1] == result.nuclei == int(untiled.max())


def test_ids_unique_and_whole(stored):
    run = stored[0].run
    tiled = np.asarray(run.labels(0)[...])
    ids = np.unique(tiled[tiled > 0])
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))  # 1..n, none lost
    for index, box in enumerate(ndi.find_objects(tiled)):
        _, parts = ndi.label(tiled[box] == index + 1)
        assert parts == 1, f"nucleus {index + 1} is in {parts} pieces"
    table = run.features()
    assert list(table) == list(COLUMNS)
    assert np.array_equal(table["id"], ids)  # one row per nucleus
    cy = np.round(table["centroid_y_um"] / MPP - 0.5).astype(int)
    cx = np.round(table["centroid_x_um"] / MPP - 0.5).astype(int)
    assert np.mean(tiled[cy, cx] == table["id"]) > 0.95  # centroids fall on their nucleus
    limits = ClassicalParams()
    area = table["area_um2"]
    assert np.all((area >= limits.min_area_um2 - 1e-9) & (area <= limits.max_area_um2 + 1e-9))
    assert np.all(np.isnan(table["tumor_probability"]))  # no tumour run in this store


def test_display_pyramid(synth, stored):
    run, out = stored[0].run, stored[1]
    levels = run.levels()
    assert [lv.shape for lv in levels] == [(2048, 2048), (1024, 1024)]
    assert max(levels[-1].shape) <= PYRAMID_TOP_PX
    assert np.array_equal(levels[1][...], levels[0][::2, ::2])
    datasets = run.group["labels"].attrs["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [[MPP] * 2, [0.5] * 2]
    assert find_nuclei_runs(synth.path) == []  # no store beside the slide
    assert run.run_id in [r.run_id for r in find_nuclei_runs(synth.path, out)]


def test_second_call_reuses_the_complete_run(synth, stored):
    result, out = stored
    again = nuclei_to_store(synth.path, block_px=512, out_dir=out)
    assert again.run.run_id == result.run.run_id and again.blocks_run == 0
    assert again.nuclei == result.nuclei
    other = nuclei_to_store(synth.path, block_px=1024, out_dir=out, region_l0=(0, 0, 1024, 1024))
    assert other.run.run_id != result.run.run_id  # other settings: a new run


def test_plan_of_a_complete_run_has_nothing_to_do(synth, stored):
    from napari_histo.generators import drive
    from napari_histo.nuclei.store import execute_nuclei, plan_nuclei

    result, out = stored
    plan = plan_nuclei(synth.path, block_px=512, out_dir=out)
    assert plan.run.run_id == result.run.run_id and plan.tissue is None
    again = drive(execute_nuclei(plan))
    assert again.blocks_run == 0 and not again.cancelled and again.nuclei == result.nuclei


def test_interrupt_and_resume_give_the_same_labels(synth, stored, tmp_path):
    cancel = threading.Event()
    gen = iter_nuclei_to_store(synth.path, block_px=512, out_dir=tmp_path, cancel=cancel)
    stages = [next(gen) for _ in range(20)]  # threshold pass, then a few blocks
    assert stages[-1].stage == "segment"
    gen.close()  # killed mid-run: finished blocks are on disk
    cancel.set()
    again = iter_nuclei_to_store(synth.path, block_px=512, out_dir=tmp_path, cancel=cancel)
    with pytest.raises(StopIteration) as stop:
        next(again)
    assert stop.value.value.cancelled and stop.value.value.run.status == "cancelled"
    resumed = nuclei_to_store(synth.path, block_px=512, out_dir=tmp_path)
    assert 0 < resumed.blocks_run < stored[0].blocks_run  # only the blocks left
    assert np.array_equal(resumed.run.labels(0)[...], stored[0].run.labels(0)[...])
    assert np.array_equal(resumed.run.features()["id"], stored[0].run.features()["id"])


def test_tumor_probability_from_the_store(synth, stored, tmp_path):
    with Slide(synth.path) as slide:
        store = open_store_for(slide, tmp_path)
    assert tumor_probability_lookup(store) is None
    geometry = ResultGeometry((0, 0), 8.0, (256, 256), 64, 2.0)
    run = store.create_or_resume({"models": []}, geometry)
    for r in range(4):
        for c in range(4):
            value = np.full((64, 64), 0.9 if c < 2 else 0.1, np.float32)
            run.write_cell(r, c, {k: value for k in ("probability", "aleatoric", "epistemic",
                                                        "entropy")})  # fmt: skip
    run.finish()
    result = nuclei_to_store(synth.path, block_px=1024, out_dir=tmp_path)
    table = result.run.features()
    expected = np.where(table["centroid_x_um"] / MPP < 1024, 0.9, 0.1)
    assert np.allclose(table["tumor_probability"], expected, atol=1e-6)
    region = nuclei_run_region(synth.path, (900, 600, 300, 500), tmp_path)  # the widget's job
    expected = np.where(region.table["centroid_x_um"] / MPP < 1024, 0.9, 0.1)
    assert len(expected) and np.allclose(region.table["tumor_probability"], expected, atol=1e-6)


def nuclei_run_region(path, region, out_dir):
    gen = iter_region_nuclei(path, region, out_dir=out_dir)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def test_exports(stored, tmp_path):
    run = stored[0].run
    table = read_nuclei_csv(export_csv(run, tmp_path / "n.csv"))
    assert np.array_equal(table["id"], run.features()["id"])
    data = json.loads(export_geojson(run, tmp_path / "n.geojson").read_text())
    assert data["type"] == "FeatureCollection"
    features = data["features"]
    assert sorted(int(f["id"].split("-")[1]) for f in features) == list(table["id"])
    first = next(f for f in features if f["id"] == "nucleus-1")
    assert first["properties"]["objectType"] == "detection"
    assert "tumor_probability" not in first["properties"]["measurements"]  # NaN left out
    ring = np.array(first["geometry"]["coordinates"][0])
    x_um = table["centroid_x_um"][0]
    assert abs(ring[:, 0].mean() * MPP - x_um) < 2.0  # level-0 px around the centroid


def test_region_job_matches_segment_region(synth, tmp_path):
    region = (256, 512, 1500, 1100)
    gen = iter_region_nuclei(synth.path, region, out_dir=tmp_path, tile_px=768)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert steps[-1][0] == steps[-1][1]
    with Slide(synth.path) as slide:
        expected = segment_region(slide, region, tile_px=768)
    assert np.array_equal(result.labels, expected)
    assert result.region_l0 == region and result.mpp == (MPP, MPP)
    assert len(result.table["id"]) == int(expected.max()) > 0
    cancel = threading.Event()
    gen = iter_region_nuclei(synth.path, region, cancel=cancel, tile_px=768)
    next(gen)
    cancel.set()
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "watershed"}, "`method` must be one of"),
        ({"region_l0": (0, 0, 4000, 10)}, "`region_l0`"),
        ({"region_l0": (0, 0, -1, 10)}, "`region_l0`"),
        ({"block_px": 300}, "`block_px` must be a multiple of 256"),
    ],
)
def test_bad_input(synth, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        iter_nuclei_to_store(synth.path, out_dir=tmp_path, **kwargs)


def test_slide_without_mpp_and_missing_files(synth, generic_tiff, tmp_path):
    with pytest.raises(SlideError, match="mpp"):
        iter_nuclei_to_store(generic_tiff, out_dir=tmp_path)
    with pytest.raises(SlideError, match=r"missing\.svs"):
        iter_nuclei_to_store(tmp_path / "missing.svs")
    with pytest.raises(StoreError, match="does not exist"):
        iter_nuclei_to_store(synth.path, out_dir=tmp_path / "no" / "dir")


# -- CLI ----------------------------------------------------------------------------


def test_cli_nuclei_region_with_exports(synth, tmp_path, capsys):
    csv_path, geojson_path = tmp_path / "n.csv", tmp_path / "n.geojson"
    argv = ["nuclei", str(synth.path), "--region", "0,0,1024,1024", "--out", str(tmp_path)]
    code = main([*argv, "--csv", str(csv_path), "--geojson", str(geojson_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "nuclei" in out.out and csv_path.exists() and geojson_path.exists()
    assert "nuclei segment" in out.err  # the progress bar
    n = len(read_nuclei_csv(csv_path)["id"])
    assert n > 0 and len(json.loads(geojson_path.read_text())["features"]) == n


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["{missing}"], "no such slide file"),
        (["{slide}", "--region", "1,2,3"], "--region must be x,y,w,h"),
        (["{slide}", "--region", "0,0,99999,10"], "`region_l0` x=0,y=0,w=99999,h=10 lies outside"),
        (["{slide}", "--method", "magic"], "invalid choice: 'magic'"),
    ],
)
def test_cli_nuclei_bad_input(synth, tmp_path, capsys, args, match):
    args = [a.format(missing=tmp_path / "missing.svs", slide=synth.path) for a in args]
    try:
        code = main(["nuclei", *args, "--out", str(tmp_path)])
    except SystemExit as exit_:  # argparse rejects a bad choice itself
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert match in err.strip().splitlines()[-1]  # one line says what is wrong


def test_cli_nuclei_ctrl_c_exits_130_and_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    slide = write_synthetic_slide(tmp_path / "big.svs", 4096, seed=5, workers=2).path  # 4 blocks
    cmd = [sys.executable, "-m", "napari_histo.cli", "nuclei", str(slide), "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the first segmented block
        line = proc.stderr.readline()
        if "nuclei segment" in line or not line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    again = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    computed = int(again.stdout.split("nuclei (")[1].split(" blocks")[0])
    assert 0 < computed < 4  # resumed, not restarted


def test_core_modules_import_no_gui():
    import subprocess
    import sys

    code = (
        "import sys, napari_histo.nuclei.store, napari_histo.bench.nuclei\n"
        "gui = {'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'magicgui', 'vispy'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & gui))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_nucleus_reaching_into_glass_blocks_is_whole(tmp_path):
    """A nucleus the coarse tissue mask misses, across a seam into a "glass" block."""
    from tests.slides import write_aperio_svs

    image = np.full((1024, 1536, 3), 245, np.uint8)
    image[:, 40:330] = (225, 160, 200)  # a strip of pink stroma: only block column 0 is tissue
    yy, xx = np.mgrid[:1024, :1536]
    for cy, cx in ((100, 150), (300, 200), (700, 250), (500, 512), (530, 1024)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12**2] = (70, 40, 130)  # the last two on seams
    path = tmp_path / "edge.svs"
    write_aperio_svs(path, image, levels=1)
    result = nuclei_to_store(path, block_px=512, out_dir=tmp_path)
    labels = np.asarray(result.run.labels(0)[...])
    for cy, cx in ((500, 512), (530, 1024)):
        ids = labels[cy - 8 : cy + 9, cx - 8 : cx + 9]
        assert ids.min() > 0 and ids.min() == ids.max(), (cy, cx)  # whole, one id
    assert result.nuclei == 5 and len(result.run.features()["id"]) == 5
