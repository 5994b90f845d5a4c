"""Cohort runs on a real dask LocalCluster of worker processes, with a real kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_histo.analysis.cohort import (
    CohortConfig,
    CohortError,
    process_slide,
    run_cohort,
    slide_folders,
)
from napari_histo.cli.cohort import read_slide_list
from napari_histo.io.slide import Slide
from napari_histo.io.store import RESULT_ARRAYS
from napari_histo.models import default_models_dir, latest_cards
from napari_histo.nuclei.run import open_store_for
from napari_histo.synthetic import write_synthetic_slide

from .test_engine import make_member


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort_slides")
    return [
        str(write_synthetic_slide(root / f"s{i}.svs", 4096, seed=4100 + i, workers=1).path)
        for i in range(2)
    ]


@pytest.fixture(scope="module")
def tiny_cards(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort_models")
    return (str(make_member(root, "resunet", 1)), str(make_member(root, "deeplabv3plus", 2)))


def arrays(out_dir: Path, slide: str) -> dict[str, np.ndarray]:
    with Slide(slide) as handle:
        store = open_store_for(handle, out_dir / Path(slide).name, mode="r")
    run = next(r for r in store.runs() if r.complete)
    return {name: np.asarray(run.array(name)[...]) for name in RESULT_ARRAYS}


def test_slide_folders_and_list_file(tmp_path):
    assert slide_folders(["a/x.svs", "b/y.svs"]) == ["x.svs", "y.svs"]
    twins = slide_folders(["a/x.svs", "b/x.svs"])
    assert len(set(twins)) == 2 and all(t.startswith("x.svs-") for t in twins)
    listing = tmp_path / "slides.txt"
    listing.write_text("# cohort\n\nrel.svs\n/abs/one.svs\n  spaced.svs  \n")
    assert read_slide_list(listing) == [
        str(tmp_path / "rel.svs"), "/abs/one.svs", str(tmp_path / "spaced.svs")
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cards": ()}, "at least one model card"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"torch_threads": 0}, "torch_threads"),
    ],
)
def test_config_refuses_bad_values(kwargs, match):
    base = {"out_dir": "x", "cards": ("a.json",)}
    with pytest.raises(ValueError, match=match):
        CohortConfig(**{**base, **kwargs})


def test_cluster_run_reports_failures_writes_outputs_and_skips_complete(
    slides, tiny_cards, tmp_path
):
    missing = str(tmp_path / "missing.svs")
    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(Path(slides[0]).read_bytes()[:5000])
    out = tmp_path / "out"  # created by the run
    config = CohortConfig(out_dir=str(out), cards=tiny_cards)
    events = []
    result = run_cohort(
        [slides[0], missing, str(corrupt), slides[1]], config, workers=2, on_event=events.append
    )
    status = {o.name: o.status for o in result.outcomes}
    assert status == {"s0.svs": "done", "missing.svs": "failed", "corrupt.svs": "failed",
                      "s1.svs": "done"}  # fmt: skip
    errors = {o.name: o.error for o in result.failed}
    assert "missing.svs: no such slide file" in errors["missing.svs"]
    assert "corrupt.svs" in errors["corrupt.svs"] and "\n" not in errors["corrupt.svs"]
    assert all(o.worker.startswith("tcp://") for o in result.outcomes if o.status == "done")
    assert any(e.get("status") == "running" and e.get("total") for e in events)
    for name in ("s0.svs", "s1.svs"):
        folder = out / name
        for produced in ("report.html", "lesions.geojson", "results.ome.zarr", "measurements.json"):
            assert (folder / produced).exists(), produced
        record = json.loads((folder / "measurements.json").read_text())
        assert record["row"]["tissue_area_mm2"] > 0
    with open(result.csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["slide"] for r in rows] == ["s0.svs", "missing.svs", "corrupt.svs", "s1.svs"]
    assert [r["status"] for r in rows] == ["done", "failed", "failed", "done"]
    assert float(rows[0]["tissue_area_mm2"]) > 0 and rows[1]["tissue_area_mm2"] == ""

    # A second run skips the complete slides (no cluster needed for them) and
    # retries the failed ones; with the missing slide now present it completes.
    Path(missing).write_bytes(Path(slides[1]).read_bytes())
    again = run_cohort([slides[0], missing, slides[1]], config, workers=1)
    assert [o.status for o in again.outcomes] == ["skipped", "done", "skipped"]
    assert again.outcomes[0].row["tissue_area_mm2"] == pytest.approx(
        float(rows[0]["tissue_area_mm2"])
    )
    record = json.loads((out / "s1.svs" / "measurements.json").read_text())
    json.loads(json.dumps(record), parse_constant=pytest.fail)  # strict JSON: no NaN

    # Another file under the same name (a rescan) is not skipped with the old
    # numbers: its folder holds another slide's store, which is kept, and it fails.
    rescanned = tmp_path / "rescan" / "s0.svs"
    rescanned.parent.mkdir()
    rescanned.write_bytes(Path(slides[1]).read_bytes())
    third = run_cohort([str(rescanned)], config, workers=1)
    assert [o.status for o in third.outcomes] == ["failed"], third.outcomes
    assert "holds results of another slide" in third.outcomes[0].error


def test_killed_worker_task_is_retried_and_equals_a_clean_run(slides, tmp_path):
    cards = tuple(str(c) for c in latest_cards(default_models_dir()).values())
    config = CohortConfig(out_dir=str(tmp_path / "cohort"), cards=cards, outputs=False)
    target = Path(slides[0]).name
    starts: list[int] = []
    killed = threading.Event()

    def on_event(event) -> None:
        if event.get("slide") != target:
            return
        if event.get("status") == "started":
            starts.append(event["pid"])
        total = event.get("total") or 0
        if event.get("status") == "running" and total and not killed.is_set():
            if 0.2 <= event["done"] / total < 0.9:
                os.kill(int(event["pid"]), signal.SIGKILL)
                killed.set()

    result = run_cohort(slides, config, workers=2, on_event=on_event)
    assert killed.is_set(), "the slide finished before the kill landed"
    assert [o.status for o in result.outcomes] == ["done", "done"]
    assert len(starts) == 2 and starts[0] != starts[1]  # rerun in the restarted worker
    clean = CohortConfig(out_dir=str(tmp_path / "clean"), cards=cards, outputs=False)
    assert process_slide(slides[0], clean).status == "done"
    got, want = arrays(tmp_path / "cohort", slides[0]), arrays(tmp_path / "clean", slides[0])
    for name in RESULT_ARRAYS:
        assert np.max(np.abs(got[name] - want[name])) <= 1e-6, name


def run_cli(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "napari_histo.cli", "cohort", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_cli_bad_input_one_line_exit_2(slides, tiny_cards, tmp_path):
    members = ["--members", *tiny_cards]
    proc = run_cli(*members)
    assert proc.returncode == 2 and "no slides" in proc.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli(slides[0], "--out", str(blocker / "sub"), *members)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "not writable" in proc.stderr or "not a directory" in proc.stderr.lower()
    proc = run_cli(slides[0], "--list", str(tmp_path / "nolist.txt"), *members)
    assert proc.returncode == 2 and "nolist.txt" in proc.stderr
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    proc = run_cli("--list", str(tmp_path / "empty.txt"), *members)
    assert proc.returncode == 2 and f"{tmp_path / 'empty.txt'}: names no slides" in proc.stderr
    start = time.monotonic()
    proc = run_cli(slides[0], "--scheduler", "tcp://127.0.0.1:9", "--out", str(tmp_path / "o"),
                   *members)  # fmt: skip
    assert proc.returncode == 2 and time.monotonic() - start < 10
    assert "cannot reach the dask scheduler" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unwritable_out_dir_is_one_error(tiny_cards, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CohortError, match="must be a directory"):
        run_cohort(["a.svs"], CohortConfig(out_dir=str(blocker), cards=tiny_cards))


def test_members_calibrated_apart_are_refused_before_any_work(tiny_cards, tmp_path):
    import shutil

    (tmp_path / "cal").mkdir()
    card = json.loads(Path(tiny_cards[0]).read_text())
    card["temperature"] = 0.5
    shutil.copy(Path(tiny_cards[0]).parent / card["weights_file"], tmp_path / "cal")
    calibrated = tmp_path / "cal" / "calibrated.json"
    calibrated.write_text(json.dumps(card))
    config = CohortConfig(out_dir=str(tmp_path / "out"), cards=(str(calibrated), tiny_cards[1]))
    with pytest.raises(CohortError, match="calibrated together"):
        run_cohort(["a.svs"], config)
    assert not (tmp_path / "out").exists()
