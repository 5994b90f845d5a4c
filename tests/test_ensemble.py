"""Ensemble + TTA uncertainty: transforms, alignment, hand-computed statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from napari_histo.inference import (
    DIHEDRAL_IDS,
    apply_dihedral,
    ensemble_predict,
    invert_dihedral,
    tta_transforms,
)


def _pixelwise(seed: int, classes: int = 3) -> nn.Module:
    """A 1×1 conv: per-pixel, so it commutes with every dihedral transform."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, classes, 1).eval()


def _spatial(seed: int, classes: int = 3) -> nn.Module:
    """A 3×3 conv + bias map: not equivariant, so TTA outputs differ."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, classes, 3, padding=1)
    ).eval()


class FixedProbability:
    """Ignores pixel values: always outputs logits giving class-1 probability `p1`.

    ``logits = [log(1 - p1), log(p1)]`` so ``softmax`` returns exactly
    ``[1 - p1, p1]``; the output is the same whatever the orientation of the
    input, so after inversion a flipped run sees the flipped map.
    """

    def __init__(self, p1: list[list[float]]) -> None:
        p = torch.tensor(p1, dtype=torch.float64)
        self.logits = torch.stack([torch.log1p(-p), torch.log(p)])[None].float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1).clone()


def _naive(members, x, tta):
    """Reference: materialise all M × T probability maps, then take moments."""
    p = torch.stack(
        [
            torch.stack(
                [
                    invert_dihedral(torch.softmax(m(apply_dihedral(x, t)).double(), 1), t)
                    for t in tta
                ]
            )
            for m in members
        ]
    )  # (M, T, B, C, H, W)
    member_mean = p.mean(dim=1)
    prob = member_mean.mean(dim=0)
    aleatoric = p.var(dim=1, unbiased=False).mean(dim=0)
    epistemic = member_mean.var(dim=0, unbiased=False)
    entropy = -torch.special.xlogy(prob, prob).sum(dim=1)
    return prob, aleatoric, epistemic, entropy


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("t", DIHEDRAL_IDS)
def test_invert_undoes_apply_on_non_square(t):
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    y = apply_dihedral(x, t)
    assert y.shape[-2:] == ((7, 5) if t % 2 else (5, 7))
    assert torch.equal(invert_dihedral(y, t), x)


def test_transforms_are_the_eight_distinct_dihedral_maps():
    x = torch.arange(12, dtype=torch.float32).reshape(1, 1, 3, 4)
    images = {(*apply_dihedral(x, t).flatten().tolist(), t % 2) for t in DIHEDRAL_IDS}
    assert len(images) == 8
    assert torch.equal(apply_dihedral(x, 4), x.flip(-1))  # 4: left-right flip
    assert torch.equal(apply_dihedral(x, 6), x.flip(-2))  # 6: flip ∘ rot180 = up-down flip
    assert torch.equal(apply_dihedral(x, 1), torch.rot90(x, 1, dims=(-2, -1)))


def test_tta_transform_sets():
    assert tta_transforms(1) == (0,)
    assert tta_transforms(2) == (0, 4)
    assert tta_transforms(4) == (0, 1, 2, 3)
    assert tta_transforms(8) == DIHEDRAL_IDS


@pytest.mark.parametrize("n", [0, 3, 5, 16, -1, True, 2.0])
def test_tta_transforms_rejects_other_counts(n):
    with pytest.raises(ValueError, match="`n`"):
        tta_transforms(n)


@pytest.mark.parametrize("t", [-1, 8, 1.0, "1"])
def test_bad_transform_id(t):
    with pytest.raises(ValueError, match=r"0\.\.7"):
        apply_dihedral(torch.zeros(1, 1, 2, 2), t)


# --------------------------------------------------------------------------- statistics


def test_equivariant_model_has_zero_aleatoric():
    x = torch.randn(2, 3, 16, 24)
    out = ensemble_predict([_pixelwise(0), _pixelwise(1)], x, tta_transforms(8))
    assert float(out.aleatoric.abs().max()) <= 1e-7
    assert float(out.epistemic.max()) > 1e-4  # the two members differ


def test_identical_members_have_zero_epistemic():
    x = torch.randn(1, 3, 16, 16)
    model = _spatial(3)
    out = ensemble_predict([model, model, model], x, tta_transforms(8))
    assert float(out.epistemic.abs().max()) == 0.0
    assert float(out.aleatoric.max()) > 1e-6  # the 3×3 convs are not equivariant


@pytest.mark.parametrize("batch_members", [True, False])
def test_hand_computed_two_members_two_transforms(batch_members):
    # Member A always says P(class 1) = [[.1, .2], [.3, .4]], member B [[.5, .5], [.9, .1]].
    # With transforms (identity, left-right flip) and correct inversion, each member's
    # flipped run contributes its own map flipped left-right:
    #   A: maps [[.1, .2], [.3, .4]] and [[.2, .1], [.4, .3]] → mean [[.15, .15], [.35, .35]],
    #      var over t = ((a - b) / 2)^2 = .0025 everywhere.
    #   B: maps [[.5, .5], [.9, .1]] and [[.5, .5], [.1, .9]] → mean [[.5, .5], [.5, .5]],
    #      var [[0, 0], [.16, .16]].
    members = [
        FixedProbability([[0.1, 0.2], [0.3, 0.4]]),
        FixedProbability([[0.5, 0.5], [0.9, 0.1]]),
    ]
    out = ensemble_predict(members, torch.zeros(1, 3, 2, 2), (0, 4), batch_members=batch_members)

    p1 = torch.tensor([[0.325, 0.325], [0.425, 0.425]])  # mean of .15/.5 and .35/.5
    aleatoric = torch.tensor([[0.00125, 0.00125], [0.08125, 0.08125]])  # (.0025 + 0) / 2 ...
    epistemic = torch.tensor([[0.030625, 0.030625], [0.005625, 0.005625]])  # ((.5-.15)/2)^2 ...
    entropy = torch.tensor(
        [[-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in row] for row in p1.tolist()]
    )
    tol = {"atol": 1e-6, "rtol": 0}
    torch.testing.assert_close(out.probability[0, 1], p1, **tol)
    torch.testing.assert_close(out.probability[0, 0], 1 - p1, **tol)
    for c in (0, 1):  # var(1 - p) == var(p)
        torch.testing.assert_close(out.aleatoric[0, c], aleatoric, **tol)
        torch.testing.assert_close(out.epistemic[0, c], epistemic, **tol)
    torch.testing.assert_close(out.entropy[0], entropy, **tol)
    assert out.members == 2 and out.transforms == (0, 4)


@pytest.mark.parametrize("batch_members", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 3, 8, 20)])
def test_running_statistics_equal_naive_computation(batch_members, shape):
    torch.manual_seed(7)
    x = torch.randn(*shape)
    members = [_spatial(10), _spatial(11), _spatial(12)]
    tta = tta_transforms(8)
    out = ensemble_predict(members, x, tta, batch_members=batch_members)
    prob, aleatoric, epistemic, entropy = _naive(members, x, tta)
    for got, want in zip(
        (out.probability, out.aleatoric, out.epistemic, out.entropy),
        (prob, aleatoric, epistemic, entropy),
        strict=True,
    ):
        assert got.dtype == torch.float32
        assert got.shape == want.shape
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)


def test_tta_output_is_aligned_with_input():
    """A model whose logits are its input's first channel: content, not orientation.

    After every transform and its inverse, P(class 0) must be sigmoid(2 * x0) at the
    same pixel as x0 — a wrong inverse (e.g. rot90 undone by rot90) misplaces it.
    """

    def first_channel(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], -x[:, :1]], dim=1)

    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 10)  # non-square: odd rotations swap H and W
    expected = torch.sigmoid(2 * x[:, 0])
    for t in DIHEDRAL_IDS:
        out = ensemble_predict([first_channel], x, (t,))
        torch.testing.assert_close(out.probability[:, 0], expected, atol=1e-6, rtol=0)
    out = ensemble_predict([first_channel], x, tta_transforms(8))
    torch.testing.assert_close(out.probability[:, 0], expected, atol=1e-6, rtol=0)
    assert float(out.aleatoric.max()) <= 1e-7


def test_probability_sums_to_one_and_entropy_is_bounded():
    x = torch.randn(2, 3, 16, 16)
    out = ensemble_predict([_spatial(1, classes=4), _spatial(2, classes=4)], x, tta_transforms(4))
    torch.testing.assert_close(out.probability.sum(dim=1), torch.ones(2, 16, 16))
    assert out.entropy.shape == (2, 16, 16)
    assert float(out.entropy.min()) >= 0.0
    assert float(out.entropy.max()) <= math.log(4)
    assert float(out.aleatoric.min()) >= 0.0 and float(out.epistemic.min()) >= 0.0


def test_entropy_extremes():
    certain = FixedProbability([[1e-30, 1.0 - 1e-7]])
    uniform = FixedProbability([[0.5, 0.5]])
    x = torch.zeros(1, 3, 1, 2)
    assert float(ensemble_predict([certain], x).entropy.max()) < 1e-5
    torch.testing.assert_close(
        ensemble_predict([uniform], x).entropy, torch.full((1, 1, 2), math.log(2))
    )


def test_runs_without_autograd_and_on_real_architecture():
    from napari_histo.models import build_model

    model = build_model("resunet", {"width": 4, "depth": 2}).eval()
    x = torch.randn(1, 3, 32, 64, requires_grad=True)
    out = ensemble_predict([model], x, tta_transforms(8))
    assert out.probability.shape == (1, 2, 32, 64)
    assert not out.probability.requires_grad


@pytest.mark.parametrize(
    ("members", "x", "tta", "error", "match"),
    [
        ([], torch.zeros(1, 3, 4, 4), (0,), ValueError, "at least one"),
        (nn.Conv2d(3, 2, 1), torch.zeros(1, 3, 4, 4), (0,), TypeError, "single callable"),
        ([nn.Conv2d(3, 2, 1)], torch.zeros(3, 4, 4), (0,), ValueError, r"\(B, C, H, W\)"),
        (
            [nn.Conv2d(3, 2, 1)],
            torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
            (0,),
            ValueError,
            "floating",
        ),
        ([nn.Conv2d(3, 2, 1)], torch.zeros(1, 3, 4, 4), (), ValueError, "at least one transform"),
        ([nn.Conv2d(3, 2, 1)], torch.zeros(1, 3, 4, 4), (0, 0), ValueError, "repeat"),
        ([nn.Conv2d(3, 2, 1)], torch.zeros(1, 3, 4, 4), 8, TypeError, "tta_transforms"),
        ([nn.Conv2d(3, 2, 1)], torch.zeros(1, 3, 4, 4), (9,), ValueError, "0..7"),
        ([lambda x: x[:, :2, :2]], torch.zeros(1, 3, 4, 4), (0,), ValueError, "logits of shape"),
    ],
)
def test_bad_arguments(members, x, tta, error, match):
    with pytest.raises(error, match=match):
        ensemble_predict(members, x, tta)


def test_members_with_different_class_counts_are_refused():
    with pytest.raises(ValueError, match="disagree"):
        ensemble_predict([_pixelwise(0, 2), _pixelwise(0, 3)], torch.zeros(1, 3, 4, 4))
