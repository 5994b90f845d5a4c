"""The napari-histo command: info, synth, bench plumbing, argument errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_histo.cli import main
from napari_histo.paths import default_models_dir


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "napari_histo.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_info_text(small_svs, capsys):
    assert main(["info", str(small_svs)]) == 0
    out = capsys.readouterr().out
    assert "vendor:     aperio" in out
    assert "0.2500 x 0.2500 µm/px" in out
    assert "objective:  40.0" in out
    assert "256x256" in out  # native tile size
    assert "3000    2000" in out and "750     500" in out


def test_info_json_lists_synthetic_levels(wide_tiff, capsys):
    assert main(["info", "--json", str(wide_tiff)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vendor"] == "generic-tiff"
    assert [lv["stored"] for lv in info["levels"]] == [True, False, False]
    assert info["levels"][0]["tile"] == [256, 256]
    assert info["mpp_x"] == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["synth", "x.svs", "--size", "-5"], "expected an integer > 0, got -5"),
        (["synth", "x.svs", "--size", "big"], "expected an integer, got 'big'"),
        (["synth", "x.svs", "--seed", "-1"], "expected an integer >= 0, got -1"),
        (["bench", "nonsense"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        (["train", "--nuclei"], "--nuclei trains the nuclei model from generated or real"),
        (["bench", "read", "--device", "cuda"], "bench read has no --device option"),
        (["bench", "feed", "--float32"], "bench feed has no --float32 option"),
        (["bench", "infer", "--quick", "--device", "tpu"], "`device` must be auto, cpu"),
    ],
)
def test_bad_arguments_exit_2(args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_synth_refuses_wrong_suffix_and_existing(tmp_path):
    proc = run_cli("synth", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "must end in .svs" in proc.stderr
    existing = tmp_path / "there.svs"
    existing.write_bytes(b"keep me")
    proc = run_cli("synth", str(existing), "--size", "2048")
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert existing.read_bytes() == b"keep me"


def test_bench_read_reports_ratios(small_svs):
    from napari_histo.bench.read import bench_read

    result = bench_read(quick=True, slide=str(small_svs))
    for key in ("raw_windows_s", "viewer_1t_windows_s", "viewer_windows_s", "dask_1t_windows_s"):
        assert result[key] > 0
    assert result["ratio_1t"] == pytest.approx(
        result["raw_windows_s"] / result["viewer_1t_windows_s"], rel=0.01
    )
    assert result["dask_ratio_1t"] == pytest.approx(
        result["raw_windows_s"] / result["dask_1t_windows_s"], rel=0.01
    )
    assert result["windows"] == 40 and result["direct_tile_decoding"] is True
    through_openslide = bench_read(quick=True, slide=str(small_svs), direct=False)
    assert through_openslide["direct_tile_decoding"] is False


def test_synth_writes_a_slide_with_truth(tmp_path):
    out = tmp_path / "s.svs"
    proc = run_cli("synth", str(out), "--size", "2048", "--seed", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and (tmp_path / "s.truth.zarr").is_dir()
    assert "wrote" in proc.stdout
    info = json.loads(run_cli("info", "--json", str(out)).stdout)
    assert info["vendor"] == "aperio" and info["width"] == 2048 and info["mpp_x"] == 0.25


@pytest.fixture(scope="module")
def infer_slide_path(tmp_path_factory):
    from napari_histo.synthetic import write_synthetic_slide

    root = tmp_path_factory.mktemp("cli_infer")
    return write_synthetic_slide(root / "c.svs", 3072, seed=2003, workers=1).path


def test_infer_runs_then_resumes_nothing(infer_slide_path, tmp_path):
    args = ("infer", str(infer_slide_path), "--out", str(tmp_path), "--quiet")
    first = run_cli(*args, "--members", "deeplabv3plus", timeout=300)
    assert first.returncode == 0, first.stderr
    assert "done:" in first.stdout and (tmp_path / "c.svs.histo.zarr").is_dir()
    again = run_cli(*args, "--members", "deeplabv3plus", timeout=300)
    assert again.returncode == 0 and "done: 0 of" in again.stdout
    # The run records the precision it computed in: mixed by default, --float32 on
    # request, each its own run (one that is not float32 keeps it in its settings).
    from napari_histo.inference.plan import precision_name, select_device
    from napari_histo.io.store import latest_complete_run

    mixed = precision_name(select_device("auto"))
    stored = latest_complete_run(infer_slide_path, out_dir=tmp_path)
    assert stored.group.attrs["precision"] == mixed and f"({mixed})" in first.stdout
    exact = run_cli(*args, "--members", "deeplabv3plus", "--float32", timeout=300)
    assert exact.returncode == 0, exact.stderr
    assert "(float32)" in exact.stdout
    assert ("done: 0 of" in exact.stdout) == (mixed == "float32")
    stored = latest_complete_run(infer_slide_path, out_dir=tmp_path)
    assert stored.group.attrs["precision"] == "float32"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--region", "1,2,3"], "--region must be x,y,w,h"),
        (["--region", "0,0,9000,10"], "outside the slide"),
        (["--members", "nosuchmodel"], "no model 'nosuchmodel'"),
        (["--overlap", "1.5"], "`overlap` must be in [0, 1)"),
        (["--device", "cuda:0"], "CUDA is not available"),
    ],
)
def test_infer_bad_arguments(infer_slide_path, tmp_path, extra, message):
    proc = run_cli("infer", str(infer_slide_path), "--out", str(tmp_path), "--quiet", *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_infer_refuses_pickled_weights(infer_slide_path, tmp_path):
    import shutil

    import torch

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(default_models_dir() / "deeplabv3plus-1.0.json", models)
    card = json.loads((models / "deeplabv3plus-1.0.json").read_text())
    torch.save({"w": torch.zeros(1)}, models / card["weights_file"])
    proc = run_cli("infer", str(infer_slide_path), "--models-dir", str(models), "--quiet")
    assert proc.returncode == 2
    assert "refused because unpickling can run arbitrary code" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_infer_no_slide_mpp(generic_tiff, tmp_path):
    proc = run_cli("infer", str(generic_tiff), "--out", str(tmp_path), "--quiet")
    assert proc.returncode == 2 and "microns-per-pixel" in proc.stderr


@pytest.fixture(scope="module")
def dpi72_tiff(tmp_path_factory):
    """A tiled TIFF whose resolution tags say 72 dpi (352.8 µm/px): a scanner default."""
    from tests.slides import textured_rgb, write_generic_tiff

    path = tmp_path_factory.mktemp("dpi72") / "dpi72.tif"
    write_generic_tiff(path, textured_rgb(1536, 1536, seed=4), levels=1, tile=256, mpp=25400 / 72)
    return path


def test_implausible_mpp_is_missing_and_mpp_gives_the_scale(dpi72_tiff, tmp_path):
    proc = run_cli("infer", str(dpi72_tiff), "--out", str(tmp_path), "--quiet")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "352.8 µm/px" in lines[0] and "treated as missing" in lines[0]
    assert "microns-per-pixel" in lines[1]
    out = tmp_path / "new" / "dir"  # --out that does not exist yet is created
    proc = run_cli("infer", str(dpi72_tiff), "--mpp", "0.5", "--out", str(out), "--quiet",
                   "--members", "resunet", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "dpi72.tif.histo.zarr").is_dir() and "µm/px" not in proc.stderr
    proc = run_cli("infer", str(dpi72_tiff), "--mpp", "-1", "--quiet")
    assert proc.returncode == 2 and "expected a number > 0" in proc.stderr


def test_out_that_is_a_file(infer_slide_path, tmp_path):
    (tmp_path / "f").write_text("x")
    proc = run_cli("infer", str(infer_slide_path), "--out", str(tmp_path / "f"), "--quiet")
    assert proc.returncode == 2 and "--out must be a directory" in proc.stderr


def test_infer_ctrl_c_stops_cleanly_and_resumes(tmp_path):
    import signal
    import time

    from napari_histo.synthetic import write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "big.svs", 6144, seed=2004, workers=1).path
    cmd = [
        sys.executable,
        "-m",
        "napari_histo.cli",
        "infer",
        str(slide),
        "--out",
        str(tmp_path),
        "--batch",
        "1",
        "--large-tile",
        "512",  # many large tiles (the default tiling), so half of them are saved
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until about half the tiles are done
        line = proc.stderr.readline()
        if "%" in line and float(line.split("%")[0].split()[-1]) >= 50:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    again = run_cli(
        "infer", str(slide), "--out", str(tmp_path), "--large-tile", "512", "--quiet", timeout=300
    )
    assert again.returncode == 0
    done, total = again.stdout.split("done: ")[1].split(" tiles")[0].split(" of ")
    assert 0 < int(done) < int(total)  # resumed, not restarted


# -- train from annotations ------------------------------------------------------
@pytest.fixture(scope="module")
def annotated_slide(tmp_path_factory):
    """2048 px synthetic slide + truth annotations in its autosave file + a weak model card."""
    from napari_histo.bench.train import TARGET_SEED, _slide, truth_annotations, weak_model
    from napari_histo.io.annotations import write_geojson
    from napari_histo.io.annotations.autosave import autosave_path

    root = tmp_path_factory.mktemp("cli_train")
    slide = _slide(root, TARGET_SEED, 2048)
    write_geojson(autosave_path(slide), truth_annotations(slide))
    return slide, weak_model(slide, root / "parent", steps=2, width=4)


@pytest.fixture
def train_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_HISTO_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("NAPARI_HISTO_CONFIG", str(tmp_path / "config"))
    return tmp_path / "out"


def test_train_from_annotations_writes_new_version(annotated_slide, train_env, capsys):
    slide, card = annotated_slide
    code = main(["train", str(slide), "--members", str(card), "--steps", "3", "--out",
                 str(train_env)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "weak 1.0 -> 1.1: held-out Dice" in out and "ensemble held-out Dice" in out
    assert sorted(p.name for p in train_env.iterdir()) == ["weak-1.1.json", "weak-1.1.safetensors"]
    assert "training weak (loss " in err


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no file", "no annotation file"),
        ("one class", "both tumor and non-tumor"),
        ("outside slide", "outside the slide"),
        ("outside tissue", "outside tissue"),
        ("bad geojson", "not valid JSON"),
        ("bad slide", "bad.svs"),
    ],
)
def test_train_bad_input_exit_2(annotated_slide, train_env, tmp_path, capsys, case, message):
    from napari_histo.annotations.model import Annotation
    from napari_histo.io.annotations import read_geojson, write_geojson
    from napari_histo.io.annotations.autosave import autosave_path

    slide, card = annotated_slide
    anns = read_geojson(autosave_path(slide)).annotations
    path = tmp_path / "anns.geojson"
    target = str(slide)
    if case == "no file":
        path = tmp_path / "missing.geojson"
    elif case == "one class":
        write_geojson(path, [a for a in anns if a.label == "tumor"])
    elif case == "outside slide":
        write_geojson(path, [*anns, Annotation.from_bbox(5000, 10, 5100, 90, label="tumor")])
    elif case == "outside tissue":
        # Annotations on glass are skipped with a warning; none left on tissue is an error.
        write_geojson(path, [Annotation.from_bbox(0, 0, 60, 60, label="tumor")])
    elif case == "bad geojson":
        path.write_text("{not json")
    else:
        target = str(tmp_path / "bad.svs")
        Path(target).write_bytes(b"not a slide")
        write_geojson(path, anns)
    code = main(["train", target, "--annotations", str(path), "--members", str(card),
                 "--steps", "2", "--out", str(train_env)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1] and err[-1].startswith("napari-histo train: error:")
    assert not train_env.exists() or not any(train_env.iterdir())


def test_train_ctrl_c_exits_130_and_writes_nothing(annotated_slide, tmp_path):
    import os
    import signal
    import time

    slide, card = annotated_slide
    out = tmp_path / "out"
    env = {**os.environ, "NAPARI_HISTO_MODELS": str(tmp_path / "m"),
           "NAPARI_HISTO_CONFIG": str(tmp_path / "c")}  # fmt: skip
    cmd = [sys.executable, "-m", "napari_histo.cli", "train", str(slide), "--members", str(card),
           "--steps", "5000", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until training has started
        if "training weak" in proc.stderr.readline():
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "no new model version was written" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_train_takes_mpp_for_a_slide_without_one(annotated_slide, train_env, tmp_path, capsys):
    from napari_histo.io.annotations.autosave import autosave_path
    from napari_histo.io.slide import Slide
    from tests.slides import write_generic_tiff

    slide, card = annotated_slide
    with Slide(slide) as opened:
        image = opened.read_region(0, 0, 0, *opened.dimensions)
        mpp = opened.mpp
    bare = tmp_path / "bare.tiff"  # the same pixels, no µm/px in the file
    write_generic_tiff(bare, image, levels=2)
    autosave_path(bare).write_bytes(autosave_path(slide).read_bytes())
    args = ["train", str(bare), "--members", str(card), "--steps", "2", "--out", str(train_env)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "bare.tiff: has no microns-per-pixel" in err and "--mpp" in err
    assert main([*args, "--mpp", str(mpp)]) == 0, capsys.readouterr().err
    assert (train_env / "weak-1.1.json").exists()


def test_text_progress_stays_silent_for_its_delay():
    import io

    from napari_histo._progress import TextProgress

    stream = io.StringIO()
    quick = TextProgress("finding tissue", "bands", stream=stream, delay_s=60)
    quick(1, 2)
    quick(2, 2)
    assert stream.getvalue() == ""  # a step that ends within its delay shows nothing
    TextProgress("finding tissue", "bands", stream=stream)(2, 2)
    assert "finding tissue: [" in stream.getvalue() and "100.0% 2/2 bands" in stream.getvalue()
