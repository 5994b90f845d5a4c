"""The dock widgets' job runner (napari_histo.widgets.jobs) with real napari workers."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("napari")

from napari_histo.widgets.jobs import JobFailed, JobRunner


class Sink:
    """Records what the runner delivers (bound methods: the runner holds them weakly)."""

    def __init__(self) -> None:
        self.items: list = []
        self.results: list = []
        self.errors: list = []
        self.finished = 0

    def on_yield(self, item) -> None:
        self.items.append(item)

    def on_return(self, result) -> None:
        self.results.append(result)

    def on_error(self, err) -> None:
        self.errors.append(err)

    def on_finish(self) -> None:
        self.finished += 1

    def callbacks(self) -> dict:
        return {
            "on_yield": self.on_yield,
            "on_return": self.on_return,
            "on_error": self.on_error,
            "on_finish": self.on_finish,
        }


def counting(n: int, cancel: threading.Event, pause_s: float = 0.0, fail: Exception | None = None):
    for i in range(n):
        if cancel.is_set():
            return "cancelled"
        time.sleep(pause_s)
        yield i
    if fail is not None:
        raise fail
    return "done"


def test_yields_return_and_finish_reach_the_qt_thread(qtbot):
    runner, sink = JobRunner(), Sink()
    runner.start(lambda cancel: counting(3, cancel), **sink.callbacks())
    qtbot.waitUntil(lambda: sink.finished == 1, timeout=10_000)
    assert sink.items == [0, 1, 2] and sink.results == ["done"] and sink.errors == []
    assert not runner.running and not runner.busy and runner.unfinished == 0


@pytest.mark.parametrize("error", [ValueError("bad tile"), RuntimeError("CUDA out of memory")])
def test_errors_reach_on_error_and_the_job_still_finishes(qtbot, error):
    # napari's generator worker swallows a RuntimeError (no errored, no finished signal):
    # the runner turns it into JobFailed with the same message.
    runner, sink = JobRunner(), Sink()
    runner.start(lambda cancel: counting(1, cancel, fail=error), **sink.callbacks())
    qtbot.waitUntil(lambda: sink.finished == 1, timeout=10_000)
    assert len(sink.errors) == 1 and str(sink.errors[0]) == str(error)
    assert isinstance(sink.errors[0], JobFailed if isinstance(error, RuntimeError) else ValueError)
    assert sink.results == []


def test_a_plan_error_raises_at_start_and_starts_nothing():
    runner = JobRunner()

    def plan(cancel):
        raise ValueError("region outside the slide")

    with pytest.raises(ValueError, match="outside"):
        runner.start(plan)
    assert runner.worker is None and not runner.busy


def test_a_new_job_cancels_the_old_one_and_only_the_newest_reports(qtbot):
    runner, old, new = JobRunner(), Sink(), Sink()
    first = runner.start(lambda cancel: counting(1000, cancel, 0.01), **old.callbacks())
    qtbot.waitUntil(lambda: bool(old.items), timeout=10_000)
    runner.start(lambda cancel: counting(2, cancel), **new.callbacks())
    assert first.is_set()
    qtbot.waitUntil(lambda: new.finished == 1 and runner.unfinished == 0, timeout=10_000)
    assert new.results == ["done"]
    assert old.results == [] and old.finished == 0  # superseded: nothing after the switch


def test_shutdown_cancels_joins_and_silences(qtbot):
    runner, sink = JobRunner(progress_desc="Testing"), Sink()
    runner.start(lambda cancel: counting(10_000, cancel, 0.01), total=10_000, **sink.callbacks())
    qtbot.waitUntil(lambda: bool(sink.items), timeout=10_000)
    runner.report(5, desc="step 5")
    assert runner.shutdown(timeout_s=10)
    assert runner.unfinished == 0
    seen = len(sink.items)
    qtbot.wait(100)
    assert len(sink.items) == seen and sink.results == [] and sink.finished == 0
    assert runner.start(lambda cancel: counting(1, cancel)) is None  # closed for good
    runner.report(6)  # no bar any more: nothing happens


def test_report_after_the_bar_closed_mid_callback(qtbot):
    """A progress update racing the bar's closing must not fail (a CI failure, 2026-12-03)."""
    runner = JobRunner(progress_desc="Testing")
    reported = []

    def on_yield(item):
        runner.shutdown(timeout_s=0)  # closes the bar, as the job's end or a close does
        runner.report(item, desc=f"step {item}")
        reported.append(item)

    runner.start(lambda cancel: counting(3, cancel, 0.01), on_yield=on_yield)
    qtbot.waitUntil(lambda: bool(reported), timeout=10_000)
    assert runner.shutdown(timeout_s=10)


def test_calls_run_alongside_and_are_joined(qtbot):
    runner, sink = JobRunner(), Sink()
    release = threading.Event()
    runner.call(lambda: release.wait(10) and 42, on_return=sink.on_return)
    runner.call(lambda: 1 / 0, on_error=sink.on_error)
    assert runner.busy
    release.set()
    qtbot.waitUntil(lambda: not runner.busy, timeout=10_000)
    assert sink.results == [42] and isinstance(sink.errors[0], ZeroDivisionError)


def test_torch_threads_are_set_once_per_process():
    code = (
        "import threading, torch\n"
        "from napari_histo.widgets.jobs import configure_torch_threads\n"
        "assert configure_torch_threads(1) == 1 and torch.get_num_threads() == 1\n"
        "assert configure_torch_threads(2) == 1 and torch.get_num_threads() == 1\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))\n"
        "t.start(); t.join()\n"
        "assert seen == [1], seen\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
