"""What a training run reports: progress after each step, and its result.

Torch-free: progress events cross the pipe from the worker process to the
viewer, which unpickles them and must not import the trainer (and torch) to do so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["TrainProgress", "TrainResult"]


@dataclass(frozen=True)
class TrainProgress:
    """Progress after a training step."""

    step: int
    steps: int
    loss: float
    elapsed_s: float
    eta_s: float | None
    val_dice: float | None = None


@dataclass(frozen=True)
class TrainResult:
    """A finished (or cancelled) training run."""

    model: nn.Module
    steps_done: int
    seconds: float
    cancelled: bool
    history: list[TrainProgress] = field(repr=False)
    val_dice: float | None
