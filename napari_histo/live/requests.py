"""What a live job asks of a worker process: the request, and what runs one.

Plain Python, no imports of the controller or the worker, so that both can use it
(:mod:`napari_histo.live.controller` builds requests, :mod:`napari_histo.live.worker`
runs them).
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["JobRequest", "RunsJobs"]


@dataclass(frozen=True)
class JobRequest:
    """One live job for the worker: what :meth:`LiveController.job` would run in-process.

    `slide_mpp` and `slide_dims` are the viewer's view of the slide: a worker whose
    controller saw another µm/px (the user set one since) builds a new one.
    """

    slide_path: str
    out_dir: str | None
    models_dir: str | None
    settings: Any  # LiveSettings (picklable)
    within: tuple[int, int, int, int] | None
    centre: tuple[float, float] | None
    slide_mpp: float
    slide_dims: tuple[int, int]
    nice: int = 0


class RunsJobs(Protocol):
    """Something that runs a :class:`JobRequest` elsewhere and relays it
    (:class:`napari_histo.live.worker.JobProcess`)."""

    def run(self, request: JobRequest, cancel: threading.Event) -> Generator[Any, None, Any]:
        """Yield the job's updates; return its InferenceResult."""
        ...
