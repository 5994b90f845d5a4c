"""``bench cohort``: slides per second on 1 vs 2 dask worker processes, equality, a real kill.

All in one run, on 4 synthetic slides (4096² px with ``--quick``, else 8192²)
and the default ensemble, one torch thread and one reading thread per task:

* single process: :func:`~napari_histo.analysis.cohort.process_slide` on each
  slide in this process (what ``napari-histo infer`` runs), the reference;
* 1 and 2 workers: :func:`~napari_histo.analysis.cohort.run_cohort` on a warm
  LocalCluster (worker processes started and models loaded before the clock
  starts), fresh output folders; ``speedup_2_workers`` is the ratio of their
  wall times and ``max_abs_diff`` the largest difference of any result array
  from the reference;
* kill: 2 workers again, and the worker running the first slide is sent
  SIGKILL once that slide is a quarter done; ``kill_recovered`` is true when the
  task was rerun, every slide finished and the results equal the reference.

``overhead_per_slide_s`` is the 1-worker wall time minus the time the tasks
report, per slide: what scheduling, transfers and events cost.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo.analysis.cohort import (
    CohortConfig,
    connect,
    process_slide,
    run_cohort,
    warm_worker,
)
from napari_histo.io.slide import Slide
from napari_histo.io.store import RESULT_ARRAYS
from napari_histo.nuclei.run import open_store_for


def _arrays(out_dir: Path, name: str, slide: str) -> dict[str, np.ndarray]:
    with Slide(slide) as handle:
        store = open_store_for(handle, out_dir / name, mode="r")
    run = next(r for r in store.runs() if r.complete)
    return {a: np.asarray(run.array(a)[...]) for a in RESULT_ARRAYS}


def _max_diff(reference: dict, out_dir: Path, slides: list[str]) -> float:
    worst = 0.0
    for slide in slides:
        other = _arrays(out_dir, Path(slide).name, slide)
        for key, ref in reference[slide].items():
            worst = max(worst, float(np.max(np.abs(other[key] - ref), initial=0.0)))
    return worst


def _timed_cohort(slides, config, workers, on_event=None):
    client, cluster = connect("local", workers)
    try:
        client.run(warm_worker, config.cards)
        start = time.perf_counter()
        result = run_cohort(slides, config, client=client, on_event=on_event)
        return time.perf_counter() - start, result
    finally:
        client.close()
        cluster.close()


def bench_cohort(quick: bool = False) -> dict[str, Any]:
    """Measure cohort runs; see the module docstring."""
    import torch

    from napari_histo.bench import bench_slide
    from napari_histo.models import default_models_dir, latest_cards

    size = 4096 if quick else 8192
    slides = [str(bench_slide(size, seed=seed)) for seed in (11, 12, 13, 14)]
    cards = tuple(str(c) for c in latest_cards(default_models_dir()).values())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def config(name: str) -> CohortConfig:
            return CohortConfig(out_dir=str(tmp / name), cards=cards, outputs=False)

        threads = torch.get_num_threads()
        try:
            start = time.perf_counter()
            for slide in slides:
                outcome = process_slide(slide, config("single"))
                if outcome.status != "done":
                    raise RuntimeError(outcome.error)
            single_s = time.perf_counter() - start
        finally:
            torch.set_num_threads(threads)
        reference = {s: _arrays(tmp / "single", Path(s).name, s) for s in slides}

        one_s, one = _timed_cohort(slides, config("one"), 1)
        two_s, two = _timed_cohort(slides, config("two"), 2)
        killed = _kill_run(slides, config("kill"))
        failed = [o.error for o in (*one.outcomes, *two.outcomes) if o.status != "done"]
        if failed:
            raise RuntimeError("; ".join(failed))
        kill_ok = killed["killed"] and all(o.status == "done" for o in killed["outcomes"])
        kill_diff = _max_diff(reference, tmp / "kill", slides) if kill_ok else float("nan")
        task_s = sum(o.seconds for o in one.outcomes)
        return {
            "slides": len(slides),
            "slide_px": size,
            "single_process_s": round(single_s, 2),
            "one_worker_s": round(one_s, 2),
            "two_workers_s": round(two_s, 2),
            "speedup_2_workers": round(one_s / two_s, 3),
            "max_abs_diff": max(_max_diff(reference, tmp / "one", slides),
                                _max_diff(reference, tmp / "two", slides)),
            "kill_recovered": bool(kill_ok and kill_diff <= 1e-6),
            "kill_max_abs_diff": kill_diff,
            "overhead_per_slide_s": round((one_s - task_s) / len(slides), 3),
        }  # fmt: skip


def _kill_run(slides: list[str], config: CohortConfig) -> dict[str, Any]:
    """A 2-worker run whose first slide's worker is SIGKILLed a quarter of the way in."""
    target = Path(slides[0]).name
    state = {"killed": False}
    lock = threading.Lock()

    def on_event(event) -> None:
        if event.get("slide") != target or event.get("status") != "running":
            return
        total = event.get("total") or 0
        with lock:
            if not state["killed"] and total and 0.25 <= event["done"] / total < 1.0:
                os.kill(int(event["pid"]), signal.SIGKILL)
                state["killed"] = True

    _, result = _timed_cohort(slides, config, 2, on_event=on_event)
    return {"killed": state["killed"], "outcomes": result.outcomes}
