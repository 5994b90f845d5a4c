"""Ensemble prediction on a plain RGB tile (an array, not a slide).

For labelled tiles, evaluation and training scores: the tile is resampled to
the members' µm/px, padded by reflection to the members' size multiple, run
through :func:`~napari_histo.inference.ensemble.ensemble_predict` in one pass
(or in overlapping windows when large) and the maps are resampled back to the
tile's pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_histo.inference.ensemble import ensemble_predict, tta_transforms
from napari_histo.models import LoadedModel
from napari_histo.stain import resolve as resolve_stain

__all__ = ["TilePrediction", "predict_tile"]

#: Inputs are padded to a multiple of this (every registry architecture divides it).
_MULTIPLE = 32
#: Largest side, model px, run in one forward pass; larger tiles run in windows.
_WINDOW_PX = 1024
_OVERLAP_PX = 128


@dataclass(frozen=True)
class TilePrediction:
    """Tumor maps of a tile, aligned with its pixels (float32, shape (H, W)).

    Attributes
    ----------
    probability : ndarray
        Mean tumor probability over members and transforms.
    aleatoric : ndarray
        Mean over members of the variance over transforms.
    epistemic : ndarray
        Variance over members of each member's mean.
    entropy : ndarray
        Predictive entropy of the two-class mean, nats.
    """

    probability: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    entropy: np.ndarray


class _Normalised(torch.nn.Module):
    """A member that takes RGB in [0, 1] and applies its card's normalisation."""

    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        norm = loaded.card.normalisation
        self.model = loaded.model
        self.register_buffer("mean", torch.tensor(norm["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(norm["std"]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _check(rgb: object, mpp: object, members: Sequence[LoadedModel]) -> tuple[np.ndarray, float]:
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] < 3:
        shape = getattr(rgb, "shape", type(rgb).__name__)
        raise ValueError(f"`rgb` must be an (H, W, 3) array, got {shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"`rgb` must be uint8, got {rgb.dtype}")
    if min(rgb.shape[:2]) < 8:
        raise ValueError(f"`rgb` must be at least 8 px a side, got {rgb.shape[:2]}")
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not 0.05 <= mpp <= 50:
        raise ValueError(f"`mpp` must be a number of µm/px in [0.05, 50], got {mpp!r}")
    if not members:
        raise ValueError("`members` must hold at least one model")
    mpps = {m.card.input_mpp for m in members}
    if len(mpps) != 1:
        raise ValueError(f"ensemble members disagree on input µm/px: {sorted(mpps)}")
    return rgb[..., :3], float(mpp)


def _windows(length: int) -> list[tuple[int, int]]:
    if length <= _WINDOW_PX:
        return [(0, length)]
    step = _WINDOW_PX - _OVERLAP_PX
    starts = [*range(0, length - _WINDOW_PX, step), length - _WINDOW_PX]
    return [(s, s + _WINDOW_PX) for s in starts]


@torch.inference_mode()
def _run(x: torch.Tensor, members: Sequence[torch.nn.Module], tta: Sequence[int]) -> torch.Tensor:
    """(4, H, W) maps (probability, aleatoric, epistemic, entropy) of one (1, 3, H, W) input."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % _MULTIPLE, (-w) % _MULTIPLE
    mode = "reflect" if ph < h and pw < w else "replicate"
    padded = F.pad(x, (0, pw, 0, ph), mode=mode) if ph or pw else x
    out = ensemble_predict(members, padded, tta)
    maps = torch.stack(
        [out.probability[0, 1], out.aleatoric[0, 1], out.epistemic[0, 1], out.entropy[0]]
    )
    return maps[:, :h, :w]


def predict_tile(
    rgb: np.ndarray,
    mpp: float,
    members: Sequence[LoadedModel],
    *,
    tta: int = 1,
    stain: object = "card",
) -> TilePrediction:
    """Tumor probability and uncertainty of an ensemble on one RGB tile.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (H, W, 3)
        The tile.
    mpp : float
        Its µm per pixel (0.05–50).
    members : sequence of LoadedModel
        Segmentation models with the same ``input_mpp``; class 1 is tumor.
    tta : int, default 1
        Number of dihedral test-time transforms (1, 2, 4 or 8).
    stain : {"card", "none", "macenko", "reinhard"}, None or StainNormaliser
        Stain normalisation before the card's normalisation (fitted on this
        tile): ``"card"`` follows the members' ``stain_normalisation``; see
        :func:`napari_histo.stain.resolve`. A tile with too little tissue is
        left as it is (with a :class:`~napari_histo.stain.StainWarning`).

    Returns
    -------
    TilePrediction
        Maps at the tile's pixels.

    Raises
    ------
    ValueError
        For a bad `rgb`, `mpp`, `members` or `tta` (one line naming it).
    """
    rgb, mpp = _check(rgb, mpp, members)
    transforms = tta_transforms(tta)
    normaliser = resolve_stain(stain, [m.card for m in members])
    if normaliser is not None:
        rgb = normaliser.transform(rgb)
    model_mpp = members[0].card.input_mpp
    device = next(iter(members[0].model.parameters()), torch.empty(0)).device
    wrapped = [_Normalised(m).to(device) for m in members]
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255)
    factor = mpp / model_mpp
    size = (max(8, round(rgb.shape[0] * factor)), max(8, round(rgb.shape[1] * factor)))
    if size != rgb.shape[:2]:
        x = F.interpolate(x, size=size, mode="bilinear", antialias=factor < 1, align_corners=False)
    x = x.to(device)
    maps = torch.zeros((4, *size))
    weight = torch.zeros(size)
    for y0, y1 in _windows(size[0]):
        for x0, x1 in _windows(size[1]):
            maps[:, y0:y1, x0:x1] += _run(x[..., y0:y1, x0:x1], wrapped, transforms).cpu()
            weight[y0:y1, x0:x1] += 1
    maps /= weight
    if size != rgb.shape[:2]:
        maps = F.interpolate(maps[None], size=rgb.shape[:2], mode="bilinear")[0]
    probability, aleatoric, epistemic, entropy = (m.numpy().astype(np.float32) for m in maps)
    return TilePrediction(probability.clip(0, 1), aleatoric, epistemic, entropy)
