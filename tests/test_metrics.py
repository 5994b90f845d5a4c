"""Instance-segmentation metrics: AJI and panoptic quality, against hand counts."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histo.metrics import aggregated_jaccard_index, dice, panoptic_quality


def _square(shape, r0, c0, side, value, out=None):
    out = np.zeros(shape, np.int32) if out is None else out
    out[r0 : r0 + side, c0 : c0 + side] = value
    return out


def test_identical_labelings_up_to_relabeling():
    truth = _square((20, 20), 1, 1, 4, 1)
    _square((20, 20), 10, 10, 3, 2, truth)
    pred = np.where(truth == 1, 7, np.where(truth == 2, 3, 0))
    assert aggregated_jaccard_index(truth, pred) == 1.0
    assert panoptic_quality(truth, pred) == (1.0, 1.0, 1.0)


def test_one_object_split_in_two():
    truth = _square((10, 10), 2, 2, 4, 1)  # 16 px
    pred = np.zeros_like(truth)
    pred[2:6, 2:5] = 1  # 12 px, IoU 12/16 = 0.75 with the truth
    pred[2:6, 5] = 2  # 4 px, unmatched prediction
    # AJI: 12 / (16 + 4); PQ: TP 1, FP 1, FN 0 -> DQ 1/1.5, SQ 0.75.
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(12 / 20)
    pq, dq, sq = panoptic_quality(truth, pred)
    assert (dq, sq) == pytest.approx((2 / 3, 0.75))
    assert pq == pytest.approx(0.5)


def test_split_in_halves_matches_nothing():
    truth = _square((10, 10), 2, 2, 4, 1)
    pred = np.zeros_like(truth)
    pred[2:6, 2:4] = 1
    pred[2:6, 4:6] = 2  # both IoU exactly 0.5: no match (strict >)
    # AJI: one half paired (8 / 16), the other half added: 8 / (16 + 8).
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(1 / 3)
    assert panoptic_quality(truth, pred) == (0.0, 0.0, 0.0)


def test_missed_object():
    truth = _square((20, 20), 1, 1, 4, 1)  # 16 px
    _square((20, 20), 10, 10, 3, 2, truth)  # 9 px, missed
    pred = (truth == 1).astype(np.int32)
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(16 / 25)
    # TP 1, FN 1: DQ = 1 / (1 + 0.5), SQ = 1.
    assert panoptic_quality(truth, pred) == pytest.approx((2 / 3, 2 / 3, 1.0))


def test_extra_false_positive():
    truth = _square((20, 20), 1, 1, 4, 1)
    pred = _square((20, 20), 1, 1, 4, 1)
    _square((20, 20), 10, 10, 3, 5, pred)  # 9 px false positive
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(16 / 25)
    assert panoptic_quality(truth, pred) == pytest.approx((2 / 3, 2 / 3, 1.0))


@pytest.mark.parametrize(
    ("shift", "matched"),
    [(10, True), (11, False)],  # IoU 21/41 = 0.512 ; 20/42 = 0.476
)
def test_shifted_object_around_iou_half(shift, matched):
    n = 31
    truth = np.zeros((1, 60), np.int32)
    truth[0, :n] = 1
    pred = np.zeros_like(truth)
    pred[0, shift : shift + n] = 4
    iou = (n - shift) / (n + shift)
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(iou)
    pq, dq, sq = panoptic_quality(truth, pred)
    if matched:
        assert (pq, dq, sq) == pytest.approx((iou, 1.0, iou))
    else:
        assert (pq, dq, sq) == (0.0, 0.0, 0.0)


def test_iou_exactly_half_is_not_a_match():
    truth = np.zeros((1, 60), np.int32)
    truth[0, :30] = 1
    pred = np.zeros_like(truth)
    pred[0, 10:40] = 1  # IoU 20 / 40
    assert panoptic_quality(truth, pred)[1] == 0.0


def test_empty_and_one_sided():
    empty = np.zeros((5, 5), np.uint32)
    one = _square((5, 5), 1, 1, 2, 3).astype(np.uint32)
    assert aggregated_jaccard_index(empty, empty) == 1.0
    assert panoptic_quality(empty, empty) == (1.0, 1.0, 1.0)
    assert aggregated_jaccard_index(one, empty) == 0.0
    assert aggregated_jaccard_index(empty, one) == 0.0
    assert panoptic_quality(one, empty) == (0.0, 0.0, 0.0)


def test_large_non_consecutive_ids():
    truth = np.zeros((8, 8), np.uint32)
    truth[:3, :3] = 4_000_000_000
    pred = _square((8, 8), 0, 0, 3, 1).astype(np.uint16)
    assert aggregated_jaccard_index(truth, pred) == 1.0


def _naive_aji(truth, pred):
    inter = union = 0
    used = set()
    pred_ids = [j for j in np.unique(pred) if j]
    for i in (i for i in np.unique(truth) if i):
        g = truth == i
        best, best_iou = None, -1.0
        for j in pred_ids:
            s = pred == j
            iou = (g & s).sum() / (g | s).sum()
            if iou > best_iou and (g & s).any():
                best, best_iou = j, iou
        if best is None:
            union += g.sum()
            continue
        s = pred == best
        inter += (g & s).sum()
        union += (g | s).sum()
        used.add(best)
    union += sum((pred == j).sum() for j in pred_ids if j not in used)
    return inter / union


def _naive_pq(truth, pred):
    ious = []
    t_ids = [i for i in np.unique(truth) if i]
    p_ids = [j for j in np.unique(pred) if j]
    for i in t_ids:
        for j in p_ids:
            g, s = truth == i, pred == j
            iou = (g & s).sum() / (g | s).sum()
            if iou > 0.5:
                ious.append(iou)
    tp = len(ious)
    dq = tp / (tp + 0.5 * (len(p_ids) - tp) + 0.5 * (len(t_ids) - tp))
    sq = float(np.mean(ious)) if tp else 0.0
    return dq * sq, dq, sq


@pytest.mark.parametrize("seed", range(5))
def test_matches_naive_per_instance_computation(seed):
    rng = np.random.default_rng(seed)
    truth = np.zeros((40, 40), np.int32)
    pred = np.zeros((40, 40), np.int32)
    for k in range(1, 9):
        r, c = rng.integers(0, 32, 2).tolist()
        s = int(rng.integers(3, 8))
        truth[r : r + s, c : c + s] = k
        dr, dc = rng.integers(-2, 3, 2)
        r2, c2 = max(r + dr, 0), max(c + dc, 0)
        if rng.random() < 0.85:
            pred[r2 : r2 + s, c2 : c2 + s] = 10 * k
    assert aggregated_jaccard_index(truth, pred) == pytest.approx(_naive_aji(truth, pred))
    assert panoptic_quality(truth, pred) == pytest.approx(_naive_pq(truth, pred))


def test_dice_unchanged():
    assert dice(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool)) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("truth", "pred", "kwargs", "match"),
    [
        (np.zeros((3, 3), int), np.zeros((3, 4), int), {}, "shape"),
        (np.zeros((3, 3), float), np.zeros((3, 3), int), {}, "true_labels"),
        (np.zeros((3, 3), int), np.zeros((3, 3), float), {}, "pred_labels"),
    ],
)
def test_bad_input(truth, pred, kwargs, match):
    with pytest.raises(ValueError, match=match):
        aggregated_jaccard_index(truth, pred, **kwargs)
    with pytest.raises(ValueError, match=match):
        panoptic_quality(truth, pred, **kwargs)


@pytest.mark.parametrize("threshold", [0.4, 1.0, "0.5"])
def test_bad_iou_threshold(threshold):
    with pytest.raises(ValueError, match="iou_threshold"):
        panoptic_quality(np.zeros((2, 2), int), np.zeros((2, 2), int), threshold)
