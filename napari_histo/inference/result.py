"""What an inference run reports: progress events and its result.

Torch-free: these cross the pipe from the worker process to the viewer, which
unpickles them and must not import the engine (and torch) to do so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_histo.io.store import ResultGeometry, ResultRun

__all__ = ["InferenceResult", "Progress"]


@dataclass(frozen=True)
class Progress:
    """One progress report: tiles done of total, with timing."""

    done: int
    total: int
    elapsed_s: float
    eta_s: float | None
    batch_size: int
    cells: list[tuple[int, int, dict[str, np.ndarray]]] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class InferenceResult:
    """What a run produced."""

    run: ResultRun | None
    tiles_total: int
    tiles_run: int
    seconds: float
    cancelled: bool
    device: str
    geometry: ResultGeometry
    #: What the members' forwards computed in: "float32", "bfloat16" or "float16".
    precision: str = "float32"
