"""Ensemble prediction with test-time augmentation and uncertainty, per pixel.

As in DigiPathAI (Khened et al. 2021), an ensemble of ``M`` members is run on
``T`` dihedral transforms (rotations and flips) of a batch. Each output is mapped
back by the inverse of the *same* transform before anything is averaged, so every
pixel of every map lines up with the input pixel it describes. With
``p[m, t] = softmax(invert(t, member_m(apply(t, x))))``:

* ``probability = mean over m and t of p[m, t]``;
* ``aleatoric = mean over m of var over t of p[m, t]`` (data uncertainty: how much
  a member's answer depends on the orientation of the same tissue);
* ``epistemic = var over m of (mean over t of p[m, t])`` (model uncertainty: how
  much the members disagree);
* ``entropy = -sum_c probability_c * log(probability_c)`` (natural log, 0 log 0 = 0).

Variances are population variances (ddof=0). Statistics are accumulated with
Welford's algorithm, so memory stays at a few ``(B, C, H, W)`` maps however many
members and transforms there are; only one member's ``T`` outputs exist at once.

Dihedral transform ids act on the last two axes of ``(..., H, W)`` tensors: id
``t = 4 * f + r`` rotates by ``r`` quarter turns counter-clockwise
(:func:`torch.rot90` on ``(H, W)``), then flips left-right if ``f == 1``:

===  ====================  ===  ==============================
id   transform             id   transform
===  ====================  ===  ==============================
0    identity              4    flip
1    rot90                 5    flip ∘ rot90
2    rot180                6    flip ∘ rot180 (= vertical flip)
3    rot270                7    flip ∘ rot270
===  ====================  ===  ==============================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral

import torch

__all__ = [
    "DIHEDRAL_IDS",
    "EnsembleOutput",
    "apply_dihedral",
    "ensemble_predict",
    "invert_dihedral",
    "transform_groups",
    "tta_transforms",
]

#: All dihedral transform ids.
DIHEDRAL_IDS = tuple(range(8))

_TTA_SETS = {1: (0,), 2: (0, 4), 4: (0, 1, 2, 3), 8: DIHEDRAL_IDS}

Member = Callable[[torch.Tensor], torch.Tensor]


def _check_transform(t: object) -> int:
    if isinstance(t, bool) or not isinstance(t, Integral) or not 0 <= int(t) <= 7:
        raise ValueError(f"dihedral transform id must be an int in 0..7, got {t!r}")
    return int(t)


def apply_dihedral(x: torch.Tensor, t: int) -> torch.Tensor:
    """Apply dihedral transform `t` to the last two (H, W) axes of `x`.

    Parameters
    ----------
    x : torch.Tensor, shape (..., H, W)
        Typically (B, C, H, W).
    t : int
        Transform id in 0..7 (see the module docstring).

    Returns
    -------
    torch.Tensor, shape (..., H, W) or (..., W, H)
        Odd rotations swap H and W.

    Examples
    --------
    >>> x = torch.arange(6).reshape(1, 1, 2, 3)
    >>> torch.equal(invert_dihedral(apply_dihedral(x, 5), 5), x)
    True
    """
    t = _check_transform(t)
    y = torch.rot90(x, t % 4, dims=(-2, -1)) if t % 4 else x
    return torch.flip(y, dims=(-1,)) if t >= 4 else y


def invert_dihedral(y: torch.Tensor, t: int) -> torch.Tensor:
    """Undo :func:`apply_dihedral` with the same `t`: flip back, then rotate back."""
    t = _check_transform(t)
    x = torch.flip(y, dims=(-1,)) if t >= 4 else y
    return torch.rot90(x, -(t % 4), dims=(-2, -1)) if t % 4 else x


def tta_transforms(n: int) -> tuple[int, ...]:
    """Transform ids for `n`-fold test-time augmentation.

    Parameters
    ----------
    n : {1, 2, 4, 8}
        1: identity; 2: identity and left-right flip; 4: the four rotations;
        8: all dihedral transforms.

    Returns
    -------
    tuple of int

    Raises
    ------
    ValueError
        If `n` is not 1, 2, 4 or 8.
    """
    if isinstance(n, bool) or not isinstance(n, Integral) or int(n) not in _TTA_SETS:
        raise ValueError(f"`n` (TTA transforms) must be 1, 2, 4 or 8, got {n!r}")
    return _TTA_SETS[int(n)]


@dataclass(frozen=True)
class EnsembleOutput:
    """Ensemble mean and uncertainty maps, aligned with the input pixels.

    Attributes
    ----------
    probability : torch.Tensor of float32, shape (B, C, H, W)
        Mean class probability over members and transforms; sums to 1 over C.
    aleatoric : torch.Tensor of float32, shape (B, C, H, W)
        Mean over members of the variance over transforms (ddof=0).
    epistemic : torch.Tensor of float32, shape (B, C, H, W)
        Variance over members (ddof=0) of each member's mean over transforms.
    entropy : torch.Tensor of float32, shape (B, H, W)
        Predictive entropy of `probability` in nats, in [0, log C].
    members : int
        Number of members averaged.
    transforms : tuple of int
        Dihedral transform ids used.
    """

    probability: torch.Tensor
    aleatoric: torch.Tensor
    epistemic: torch.Tensor
    entropy: torch.Tensor
    members: int
    transforms: tuple[int, ...]


class _Welford:
    """Running mean and sum of squared deviations of equally weighted tensors."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, value: torch.Tensor, *, owned: bool = False) -> None:
        """Add `value`; with `owned`, the caller hands it over (kept without a copy)."""
        self.count += 1
        if self.mean is None:
            self.mean = value if owned else value.clone()
            return
        delta = value - self.mean
        self.mean.add_(delta, alpha=1.0 / self.count)
        update = delta.mul_(value - self.mean)  # delta's buffer, reused
        if self.m2 is None:
            self.m2 = update
        else:
            self.m2 += update

    def variance(self) -> torch.Tensor:
        """Population variance (ddof=0), clamped at 0 against rounding."""
        assert self.mean is not None
        if self.m2 is None:
            return torch.zeros_like(self.mean)
        return (self.m2 / self.count).clamp_(min=0.0)


def _check_inputs(
    members: Sequence[Member], x: torch.Tensor, tta: Sequence[int]
) -> tuple[int, ...]:
    if callable(members) and not isinstance(members, Sequence | torch.nn.ModuleList):
        raise TypeError("`members` must be a sequence of models, got a single callable")
    if len(members) == 0:
        raise ValueError("`members` must hold at least one model")
    for i, member in enumerate(members):
        if not callable(member):
            raise TypeError(f"`members[{i}]` must be callable, got {type(member).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`x` must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"`x` must be a floating (B, C, H, W) tensor, got {x.dtype} {tuple(x.shape)}"
        )
    if isinstance(tta, int):
        raise TypeError(
            f"`tta` must be a sequence of transform ids, got {tta!r}; use tta_transforms(n)"
        )
    ids = tuple(_check_transform(t) for t in tta)
    if not ids:
        raise ValueError("`tta` must hold at least one transform id")
    if len(set(ids)) != len(ids):
        raise ValueError(f"`tta` must not repeat a transform, got {ids}")
    return ids


def transform_groups(ids: Sequence[int], square: bool, batched: bool) -> list[list[int]]:
    """The transforms of `ids` that one member forward takes together: all of them
    (`batched`, square input), even and odd rotations apart (odd ones swap H and W),
    or one at a time (not `batched`)."""
    if not batched:
        return [[t] for t in ids]
    if square:
        return [list(ids)]
    return [g for g in ([t for t in ids if t % 2 == 0], [t for t in ids if t % 2]) if g]


def _member_probabilities(
    member: Member, x: torch.Tensor, ids: tuple[int, ...], batched: bool
) -> list[torch.Tensor]:
    """``softmax(invert(t, member(apply(t, x))))`` for each t, as float32, in `ids` order."""
    groups = transform_groups(ids, x.shape[-2] == x.shape[-1], batched)
    batch = x.shape[0]
    out: dict[int, torch.Tensor] = {}
    for group in groups:
        if group == [0]:
            stacked = x  # the identity: no copy
        else:
            stacked = torch.cat([apply_dihedral(x, t) for t in group], dim=0)
        logits = member(stacked)
        expected = (len(group) * batch, stacked.shape[-2], stacked.shape[-1])
        if logits.ndim != 4 or (logits.shape[0], *logits.shape[-2:]) != expected:
            raise ValueError(
                f"ensemble member returned logits of shape {tuple(logits.shape)} for input "
                f"{tuple(stacked.shape)}; expected (B, C, H, W) with the input's B, H, W"
            )
        probs = torch.softmax(logits.float(), dim=1)
        for t, chunk in zip(group, probs.split(batch, dim=0), strict=True):
            out[t] = invert_dihedral(chunk, t)
    return [out[t] for t in ids]


@torch.inference_mode()
def ensemble_predict(
    members: Sequence[Member],
    x: torch.Tensor,
    tta: Sequence[int] = (0,),
    *,
    batch_members: bool = True,
) -> EnsembleOutput:
    """Mean prediction and aleatoric / epistemic uncertainty of an ensemble with TTA.

    Parameters
    ----------
    members : sequence of callables
        Each maps ``(N, 3, H, W)`` float input to ``(N, C, H, W)`` logits (models
        in eval mode; all with the same C). Fully convolutional members must
        accept ``(N, 3, W, H)`` too when `tta` has odd rotations of non-square x.
    x : torch.Tensor of float, shape (B, 3, H, W)
        Normalised input batch.
    tta : sequence of int, default (0,)
        Distinct dihedral transform ids, e.g. ``tta_transforms(8)``.
    batch_members : bool, default True
        Run all transforms of one member as one ``(T * B, ...)`` batch (faster;
        needs T times the activation memory). False runs one transform at a time.

    Returns
    -------
    EnsembleOutput
        float32 maps on `x`'s device, aligned with `x`.

    Raises
    ------
    TypeError, ValueError
        For a bad `members`, `x` or `tta`, or a member output of the wrong shape.

    Examples
    --------
    >>> conv = torch.nn.Conv2d(3, 2, 1)  # per-pixel: commutes with rotations and flips
    >>> out = ensemble_predict([conv], torch.randn(1, 3, 32, 32), tta_transforms(8))
    >>> out.probability.shape, float(out.aleatoric.abs().max()) < 1e-6
    (torch.Size([1, 2, 32, 32]), True)
    """
    ids = _check_inputs(members, x, tta)
    across_members = _Welford()  # member means → probability and epistemic
    aleatoric_sum: torch.Tensor | None = None
    for member in members:
        within = _Welford()
        for p in _member_probabilities(member, x, ids, batch_members):
            within.add(p, owned=True)  # fresh tensors, used nowhere else
        assert within.mean is not None
        if across_members.mean is not None and within.mean.shape != across_members.mean.shape:
            raise ValueError(
                f"ensemble members disagree on output shape: {tuple(within.mean.shape)} vs "
                f"{tuple(across_members.mean.shape)}"
            )
        if within.m2 is not None:  # one transform: no variance to add
            variance = within.variance()
            aleatoric_sum = variance if aleatoric_sum is None else aleatoric_sum.add_(variance)
        across_members.add(within.mean, owned=True)  # `within` is dropped
    assert across_members.mean is not None
    probability = across_members.mean
    if aleatoric_sum is None:
        aleatoric_sum = torch.zeros_like(probability)
    num_classes = probability.shape[1]
    # xlogy gives 0 * log 0 = 0; the clamp only removes rounding outside [0, log C].
    entropy = -torch.special.xlogy(probability, probability).sum(dim=1)
    entropy = entropy.clamp_(min=0.0, max=math.log(num_classes))
    return EnsembleOutput(
        probability=probability,
        aleatoric=aleatoric_sum / len(members),
        epistemic=across_members.variance(),
        entropy=entropy,
        members=len(members),
        transforms=ids,
    )
