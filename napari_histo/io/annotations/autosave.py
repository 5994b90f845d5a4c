"""Autosave: write annotations in the background shortly after each change."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_histo.annotations.model import Annotation
from napari_histo.io.annotations import write_annotations
from napari_histo.io.annotations._common import PathLike

__all__ = ["Autosaver", "autosave_path"]


def autosave_path(slide_path: PathLike, project_dir: PathLike | None = None) -> Path:
    """``<slide file name>.annotations.geojson`` beside the slide or in `project_dir`."""
    slide_path = Path(slide_path)
    parent = Path(project_dir) if project_dir is not None else slide_path.parent
    return parent / f"{slide_path.name}.annotations.geojson"


class Autosaver:
    """Save annotations in the background shortly after each change.

    :meth:`changed` returns at once; a worker thread writes the file (GeoJSON
    or ASAP XML by suffix) with :func:`atomic_write_text`, keeping `backups`
    previous versions, at most `delay_s` after the first change of a burst, so
    a stream of edits is saved at least every `delay_s` and coalesced into one
    write. A failed save calls `on_error` and leaves the previous file as it was.

    Parameters
    ----------
    path : str or PathLike
        Destination, e.g. :func:`autosave_path` of the slide.
    get_annotations : callable () -> sequence of Annotation
        Called on the worker thread; must return a consistent snapshot (a list
        of frozen Annotations is one). :meth:`changed` may pass one instead.
    delay_s : float
        Longest wait between a change and the start of its save, seconds.
    backups : int
        Rotating previous versions ``path.1`` … ``path.<backups>``.
    on_error : callable (Exception) -> None, optional
        Called (on the worker thread) when a save fails; default re-raises nothing
        and keeps the error in :attr:`last_error`.
    on_saved : callable (Path) -> None, optional
        Called after each successful save.
    """

    def __init__(
        self,
        path: PathLike,
        get_annotations: Callable[[], Sequence[Annotation]],
        delay_s: float = 1.0,
        *,
        backups: int = 3,
        on_error: Callable[[Exception], None] | None = None,
        on_saved: Callable[[Path], None] | None = None,
    ) -> None:
        if not delay_s >= 0:
            raise ValueError(f"`delay_s` must be >= 0, got {delay_s}")
        self.path = Path(path)
        self.delay_s = float(delay_s)
        self.backups = backups
        self.last_error: Exception | None = None
        self.saves = 0
        self._get = get_annotations
        self._on_error = on_error
        self._on_saved = on_saved
        self._cond = threading.Condition()
        self._save_lock = threading.Lock()
        self._due: float | None = None
        self._snapshot: Sequence[Annotation] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="napari-histo-autosave", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Autosaver({str(self.path)!r}, delay_s={self.delay_s})"

    def __enter__(self) -> Autosaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def changed(self, annotations: Sequence[Annotation] | None = None) -> None:
        """Note a change (optionally with the new snapshot); never blocks on I/O."""
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if annotations is not None:
                self._snapshot = list(annotations)
            if self._due is None:
                self._due = time.monotonic() + self.delay_s
                self._cond.notify()

    @property
    def pending(self) -> bool:
        """True while a change is not yet saved."""
        with self._cond:
            return self._due is not None

    def flush(self) -> bool:
        """Save pending changes now, in the calling thread; True if something was saved."""
        with self._cond:
            if self._due is None:
                return False
        return self._save()

    def close(self) -> None:
        """Save pending changes and stop the worker thread."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join()
        self.flush()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._due is None or time.monotonic() < self._due):
                    timeout = None if self._due is None else self._due - time.monotonic()
                    self._cond.wait(timeout)
                if self._closed:
                    return
            self._save()

    def _save(self) -> bool:
        with self._save_lock:
            with self._cond:
                if self._due is None:
                    return False
                self._due = None
                snapshot, self._snapshot = self._snapshot, None
            try:
                annotations = snapshot if snapshot is not None else list(self._get())
                write_annotations(self.path, annotations, backups=self.backups)
            except Exception as exc:  # reported, never raised into the worker loop
                self.last_error = exc
                with self._cond:  # retry on the next change or flush
                    if self._due is None and snapshot is not None:
                        self._snapshot = snapshot
                if self._on_error is not None:
                    self._on_error(exc)
                return False
            self.saves += 1
            self.last_error = None
            if self._on_saved is not None:
                self._on_saved(self.path)
            return True
