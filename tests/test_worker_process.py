"""Live jobs in a real worker process: same results, crash isolation, resume, clean close."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from napari_histo.generators import drive
from napari_histo.io.store import DONE_FLUSH_S
from napari_histo.live.controller import LiveController, LiveSettings
from napari_histo.live.worker import JobProcess, WorkerDied, WorkerError
from napari_histo.synthetic import write_synthetic_slide

SETTINGS = LiveSettings(members=("deeplabv3plus",))


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    return write_synthetic_slide(root / "w.svs", 4096, seed=2004, workers=1).path


@pytest.fixture
def worker():
    process = JobProcess(threads=1)
    yield process
    process.close()


def drain(job):
    updates = []
    return updates, drive(job, updates.append)


def probability(controller):
    _, arrays, complete = controller.load_existing()
    return arrays["probability"], complete


def out(tmp_path, name):
    (tmp_path / name).mkdir()
    return tmp_path / name


def test_worker_job_equals_the_in_process_job(slide, tmp_path, worker):
    here = LiveController(slide, SETTINGS, out_dir=out(tmp_path, "here"))
    there = LiveController(slide, SETTINGS, out_dir=out(tmp_path, "there"))
    view = (0, 0, 1024, 1024)
    _, local = drain(here.job(within=view))
    updates, remote = drain(there.job(within=view, worker=worker))
    assert worker.pid is not None and worker.pid != os.getpid()
    assert updates and sum(len(u.cells) for u in updates) > 0
    assert remote.tiles_run == local.tiles_run > 0 and not remote.cancelled
    assert remote.run is not None and remote.run.run_id == local.run.run_id
    np.testing.assert_allclose(probability(there)[0], probability(here)[0], atol=1e-6)
    # models stay loaded: the same process serves the next job, which finds it all done
    pid = worker.pid
    _, again = drain(there.job(within=view, worker=worker))
    assert worker.pid == pid and again.tiles_run == 0


def test_a_killed_worker_is_one_error_and_the_next_run_resumes(slide, tmp_path, worker):
    settings = LiveSettings(members=("deeplabv3plus", "resunet"), tta=8)  # slow: time to kill
    clean = LiveController(slide, settings, out_dir=out(tmp_path, "clean"))
    drain(clean.job())
    controller = LiveController(slide, settings, out_dir=out(tmp_path, "killed"))
    job = controller.job(worker=worker)
    # Half the tiles, then past the store's done-mask flush: whole chunks are on disk.
    update = next(job)
    while update.done < update.total // 2:
        update = next(job)
    half = update.elapsed_s
    while update.elapsed_s < half + DONE_FLUSH_S + 0.5:
        update = next(job)
    assert update.done < update.total
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(WorkerDied, match=r"killed by signal 9.*resumes from the cells it saved"):
        drain(job)
    assert worker.pid is None
    _, result = drain(controller.job(worker=worker))  # a fresh worker
    assert worker.pid is not None
    assert 0 < result.tiles_run < result.tiles_total and result.run.complete
    resumed, complete = probability(controller)
    assert complete
    np.testing.assert_allclose(resumed, probability(clean)[0], atol=1e-6)


def test_an_error_in_the_worker_is_one_line_and_the_worker_lives_on(slide, tmp_path, worker):
    controller = LiveController(slide, SETTINGS, out_dir=tmp_path)
    with pytest.raises(WorkerError, match="RegionError") as caught:
        drain(controller.job(within=(99_000, 99_000, 512, 512), worker=worker))
    assert "\n" not in str(caught.value)
    pid = worker.pid
    _, result = drain(controller.job(within=(0, 0, 512, 512), worker=worker))
    assert worker.pid == pid and result.tiles_run > 0


def raising_job(cancel, error):
    """A job for the worker that fails at once (importable by name)."""
    raise error
    yield


def test_job_errors_even_oserror_leave_the_worker_running(worker):
    with pytest.raises(WorkerError, match=r"^OSError: \[Errno 28\] disk full$"):
        drain(worker.call(raising_job, {"error": OSError(28, "disk full")}, threading.Event()))
    pid = worker.pid
    with pytest.raises(WorkerError, match="ValueError: bad"):
        drain(worker.call(raising_job, {"error": ValueError("bad")}, threading.Event()))
    assert worker.pid == pid is not None


def test_the_worker_rebuilds_its_controller_when_the_mpp_changes(slide, tmp_path):
    from napari_histo.live import worker as worker_module

    controller = LiveController(slide, SETTINGS, out_dir=tmp_path)
    request = controller.job_request()
    first = worker_module._controller(request)
    assert worker_module._controller(request) is first  # kept, models and all
    moved = replace(request, slide_mpp=request.slide_mpp * 2)
    assert worker_module._controller(moved) is not first


def test_cancel_stops_the_worker_job_after_a_batch(slide, tmp_path, worker):
    controller = LiveController(slide, SETTINGS, out_dir=tmp_path)
    cancel = threading.Event()
    job = controller.job(cancel=cancel, worker=worker)
    next(job)
    cancel.set()
    _, result = drain(job)
    assert result.cancelled and result.tiles_run < result.tiles_total


def test_closing_ends_the_process_and_leaves_no_thread(slide, tmp_path):
    threads_before = set(threading.enumerate())
    process = JobProcess(threads=1)
    controller = LiveController(slide, SETTINGS, out_dir=tmp_path)
    job = controller.job(worker=process)
    next(job)  # a whole-slide job in flight
    pid = process.pid
    process.close(timeout_s=10)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    try:  # the job in flight stopped after its batch, or its process ended first
        assert drain(job)[1].cancelled
    except WorkerDied:
        pass
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(WorkerDied, match="closed"):
        drain(controller.job(worker=process))


def _state(pid: int) -> str:
    """The process's state letter from /proc ("T": stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_state(pid: int, wanted: bool, timeout_s: float = 5.0) -> str:
    deadline = time.monotonic() + timeout_s
    while (_state(pid) == "T") != wanted and time.monotonic() < deadline:
        time.sleep(0.005)
    return _state(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_background_job_is_stopped_while_the_viewer_reads_a_window(slide, tmp_path, worker):
    from napari_histo.io.pyramid import open_pyramid
    from napari_histo.io.slide import Slide
    from napari_histo.io.windows import hold_during_reads, viewer_levels

    controller = LiveController(slide, SETTINGS, out_dir=tmp_path)
    job = controller.job(worker=worker, nice=10)  # whole slide, in the background
    updates = [next(job)]
    pid = worker.pid
    seen = []
    # Holds are called in order: the job's own (SIGSTOP) first, then this one.
    release = hold_during_reads(lambda: seen.append(_wait_state(pid, True)), lambda: None)
    try:
        with Slide(slide) as opened:
            np.asarray(viewer_levels(opened, open_pyramid(opened))[0][:512, :512])
    finally:
        release()
    assert seen == ["T"]
    assert _wait_state(pid, False) != "T"  # running again after the read
    _, result = drain(job)
    assert not result.cancelled and result.tiles_run > 0 and updates
    # A viewport job (the user waits for it) is never held.
    view_job = controller.job(within=(0, 0, 512, 512), worker=worker)
    next(view_job, None)
    seen.clear()
    release = hold_during_reads(lambda: seen.append(_state(worker.pid)), lambda: None)
    try:
        with Slide(slide) as opened:
            np.asarray(viewer_levels(opened, open_pyramid(opened))[0][:256, :256])
    finally:
        release()
    drain(view_job)
    assert seen and seen[0] != "T"


VIEWER_DIES = """
import signal, sys, threading, time
from napari_histo.live.worker import JobProcess
from tests.test_worker_process import sleepy_job
process = JobProcess(threads=1)
job = process.call(sleepy_job, {}, threading.Event())
next(job)
process._signal(signal.SIGSTOP)  # as during a window read
print(process.pid, flush=True)
time.sleep(60)
"""


def sleepy_job(cancel):
    """A job for the worker that runs until cancelled (importable by name)."""
    yield "started"
    while not cancel.is_set():
        time.sleep(0.05)


def _orphans_get_sighup() -> bool:
    """Whether a process group left by its parent here becomes orphaned (the new
    parent, pid 1, is in another session), which is what ends a stopped worker."""
    try:
        return os.getsid(1) != os.getsid(0)
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(not _orphans_get_sighup(), reason="pid 1 shares this session")
def test_a_worker_held_stopped_ends_when_the_viewer_is_killed():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    viewer = subprocess.Popen(
        [sys.executable, "-c", VIEWER_DIES], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        lines = []
        reader = threading.Thread(target=lambda: lines.append(viewer.stdout.readline()))
        reader.start()
        reader.join(timeout=120)  # the worker imports torch first
        pid = int(lines[0])
        assert _wait_state(pid, True) == "T"
        viewer.kill()  # the viewer dies while its worker is stopped
        viewer.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if _state(pid) == "Z":
                    break  # ended; its zombie waits for init
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the stopped worker outlived its viewer")
    finally:
        viewer.kill()
