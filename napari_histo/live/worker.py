"""Live jobs in a worker process: the viewer keeps its GIL and survives a crash.

Plain Python (no Qt, no napari). A :class:`JobProcess` is one worker process per
viewer, spawned at its first job and kept (with its models loaded) between jobs.
A job is a :class:`JobRequest`: the worker runs the same job code as in-process
(:meth:`LiveController.job <napari_histo.live.controller.LiveController.job>`,
which writes the result store) and sends every :class:`LiveUpdate` back over a
pipe; :meth:`JobProcess.run` relays them as a generator, so the dock cannot tell
the difference. Cancelling sets an event the worker's engine checks between
batches. When the worker dies (SIGKILL, the OOM killer, a crash in native code),
the generator raises :class:`WorkerDied` with one line; finished cells are in
the store, and the next job, on a fresh worker, resumes from it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any

from napari_histo.errors import HistoError

__all__ = ["JobProcess", "JobRequest", "WorkerDied", "WorkerError", "live_job"]

#: Seconds a superseded job may take to stop after its batch before the worker is killed.
STOP_TIMEOUT_S = 30.0


class WorkerDied(HistoError):
    """The worker process ended during a job (killed, out of memory, crashed)."""


class WorkerError(HistoError):
    """A job raised in the worker process; the message is ``Type: message`` from there."""


@dataclass(frozen=True)
class JobRequest:
    """One live job for the worker: what :meth:`LiveController.job` would run in-process."""

    slide_path: str
    out_dir: str | None
    models_dir: str | None
    settings: Any  # LiveSettings (picklable)
    within: tuple[int, int, int, int] | None
    centre: tuple[float, float] | None
    nice: int = 0


def _serve(conn, cancel, threads: int) -> None:
    """The worker's loop: one job at a time until "stop" or the viewer's end of the pipe closes."""
    import torch

    torch.set_num_threads(max(1, threads))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the viewer is gone
        if message[0] == "stop":
            return
        _, function, kwargs = message
        try:
            gen = function(cancel=cancel, **kwargs)
            while True:
                try:
                    update = next(gen)
                except StopIteration as stop:
                    conn.send(("return", stop.value))
                    break
                conn.send(("yield", update))
        except (BrokenPipeError, EOFError, OSError):
            return
        except Exception as err:  # every error goes back as one line
            conn.send(("raise", f"{type(err).__name__}: {err}"))


#: The worker's live controllers (one slide's, with its loaded models).
_CONTROLLERS: dict = {}


def live_job(request: JobRequest, cancel) -> Generator[Any, None, Any]:
    """In the worker: run one live inference job with the same code as in-process.

    Returns the InferenceResult without its open store run (see :func:`_portable`).
    """
    from napari_histo.live.controller import LiveController

    key = (request.slide_path, request.out_dir, request.models_dir)
    controller = _CONTROLLERS.get(key)
    if controller is None:
        _CONTROLLERS.clear()  # one slide's models at a time
        controller = LiveController(
            request.slide_path, request.settings, out_dir=request.out_dir,
            models_dir=request.models_dir,
        )  # fmt: skip
        _CONTROLLERS[key] = controller
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


class JobProcess:
    """One worker process for a viewer's live jobs (spawned at the first job).

    Parameters
    ----------
    threads : int, optional
        torch threads in the worker (default: all cores but one).
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or max(1, (os.cpu_count() or 2) - 1)
        self._context = mp.get_context("spawn")  # no fork of a process with Qt and threads
        self._process = None
        self._conn = None
        self._cancel = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The worker's process id, None before the first job or after it ended."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._drop()
        parent, child = self._context.Pipe()
        self._cancel = self._context.Event()
        self._process = self._context.Process(
            target=_serve, args=(child, self._cancel, self.threads), daemon=True,
            name="napari-histo-worker",
        )  # fmt: skip
        self._process.start()
        child.close()
        self._conn = parent

    def _drop(self) -> None:
        """Forget a dead worker (its pipe closed)."""
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.join(timeout=1)
        self._process = self._conn = None

    def run(self, request: JobRequest, cancel: threading.Event) -> Generator[Any, None, Any]:
        """Run live inference `request` in the worker; yield its updates, return its
        InferenceResult (store run re-opened here, read-only). See :meth:`call`."""
        return _reopen((yield from self.call(live_job, {"request": request}, cancel)))

    def call(
        self, function, kwargs: dict[str, Any], cancel: threading.Event
    ) -> Generator[Any, None, Any]:
        """Run generator function ``function(cancel=..., **kwargs)`` in the worker.

        Yields what it yields and returns what it returns (both pickled over the
        pipe); `function` must be importable by name (a module-level function).

        Raises
        ------
        WorkerDied
            The worker ended mid-job (the next job starts a new one).
        WorkerError
            The job raised in the worker (its type and message).
        """
        with self._lock:
            if self._closed:
                raise WorkerDied("the worker process was closed with the viewer")
            self._ensure_started()
            self._cancel.clear()
            self._conn.send(("job", function, kwargs))
            ended = False
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
                if not ended:
                    self._finish_early()

    def _receive(self, cancel: threading.Event) -> tuple[str, Any]:
        while True:
            if cancel.is_set():
                self._cancel.set()
            try:
                if self._conn.poll(0.05):
                    return self._conn.recv()
            except (EOFError, OSError):
                pass
            else:
                if self._process.is_alive():
                    continue
            self._process.join(timeout=2)  # reap it: its exit code tells how it ended
            code = self._process.exitcode
            self._drop()
            how = f"was killed by signal {-code}" if code and code < 0 else f"exited ({code})"
            raise WorkerDied(
                f"the worker process {how}; the next run starts a new one (inference "
                "resumes from the cells it saved)"
            )

    def _finish_early(self) -> None:
        """The consumer stopped before the end: cancel, and wait for the job to return."""
        if self._process is None:
            return
        self._cancel.set()
        try:
            for _ in range(int(STOP_TIMEOUT_S / 0.05)):
                if self._conn.poll(0.05):
                    kind, _ = self._conn.recv()
                    if kind in ("return", "raise"):
                        return
                elif not self._process.is_alive():
                    break
        except (EOFError, OSError):
            pass
        self._kill()  # stuck or dead: the next job starts a new worker

    def _kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        self._drop()

    def close(self, timeout_s: float = 5.0) -> None:
        """End the worker: a job in flight stops after its batch, then the process exits.

        Killed after `timeout_s`. Idempotent. Does not wait for the job's consumer
        (whose generator then ends with :class:`WorkerDied`).
        """
        self._closed = True
        process, conn = self._process, self._conn
        if process is None:
            return
        self._cancel.set()
        try:
            conn.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
        process.join(timeout_s)
        if process.is_alive():
            process.kill()
            process.join(1)

    def __repr__(self) -> str:
        return f"JobProcess(pid={self.pid}, threads={self.threads})"

