"""One background-job runner for the dock widgets: start, progress, cancel, join on close.

Every dock (Tumor inference, Nuclei, Retrain, Annotate) runs its work through a
:class:`JobRunner` over napari's public worker classes. The runner owns the
worker threads, so it also sets torch's intra-op thread count, once per
process (:func:`configure_torch_threads`), instead of each job flipping it.
Only jobs started with ``torch=True`` (models run in this process) import torch:
the docks' usual jobs run their models in the worker process, and the viewer
process stays without torch (about 1 s and 180 MB).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Generator
from typing import Any

from napari_histo._malloc import release_free_memory

__all__ = ["JobFailed", "JobRunner", "configure_torch_threads", "gui_threads"]

_TORCH_THREADS: int | None = None
_TORCH_LOCK = threading.Lock()


def gui_threads() -> int:
    """torch intra-op threads for jobs started from the viewer: all cores but one.

    The spare core is the Qt thread's (napari re-slices and, under Xvfb, renders
    in software). On an oversubscribed machine this is also much faster: with
    every core busy, torch's OpenMP threads wait on each other (measured 4-7x
    slower with 2 threads than with 1 on 2 shared cores).
    """
    return max(1, (os.cpu_count() or 2) - 1)


def configure_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads for the viewer's jobs, once per process.

    torch keeps one process-wide count that every thread picks up when it first
    runs an operator, so it is set here once, before the first job, and never
    changed per job. Later calls return the count already set.
    """
    global _TORCH_THREADS
    with _TORCH_LOCK:
        if _TORCH_THREADS is None:
            import torch

            _TORCH_THREADS = max(1, int(threads or gui_threads()))
            torch.set_num_threads(_TORCH_THREADS)
        return _TORCH_THREADS


class JobFailed(Exception):
    """A job raised RuntimeError (torch's errors among them); the message is its own.

    napari's generator worker treats a RuntimeError as "the worker was deleted"
    and then signals neither an error nor the end, so the runner re-raises it
    as this type.
    """


def _weak(callback: Callable[..., Any] | None) -> Callable[..., Any]:
    """`callback`, held weakly when it is a bound method (a worker must not keep a dock alive)."""
    if callback is None:
        return lambda *args: None
    if hasattr(callback, "__self__"):
        method = weakref.WeakMethod(callback)
        return lambda *args: (m := method()) is not None and m(*args)
    return callback


class _Job:
    """Bookkeeping of one started job: its cancel and finished events, its worker."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.finished = threading.Event()  # set on the worker thread however it ends
        self.worker: Any = None
        self.t0 = time.monotonic()


class JobRunner:
    """Runs a dock's background jobs and hands their events to it on the Qt thread.

    A *job* is a generator function called as ``make_job(cancel)`` on a worker
    thread; it yields progress, returns a result and should stop soon after
    the :class:`threading.Event` `cancel` is set. Starting a job cancels the one
    in flight (it stops after its current step); only the newest job's events
    reach the callbacks, and none after :meth:`shutdown`. :meth:`call` runs a
    plain function alongside (no cancel; joined on shutdown too).

    Parameters
    ----------
    progress_desc : str, optional
        With it, each job gets a napari progress bar (the activity dock) that
        :meth:`report` moves; it is closed when the job ends.
    """

    def __init__(self, progress_desc: str | None = None) -> None:
        self._progress_desc = progress_desc
        self._jobs: list[_Job] = []  # every job whose thread may still run
        self._current: _Job | None = None
        self._bar: Any = None
        self._pending_calls = 0
        self.closed = False

    # -- state ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the newest job's thread is alive."""
        return self._current is not None and not self._current.finished.is_set()

    @property
    def busy(self) -> bool:
        """True until the newest job is done and its events were handled, or a call runs."""
        return self._current is not None or self._pending_calls > 0

    @property
    def worker(self) -> Any:
        """The newest job's napari worker (None when no job is in flight)."""
        return None if self._current is None else self._current.worker

    @property
    def cancel_event(self) -> threading.Event | None:
        """The newest job's cancel event (None when no job is in flight)."""
        return None if self._current is None else self._current.cancel

    @property
    def unfinished(self) -> int:
        """Jobs and calls whose thread has not ended yet (superseded ones included)."""
        return sum(not j.finished.is_set() for j in self._jobs)

    @property
    def elapsed_s(self) -> float:
        """Seconds since the newest job started (0 when none is in flight)."""
        return 0.0 if self._current is None else time.monotonic() - self._current.t0

    # -- jobs -----------------------------------------------------------------
    def start(
        self,
        make_job: Callable[[threading.Event], Generator[Any, Any, Any]],
        *,
        on_yield: Callable[[Any], Any] | None = None,
        on_return: Callable[[Any], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        on_finish: Callable[[], Any] | None = None,
        total: int | None = None,
        torch: bool = False,
    ) -> threading.Event | None:
        """Start ``make_job(cancel)`` on a worker thread; returns its cancel event.

        With ``torch=True`` (the job runs models in this process) torch's thread
        count is set on the worker thread before the job starts, importing torch
        there rather than on the Qt thread.

        `make_job` is called here, on the Qt thread, so input checks that run
        at the call (plans) raise here, to the caller; the job in flight has
        been cancelled by then. The callbacks run on the Qt thread: `on_yield`
        per item, then `on_return` (result) or `on_error` (exception), then
        `on_finish`. Returns None (and starts nothing) once shut down.
        """
        from napari.qt.threading import GeneratorWorker

        if self.closed:
            return None
        self.cancel()
        job = _Job()
        generator = make_job(job.cancel)
        self._jobs = [j for j in self._jobs if not j.finished.is_set()] + [job]
        self._current = job
        self._open_bar(total)
        worker = GeneratorWorker(_signal_finished, generator, job.finished, torch)
        job.worker = worker
        ref = weakref.ref(self)

        on_yield, on_return, on_error, on_finish = map(
            _weak, (on_yield, on_return, on_error, on_finish)
        )

        def deliver(callback, *args):
            me = ref()
            if me is not None and not me.closed and me._current is job:
                callback(*args)

        def finished() -> None:
            me = ref()
            if me is None or me._current is not job:
                return  # a superseded job
            me._current = None
            me._close_bar()
            if not me.closed:
                on_finish()

        worker.yielded.connect(lambda item: deliver(on_yield, item))
        worker.returned.connect(lambda result: deliver(on_return, result))
        worker.errored.connect(lambda err: deliver(on_error, err))
        worker.finished.connect(finished)
        worker.start()
        return job.cancel

    def call(
        self,
        func: Callable[[], Any],
        *,
        on_return: Callable[[Any], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
    ) -> None:
        """Run the plain function `func` on a worker thread, alongside other jobs.

        Meant for reading files and building layers (torch's threads are left
        alone). `func` should be a plain function: napari shows ``f"{func}"`` in its
        task status, and the repr of a ``partial`` holding large arrays is slow.
        """
        from napari.qt.threading import FunctionWorker

        if self.closed:
            return
        job = _Job()
        self._jobs = [j for j in self._jobs if not j.finished.is_set()] + [job]
        self._pending_calls += 1
        worker = FunctionWorker(_set_when_done, func, job.finished)
        job.worker = worker
        ref = weakref.ref(self)

        on_return, on_error = _weak(on_return), _weak(on_error)

        def deliver(callback, *args):
            me = ref()
            if me is not None and not me.closed:
                callback(*args)

        def finished() -> None:
            me = ref()
            if me is not None:
                me._pending_calls -= 1

        worker.returned.connect(lambda result: deliver(on_return, result))
        worker.errored.connect(lambda err: deliver(on_error, err))
        worker.finished.connect(finished)
        worker.start()

    def cancel(self) -> bool:
        """Ask the job in flight to stop after its current step; True if one was running."""
        if self._current is None:
            return False
        self._current.cancel.set()
        return not self._current.finished.is_set()

    def report(self, done: int, total: int | None = None, desc: str | None = None) -> None:
        """Move the job's napari progress bar (when the runner has one)."""
        bar = self._bar  # a local: a callback below may end the job and close it
        if bar is None:
            return
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = done
        if desc is not None:
            bar.set_description(desc)
        bar.refresh()

    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """Cancel every job and wait for their threads (at most `timeout_s` in all).

        After it no callback runs. Returns False if a thread was still running
        when the time ran out. Idempotent.
        """
        self.closed = True
        for job in self._jobs:
            job.cancel.set()
        deadline = time.monotonic() + timeout_s
        joined = all(j.finished.wait(max(0.0, deadline - time.monotonic())) for j in self._jobs)
        self._jobs = [j for j in self._jobs if not j.finished.is_set()]
        self._close_bar()
        return joined

    # -- progress bar ---------------------------------------------------------
    def _open_bar(self, total: int | None) -> None:
        if self._progress_desc is None:
            return
        from napari.utils import progress

        self._close_bar()
        self._bar = progress(total=total or 0, desc=self._progress_desc)

    def _close_bar(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()


def _signal_finished(
    generator: Generator[Any, Any, Any], finished: threading.Event, torch: bool = False
) -> Generator[Any, Any, Any]:
    """Run `generator` to its end (relaying it), then set `finished` however it ended.

    torch's thread count is set first, here on the worker thread: importing torch
    takes a second or two, which must not freeze the Qt thread. A job that does
    not say it runs torch (`torch` False) imports nothing; the count is still set
    if something else loaded torch already.
    """
    try:
        if torch or "torch" in sys.modules:
            configure_torch_threads()
        return (yield from generator)
    except RuntimeError as err:
        raise JobFailed(str(err)) from err
    finally:
        generator.close()
        release_free_memory()  # what the run freed goes back (here: not on the Qt thread)
        finished.set()


def _set_when_done(func: Callable[[], Any], finished: threading.Event) -> Any:
    try:
        return func()
    finally:
        finished.set()
