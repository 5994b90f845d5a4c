"""Live jobs in a worker process: the viewer keeps its GIL and survives a crash.

Plain Python (no Qt, no napari). A :class:`JobProcess` is one worker process per
dock, spawned at its first job (or when a slide opens, to load the models early)
and kept, with its models loaded, between jobs. :meth:`JobProcess.call` runs a
module-level generator function there and relays what it yields and returns, so
the caller cannot tell the difference; live inference (:func:`live_job`) runs the
same :meth:`LiveController.job <napari_histo.live.controller.LiveController.job>`
as in-process, which writes the result store. Cancelling sets an event the
worker's engine checks between batches. When the worker dies (SIGKILL, the OOM
killer, a crash in native code), the generator raises :class:`WorkerDied` with
one line; finished cells are in the store, and the next job, on a fresh worker,
resumes from them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Generator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from napari_histo._malloc import release_free_memory
from napari_histo.errors import HistoError
from napari_histo.generators import messages
from napari_histo.live.requests import JobRequest

__all__ = ["JobProcess", "JobRequest", "WorkerDied", "WorkerError", "live_job", "prepare_live"]

#: Seconds a cancelled job may take to stop (one batch) before its worker is killed.
STOP_TIMEOUT_S = 30.0
#: Seconds a new worker may take to start (import torch) before it counts as failed.
START_TIMEOUT_S = 120.0
_POLL_S = 0.05


class WorkerDied(HistoError):
    """The worker process ended during a job (killed, out of memory, crashed)."""


class WorkerError(HistoError):
    """A job raised in the worker process; the message is ``Type: message`` from there."""


# -- in the worker ---------------------------------------------------------------


def _serve(conn, cancel, threads: int) -> None:
    """The worker's loop: one job at a time until "stop" or the viewer's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C in the terminal is the viewer's
    if hasattr(os, "setpgrp"):
        # A process group of its own: should the viewer die while it holds this worker
        # stopped (JobProcess.call with `hold`), the kernel sends the orphaned group
        # SIGHUP then SIGCONT, which ends it instead of leaving it stopped (where the
        # viewer's parent is in another session, as for any program started from a
        # shell or a desktop).
        os.setpgrp()
    import torch

    torch.set_num_threads(threads)
    try:
        conn.send(("ready", os.getpid()))
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            _, function, kwargs = message
            for reply in _replies(function, kwargs, cancel):
                conn.send(reply)
            release_free_memory()  # between jobs the worker holds only what it keeps
    except (EOFError, OSError):
        return  # the viewer is gone: nobody to work for


def _replies(function, kwargs, cancel) -> Generator[tuple[str, Any], None, None]:
    """The job's messages (:func:`~napari_histo.generators.messages`), its error as
    ``("raise", "Type: message")``: errors of the job itself (also OSError) never
    end the worker."""
    for kind, value in messages(lambda: function(cancel=cancel, **kwargs)):
        if kind == "raise":
            if not isinstance(value, Exception):
                raise value  # SystemExit and the like end the worker
            traceback.print_exception(value, file=sys.stderr)  # the viewer's terminal
            value = " ".join(f"{type(value).__name__}: {value}".split())
        yield kind, value


#: The worker's live controller: one slide's, with its loaded models.
_CONTROLLERS: dict = {}


def _controller(request: JobRequest):
    """The worker's controller for `request`'s slide, rebuilt when the slide's µm/px changed."""
    from napari_histo.live.controller import LiveController

    key = (request.slide_path, request.out_dir, request.models_dir)
    controller = _CONTROLLERS.get(key)
    if controller is not None and (
        controller.slide_mpp != request.slide_mpp or controller.slide_dims != request.slide_dims
    ):
        controller = None
    if controller is None:
        _CONTROLLERS.clear()  # one slide's models at a time
        controller = LiveController(
            request.slide_path, request.settings, out_dir=request.out_dir,
            models_dir=request.models_dir,
        )  # fmt: skip
        _CONTROLLERS[key] = controller
    return controller


def prepare_live(request: JobRequest, cancel) -> Generator[Any, None, None]:
    """In the worker: load `request`'s members for its slide and warm them up
    (:meth:`~napari_histo.live.controller.LiveController.warm_up`), so the first Run
    is as fast as the next."""
    _controller(request).warm_up(request.settings)
    return
    yield  # a generator, like every job


def live_job(request: JobRequest, cancel) -> Generator[Any, None, Any]:
    """In the worker: run one live inference job with the same code as in-process.

    Returns the InferenceResult without its open store run (see :func:`_portable`).
    """
    controller = _controller(request)
    result = yield from controller.job(
        within=request.within, centre=request.centre, cancel=cancel,
        settings=request.settings, nice=request.nice,
    )  # fmt: skip
    return _portable(result)


def _portable(result):
    """An InferenceResult without its open store run: ``(result, store path, identity, run id)``."""
    if result is None or result.run is None:
        return result, None, None, None
    store = result.run.store
    return replace(result, run=None), str(store.path), store.identity, result.run.run_id


def _reopen(value):
    result, store_path, identity, run_id = value
    if store_path is None:
        return result
    from napari_histo.io.store import ResultStore

    return replace(result, run=ResultStore(store_path, identity, mode="r").open_run(run_id))


@contextmanager
def _main_not_rerun():
    """Spawn re-runs the viewer's main script in the child unless it is guarded by
    ``if __name__ == "__main__"``; napari's own examples are not. Hide it while the
    worker starts: the worker needs nothing from it."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    try:
        main.__dict__.pop("__file__", None)
        main.__spec__ = None
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


# -- in the viewer ---------------------------------------------------------------


class JobProcess:
    """One worker process for a dock's jobs (spawned at the first call).

    Parameters
    ----------
    threads : int
        torch threads in the worker (the dock gives
        :func:`~napari_histo.widgets.jobs.gui_threads`, as for jobs in the viewer).
    """

    def __init__(self, threads: int) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"`threads` must be an int >= 1, got {threads!r}")
        self.threads = threads
        self._context = mp.get_context("spawn")  # no fork of a process with Qt and threads
        self._process = None
        self._conn = None
        self._cancel = None
        self._lock = threading.Lock()  # one job at a time, held while it streams
        self._state = threading.Lock()  # start / close, never held across a yield
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The worker's process id, None before the first job or after it ended."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def _ensure_started(self) -> None:
        with self._state:
            if self._closed:
                raise WorkerDied("the worker process was closed with the viewer")
            if self._process is not None and self._process.is_alive():
                return
            self._drop()
            parent, child = self._context.Pipe()
            cancel = self._context.Event()
            process = self._context.Process(
                target=_serve, args=(child, cancel, self.threads), daemon=True,
                name="napari-histo-worker",
            )  # fmt: skip
            with _main_not_rerun():
                process.start()
            child.close()
            self._conn, self._cancel, self._process = parent, cancel, process
        # Wait for its "ready" (it imports torch): a worker that cannot start is one error.
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._poll():
            if not process.is_alive() or time.monotonic() > deadline:
                self._kill()
                raise WorkerDied("the worker process did not start (see the terminal)")
        self._conn.recv()

    def _poll(self) -> bool:
        try:
            return self._conn.poll(_POLL_S)
        except (EOFError, OSError):
            return False

    def _drop(self) -> None:
        """Forget the worker (killed first if it still runs) and close its pipe."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is not None:
            process.join(timeout=1)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        if conn is not None:
            conn.close()

    def _kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        self._drop()

    def run(self, request: JobRequest, cancel: threading.Event) -> Generator[Any, None, Any]:
        """Run live inference `request` in the worker; yield its updates, return its
        InferenceResult (store run re-opened here, read-only). See :meth:`call`.

        A background job (``request.nice`` > 0: a whole-slide run) is held stopped
        while the viewer reads slide windows (:func:`~napari_histo.io.windows.hold_during_reads`):
        on two cores a running model made each cold window read about twice as slow,
        lowering its priority did not help (measured under Xvfb), and those reads are
        what the Qt thread waits for.
        """
        value = yield from self.call(live_job, {"request": request}, cancel, hold=request.nice > 0)
        return None if value is None else _reopen(value)

    def _hold_during_reads(self):
        """Register SIGSTOP / SIGCONT of the worker around the viewer's window reads."""
        if not (hasattr(signal, "SIGSTOP") and hasattr(os, "setpgrp")):
            return None  # Windows: no stopping, no orphan safety
        from napari_histo.io.windows import hold_during_reads

        return hold_during_reads(
            lambda: self._signal(signal.SIGSTOP), lambda: self._signal(signal.SIGCONT)
        )

    def _signal(self, signum: int) -> None:
        process = self._process
        # exitcode is None while it runs or is stopped; once it has been reaped its
        # pid may belong to another process. (Its waitpid may race the job thread's
        # is_alive(): the loser sees the process alive for one more poll.)
        if process is not None and process.pid is not None and process.exitcode is None:
            try:
                os.kill(process.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass

    def call(
        self, function, kwargs: dict[str, Any], cancel: threading.Event, *, hold: bool = False
    ) -> Generator[Any, None, Any]:
        """Run generator function ``function(cancel=..., **kwargs)`` in the worker.

        Yields what it yields and returns what it returns (both pickled over the
        pipe); `function` must be importable by name (a module-level function).
        Returns None at once when `cancel` is set while an earlier job still runs.
        With `hold`, the worker is held stopped during the viewer's window reads
        from the moment this job is sent until it ends (not while an earlier job
        finishes its batch).

        Raises
        ------
        WorkerDied
            The worker ended mid-job, or did not start (the next job starts a new one).
        WorkerError
            The job raised in the worker (its type and message).
        """
        while not self._lock.acquire(timeout=_POLL_S):
            if cancel.is_set():
                return None  # superseded before it began
        try:
            self._ensure_started()
            # Under the state lock: a close() between start and send must not see its
            # cancel cleared, nor its "stop" interleaved with a large job message.
            with self._state:
                if self._closed:
                    raise WorkerDied("the worker process was closed with the viewer")
                self._cancel.clear()
                try:
                    self._conn.send(("job", function, kwargs))
                except (OSError, ValueError) as err:
                    self._drop()
                    raise WorkerDied(f"the worker process is gone ({err})") from None
            ended = False
            release = self._hold_during_reads() if hold else None
            try:
                while True:
                    kind, value = self._receive(cancel)
                    if kind == "yield":
                        yield value
                        continue
                    ended = True
                    if kind == "raise":
                        raise WorkerError(value)
                    return value
            finally:
                if release is not None:
                    release()
                if not ended:
                    self._finish_early()
        finally:
            if self._closed:
                self._kill()  # closed meanwhile: the worker must not outlive the viewer
            self._lock.release()

    def _receive(self, cancel: threading.Event) -> tuple[str, Any]:
        """The worker's next message; kills a worker that ignores a cancel for too long."""
        cancelled_at = None
        while True:
            if cancel.is_set() and cancelled_at is None:
                self._cancel.set()
                cancelled_at = time.monotonic()
            if self._poll():
                try:
                    return self._conn.recv()
                except (EOFError, OSError):
                    pass
            elif self._process.is_alive():
                if cancelled_at is not None and time.monotonic() - cancelled_at > STOP_TIMEOUT_S:
                    self._kill()
                    raise WorkerDied(
                        f"the worker process did not stop within {STOP_TIMEOUT_S:.0f} s of "
                        "cancel and was ended; the next run starts a new one"
                    )
                continue
            self._process.join(timeout=2)  # reap it: its exit code tells how it ended
            code = self._process.exitcode
            self._drop()
            how = f"was killed by signal {-code}" if code and code < 0 else f"exited ({code})"
            raise WorkerDied(
                f"the worker process {how}; the next run starts a new one (a run that "
                "writes a result store resumes from the cells it saved)"
            )

    def _finish_early(self) -> None:
        """The consumer stopped before the end: cancel, and wait for the job to return."""
        if self._process is None:
            return
        self._cancel.set()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if self._poll():
                    kind, _ = self._conn.recv()
                    if kind in ("return", "raise"):
                        return
                elif not self._process.is_alive():
                    break
        except Exception:  # anything odd on the pipe: start afresh next time
            pass
        self._kill()  # stuck, dead or confused: the next job starts a new worker

    def close(self, timeout_s: float = 10.0) -> None:
        """End the worker: a job in flight stops after its batch, then the process exits.

        Killed after `timeout_s`. Idempotent. Does not wait for the job's consumer
        (whose generator then returns a cancelled result or raises :class:`WorkerDied`).
        """
        with self._state:
            self._closed = True
            process, conn, cancel = self._process, self._conn, self._cancel
        if process is None:
            return
        cancel.set()
        try:
            conn.send(("stop",))
        except (OSError, ValueError):
            pass
        process.join(timeout_s)
        if process.is_alive():
            process.kill()
        process.join(5)

    def __repr__(self) -> str:
        return f"JobProcess(pid={self.pid}, threads={self.threads})"
