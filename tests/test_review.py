"""Review core on plain arrays: ranking, queue state, error map, calibration, suggestions."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

from napari_histo.io.store import ResultGeometry
from napari_histo.models import ModelCard, read_card
from napari_histo.models.card import _OPTIONAL
from napari_histo.review import (
    ERROR_CLASSES,
    Region,
    RegionGrid,
    ReviewQueue,
    ReviewStateWarning,
    agreement_map,
    calibrate,
    choose_level,
    ensemble_temperature,
    error_map,
    error_scores,
    fit_calibration,
    fit_temperature,
    held_out_stripes,
    pixel_scores,
    rank_regions,
    review_state_path,
    saved_ranking,
    suggest_regions,
    temperature_for_models,
    write_calibration_png,
    write_error_csv,
)


def grid(shape=(16, 16), block=4, mpp=2.0, downsample=8.0, origin=(100, 200)):
    geometry = ResultGeometry(origin, downsample, shape, 4, mpp)
    return RegionGrid(geometry, block)


# -- ranking ---------------------------------------------------------------------------
def test_planted_epistemic_block_ranks_first_with_its_level0_rect():
    p = np.full((16, 16), 0.2, np.float32)
    v = np.full((16, 16), 0.01, np.float32)
    v[8:12, 4:8] = 0.2  # block (row 2, col 1)
    ranked = rank_regions(grid(), p, v, score="epistemic")
    assert len(ranked) == 16
    best = ranked[0]
    # Level-0: origin + block * 4 px * downsample 8.
    assert best.rect_l0 == (100 + 4 * 8, 200 + 8 * 8, 32, 32)
    assert best.area_um2 == pytest.approx(16 * 4.0)  # 16 px of 2 µm
    assert best.mean == pytest.approx(0.8)  # 4 v
    assert best.score == pytest.approx(0.8 * 64.0)
    assert all(r.score == pytest.approx(0.04 * 64) for r in ranked[1:])


def test_boundary_score_peaks_at_one_half():
    values, counts = pixel_scores("boundary", np.array([[0.0, 0.25, 0.5, 0.75, 1.0]]))
    np.testing.assert_allclose(values, [[0, 0.5, 1, 0.5, 0]])
    assert counts is None
    p = np.zeros((8, 8), np.float32) + 0.01
    p[4:8, 0:4] = 0.5
    ranked = rank_regions(grid((8, 8)), p, score="boundary", top=1)
    assert ranked[0].rect_l0[:2] == (100, 200 + 32)
    assert ranked[0].mean == pytest.approx(1.0)


def test_score_weighs_area_glass_counts_nothing():
    p = np.full((8, 8), 0.5, np.float32)
    p[0:4, 0:2] = 0.0  # half of block (0, 0) is glass: never computed
    v = np.where(p > 0, 0.1, 0).astype(np.float32)
    ranked = rank_regions(grid((8, 8)), p, v, score="epistemic")
    by_corner = {r.rect_l0[:2]: r for r in ranked}
    half, full = by_corner[(100, 200)], by_corner[(132, 200)]
    assert half.mean == pytest.approx(full.mean)
    assert half.area_um2 == pytest.approx(full.area_um2 / 2)
    assert half.score == pytest.approx(full.score / 2)
    assert ranked[-1] is half


def test_edge_blocks_are_clipped_and_scores_vectorised():
    p = np.full((10, 10), 0.5, np.float32)
    v = np.full((10, 10), 0.1, np.float32)
    ranked = rank_regions(grid((10, 10)), p, v)
    assert len(ranked) == 9
    corner = next(r for r in ranked if r.rect_l0[:2] == (100 + 64, 200 + 64))
    assert corner.rect_l0[2:] == (16, 16)  # 2 px of 8 level-0 px
    assert corner.area_um2 == pytest.approx(4 * 4.0)


def test_disagreement_score_is_share_of_largest_variance():
    p = np.array([[0.5, 0.1, 0.1]], np.float32)
    v = np.array([[0.25, 0.09, 0.0]], np.float32)
    values, _ = pixel_scores("disagreement", p, v)
    np.testing.assert_allclose(values, [[1.0, 1.0, 0.0]], atol=1e-6)


def test_annotation_score_counts_labelled_pixels_only():
    p = np.full((8, 8), 0.9, np.float32)
    labels = np.full((8, 8), 255, np.uint8)
    labels[0:4, 0:4] = 0  # annotated non-tumor, model says tumor
    labels[4:8, 4:8] = 1  # annotated tumor, model agrees
    ranked = rank_regions(grid((8, 8)), p, score="annotations", labels=labels)
    assert [r.rect_l0[:2] for r in ranked] == [(100, 200), (132, 232)]
    assert ranked[0].mean == pytest.approx(0.9)
    assert ranked[0].area_um2 == pytest.approx(16 * 4.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"score": "nope"}, "`score` must be one of"),
        ({"score": "annotations"}, "needs `labels`"),
        ({"top": 0}, "`top` must be None or an int >= 1"),
    ],
)
def test_rank_rejects_bad_input(kwargs, match):
    p = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match=match):
        rank_regions(grid((8, 8)), p, p, **kwargs)


def test_rank_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"`epistemic` shape \(4, 4\) must equal"):
        rank_regions(grid((8, 8)), np.zeros((8, 8)), np.zeros((4, 4)))


def test_choose_level_keeps_blocks_at_least_min_px():
    geometry = ResultGeometry((0, 0), 4.0, (4096, 4096), 128, 1.0)
    assert choose_level(geometry, 5, 256.0, 8) == (4, 16)
    assert choose_level(geometry, 3, 256.0, 8) == (2, 64)
    assert choose_level(geometry, 5, 8.0, 8) == (0, 8)


def test_ranking_ten_thousand_regions_is_fast():
    import time

    rng = np.random.default_rng(0)
    p = rng.random((1600, 1600), dtype=np.float32)
    v = rng.random((1600, 1600), dtype=np.float32) * 0.05
    start = time.perf_counter()
    ranked = rank_regions(grid((1600, 1600), block=16), p, v)
    assert len(ranked) == 10_000
    assert time.perf_counter() - start < 2.0


# -- suggestions -----------------------------------------------------------------------
def test_suggestions_respect_min_distance():
    regions = [
        Region((0, 0, 10, 10), 10.0, 100.0, 1.0),
        Region((10, 0, 10, 10), 9.0, 100.0, 1.0),  # 10 px from the best: too close
        Region((0, 10, 10, 10), 8.0, 100.0, 1.0),  # too close too
        Region((100, 0, 10, 10), 7.0, 100.0, 1.0),
        Region((100, 100, 10, 10), 1.0, 100.0, 1.0),
    ]
    picked = suggest_regions(regions, 3, min_distance_um=20.0, mpp=0.5)  # 40 level-0 px
    assert [r.rect_l0[:2] for r in picked] == [(0, 0), (100, 0), (100, 100)]
    centres = np.array([r.center_l0 for r in picked]) * 0.5
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    assert gaps[np.triu_indices(3, 1)].min() >= 20.0
    assert [r.score for r in suggest_regions(regions, 2, 0.0, 1.0)] == [10.0, 9.0]
    with pytest.raises(ValueError, match="`count` must be an int >= 1"):
        suggest_regions(regions, 0, 1.0, 1.0)


# -- queue and its file ----------------------------------------------------------------
def regions3():
    return [Region((x, 0, 8, 8), 3.0 - i, 64.0, 0.5) for i, x in enumerate((0, 8, 16))]


def test_queue_navigates_decides_and_notifies(tmp_path):
    seen = []
    queue = ReviewQueue(regions3(), review_state_path(tmp_path / "s.svs"), author="ana")
    queue.connect(lambda q: seen.append(q.index))
    assert queue.current.rect_l0 == (0, 0, 8, 8)
    d = queue.accept()
    assert (d.status, d.author, d.key) == ("accepted", "ana", "0,0,8,8")
    assert queue.index == 1
    queue.correct(author="ben", note="missed gland")
    queue.previous()
    assert queue.index == 1
    queue.next()
    queue.next()  # stays on the last
    assert queue.index == 2
    assert queue.counts() == {"accepted": 1, "corrected": 1, "skipped": 0, "undecided": 1}
    assert seen == [1, 2, 1, 2]
    queue.go(0)
    assert queue.next_undecided().rect_l0 == (16, 0, 8, 8)
    with pytest.raises(ValueError, match="`status` must be one of"):
        queue.decide("maybe")


def test_queue_state_round_trips_through_the_file(tmp_path):
    path = review_state_path(tmp_path / "s.svs")
    assert path.name == "s.svs.review.json"
    queue = ReviewQueue(regions3(), path, author="ana", score="epistemic")
    queue.accept()
    queue.skip(author="ben")
    data = json.loads(path.read_text())
    assert data["format"] == 1 and data["index"] == 2 and len(data["decisions"]) == 2
    again = ReviewQueue(regions3(), path)
    assert again.index == 2
    assert again.decision(again.regions[0]).status == "accepted"
    assert again.decision(again.regions[1]).author == "ben"
    # A re-ranking keeps decisions by rectangle and the current region by key.
    reordered = ReviewQueue(regions3()[::-1], path)
    assert reordered.current.rect_l0 == (16, 0, 8, 8)
    assert reordered.decision(reordered.regions[2]).status == "accepted"


def test_saved_ranking_gives_score_and_square_side(tmp_path):
    path = review_state_path(tmp_path / "s.svs")
    assert saved_ranking(path) is None
    queue = ReviewQueue(regions3(), path, score="boundary")
    queue.skip()
    assert saved_ranking(path) == ("boundary", 8)
    path.write_text("{not json")
    with pytest.warns(ReviewStateWarning):
        assert saved_ranking(path) is None


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"format": 99}', '{"format": 1, "decisions": [{"key": "1"}]}', "[]"],
)
def test_corrupt_state_is_set_aside_with_one_warning(tmp_path, content):
    path = review_state_path(tmp_path / "s.svs")
    path.write_text(content)
    (tmp_path / "s.svs.review.json.bad").write_text("older bad file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        queue = ReviewQueue(regions3(), path)
    assert [w.category for w in caught] == [ReviewStateWarning]
    assert queue.decisions == {} and queue.index == 0
    assert not path.exists()
    assert (tmp_path / "s.svs.review.json.bad").read_text() == "older bad file"
    assert (tmp_path / "s.svs.review.json.bad.1").read_text() == content
    queue.accept()
    assert json.loads(path.read_text())["decisions"][0]["status"] == "accepted"


# -- error map -------------------------------------------------------------------------
def test_error_map_counts_on_a_hand_made_case(tmp_path):
    p = np.array([[0.9, 0.9, 0.9, 0.1], [0.1, 0.1, 0.6, 0.2]], np.float32)
    t = np.array([[1, 1, 0, 1], [0, 255, 1, 0]], np.uint8)
    errors = error_map(p, t)
    tp, fp, fn, tn = (ERROR_CLASSES[k] for k in ("TP", "FP", "FN", "TN"))
    np.testing.assert_array_equal(errors, [[tp, tp, fp, fn], [tn, 0, tp, tn]])
    scores = error_scores(errors)
    assert (scores.tp_px, scores.fp_px, scores.fn_px, scores.tn_px) == (3, 1, 1, 2)
    assert scores.dice == pytest.approx(6 / 8)
    assert scores.precision == pytest.approx(0.75)
    assert scores.recall == pytest.approx(0.75)
    path = write_error_csv([("s.svs", scores)], tmp_path / "errors.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "slide,tp_px,fp_px,fn_px,tn_px,dice,precision,recall"
    assert lines[1] == "s.svs,3,1,1,2,0.7500,0.7500,0.7500"


# -- calibration -----------------------------------------------------------------------
def test_temperature_scaling_recovers_a_known_temperature(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 200_000)
    truth = rng.random(z.size) < 1 / (1 + np.exp(-z / 2))  # true probability sigmoid(z / 2)
    p = 1 / (1 + np.exp(-z))  # over-confident by T = 2
    assert fit_temperature(p, truth) == pytest.approx(2.0, rel=0.05)
    held = held_out_stripes((400, 500), 0.5, 4)
    result = fit_calibration(p.reshape(400, 500), truth.reshape(400, 500), held)
    assert result.temperature == pytest.approx(2.0, rel=0.06)
    assert result.ece_before > 0.05
    assert result.ece_after < 0.5 * result.ece_before
    assert result.nll_after < result.nll_before
    assert result.fit_px + result.held_px == z.size
    json.dumps(result.to_dict())
    png = write_calibration_png(result, tmp_path / "calibration.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_and_its_checks():
    np.testing.assert_allclose(calibrate(np.array([0.5, 0.9]), 1.0), [0.5, 0.9], atol=1e-6)
    assert calibrate(np.array([0.99]), 4.0)[0] < 0.99
    with pytest.raises(ValueError, match="`temperature` must be a finite number > 0"):
        calibrate(np.array([0.5]), 0.0)
    with pytest.raises(ValueError, match="both classes"):
        fit_temperature(np.array([0.2, 0.3]), np.array([True, True]))
    assert held_out_stripes((2, 8), 0.25, 2).sum() == 2 * 2


# -- cards -----------------------------------------------------------------------------
def shipped_card():
    from napari_histo.models import default_models_dir, latest_cards

    return read_card(next(iter(latest_cards(default_models_dir()).values())))


def test_card_round_trip_with_temperature_and_old_cards_load():
    card = shipped_card()
    assert "temperature" in _OPTIONAL and card.temperature is None
    assert "temperature" not in card.to_dict()
    hot = dataclasses.replace(card, temperature=1.7)
    assert ModelCard.from_dict(json.loads(json.dumps(hot.to_dict()))).temperature == 1.7
    with pytest.raises(ValueError, match="field `temperature` must be null or a finite number"):
        dataclasses.replace(card, temperature=-1.0)
    assert ensemble_temperature([hot, hot]) == 1.7
    assert ensemble_temperature([card, card]) is None
    with pytest.raises(ValueError, match="different temperatures"):
        ensemble_temperature([hot, card])
    models = [{"name": card.name, "version": card.version, "sha256": card.sha256}]
    assert temperature_for_models(models, [card, hot]) == 1.7
    assert temperature_for_models(models, [card]) is None


def test_agreement_map_counts_majority():
    probs = np.array([[[0.9, 0.1, 0.6]], [[0.8, 0.9, 0.4]], [[0.7, 0.2, 0.4]], [[0.6, 0.3, 0.9]]])
    np.testing.assert_allclose(agreement_map(probs), [[1.0, 0.75, 0.5]])
    with pytest.raises(ValueError, match=r"\(members, rows, cols\)"):
        agreement_map(np.zeros((3, 3)))


def test_bench_review_pieces():
    from napari_histo.bench import BENCHMARKS
    from napari_histo.bench.review import _chance_at5, plant_failure

    assert "review" in BENCHMARKS
    rgb = np.zeros((32, 32, 3), np.uint8) + np.array([200, 120, 180], np.uint8)  # pink
    for kind in ("dark", "hue", "texture"):
        out = plant_failure(rgb, (8, 8, 16, 16), kind)
        assert (out[:8] == rgb[:8]).all() and (out[8:24, 8:24] != rgb[8:24, 8:24]).any()
    assert plant_failure(rgb, (0, 0, 4, 4), "dark")[0, 0, 0] == 90
    assert _chance_at5(10, 0) == 0.0 and _chance_at5(10, 6) == 1.0
    assert _chance_at5(100, 1) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="`kind` must be one of"):
        plant_failure(rgb, (0, 0, 4, 4), "paint")


def test_uncertainty_score_is_bernoulli_entropy_in_bits():
    from napari_histo.review.regions import pixel_scores

    p = np.array([[0.0, 0.5, 1.0, 0.25]], np.float32)
    values, counts = pixel_scores("uncertainty", p)
    expected = [0.0, 1.0, 0.0, -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75))]
    assert counts is None
    np.testing.assert_allclose(values[0], expected, atol=1e-6)


def test_a_decision_that_cannot_be_saved_is_not_kept(tmp_path):
    from napari_histo.review.regions import Region
    from napari_histo.review.state import ReviewQueue

    regions = [Region((0, 0, 10, 10), 2.0, 100.0, 0.5), Region((10, 0, 10, 10), 1.0, 100.0, 0.4)]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    queue = ReviewQueue(regions, blocker / "s.review.json", author="ana")  # parent is a file
    with pytest.raises(OSError):
        queue.accept()
    assert queue.index == 0 and queue.decision() is None
