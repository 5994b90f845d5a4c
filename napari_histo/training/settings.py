"""Settings of a fine-tuning run (torch-free: the Retrain dock builds them in the viewer)."""

from __future__ import annotations

import dataclasses

__all__ = ["FinetuneConfig"]


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Training settings of a fine-tuning run (besides steps, seed and granularity)."""

    batch_size: int = 8
    lr: float = 1e-3
    train_patch_px: int = 128
    train_patches: int = 256
    val_patches: int = 24
    held_out_fraction: float = 0.25
    jitter: float = 0.5
    #: bfloat16 forwards on a CPU that has it in hardware (trainer.train_model's `amp`).
    amp: bool = True
