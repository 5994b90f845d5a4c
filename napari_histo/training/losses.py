"""Loss of DigiPathAI: 0.5·CE + 0.25·Dice loss (background) + 0.25·Dice loss (foreground)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_histo.annotations.model import IGNORE_INDEX

__all__ = ["IGNORE", "segmentation_loss"]

#: Target value excluded from the loss (unlabelled or "ignore" pixels).
IGNORE = IGNORE_INDEX


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, *, eps: float = 1.0
) -> torch.Tensor:
    """0.5 cross-entropy + 0.25 (1 − Dice₀) + 0.25 (1 − Dice₁), ignoring `IGNORE` pixels.

    Parameters
    ----------
    logits : Tensor, shape (B, 2, H, W)
        Raw scores of background and foreground.
    target : Tensor of int, shape (B, H, W)
        0, 1, or :data:`IGNORE`.
    eps : float
        Smoothing of the soft Dice (in pixels).

    Returns
    -------
    Tensor
        Scalar loss.
    """
    if logits.ndim != 4 or logits.shape[1] != 2:
        raise ValueError(f"`logits` must be (B, 2, H, W), got {tuple(logits.shape)}")
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"`target` shape {tuple(target.shape)} must be (B, H, W) of `logits`")
    target = target.long()
    valid = target != IGNORE
    ce = F.cross_entropy(logits, target.masked_fill(~valid, 0), reduction="none")
    count = valid.sum().clamp(min=1)
    ce = (ce * valid).sum() / count
    prob = logits.softmax(dim=1) * valid.unsqueeze(1)
    loss = 0.5 * ce
    for cls in (0, 1):
        truth = ((target == cls) & valid).float()
        inter = (prob[:, cls] * truth).sum()
        dice = (2 * inter + eps) / (prob[:, cls].sum() + truth.sum() + eps)
        loss = loss + 0.25 * (1 - dice)
    return loss
