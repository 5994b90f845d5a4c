"""Review on a real tiny run: CLI, ranking a store, error map, calibration, disagreement."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_histo.annotations.model import Annotation
from napari_histo.cli import main
from napari_histo.inference.engine import EngineConfig, infer_slide, run
from napari_histo.io.slide import Slide
from napari_histo.models import load_model, read_card
from napari_histo.review import (
    NoRunError,
    calibrated_levels,
    latest_complete_run,
    rank_run,
    region_annotations,
    region_disagreement,
    run_calibration,
    run_error_map,
    run_member_cards,
    run_temperature,
    write_calibrated_versions,
)
from napari_histo.synthetic import write_synthetic_slide
from tests.test_engine import make_member


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    slide = write_synthetic_slide(root / "s.svs", 2048, seed=7, workers=1, artefacts=False).path
    cards = [make_member(root / "models", "resunet", 1), make_member(root / "models", "resunet",
             2, name="resunet-b")]  # fmt: skip
    members = [load_model(c) for c in cards]
    run(infer_slide(slide, members, config=EngineConfig(tta=1), out_dir=None))
    return slide, cards, members


def annotations():
    return [
        Annotation.from_bbox(0, 0, 1024, 2048, label="non-tumor"),
        Annotation.from_bbox(1024, 0, 2048, 2048, label="tumor"),
    ]


def test_cli_review_json_ranks_the_latest_run(tiny, capsys):
    slide, _, _ = tiny
    assert main(["review", str(slide), "--top", "3", "--json", "--region-um", "64"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["score"] == "uncertainty" and len(out["regions"]) == 3
    scores = [r["score"] for r in out["regions"]]
    assert scores == sorted(scores, reverse=True)
    x, y, w, h = out["regions"][0]["rect_l0"]
    assert 0 <= x < 2048 and 0 <= y < 2048 and w == h == 256  # 64 µm at 0.25 µm/px
    assert out["regions"][0]["area_um2"] == pytest.approx(64 * 64, rel=0.01)
    assert main(["review", str(slide), "--top", "2", "--score", "boundary"]) == 0
    assert "rank" in capsys.readouterr().out


def test_cli_review_without_a_run_says_infer_first(tmp_path, capsys):
    slide = write_synthetic_slide(tmp_path / "bare.svs", 1024, seed=1, workers=1).path
    assert main(["review", str(slide), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run napari-histo infer first" in err
    with pytest.raises(NoRunError):
        latest_complete_run(slide)


def test_annotation_score_error_map_and_calibration_on_a_run(tiny, tmp_path):
    slide, cards, _ = tiny
    result = latest_complete_run(slide)
    ranked = rank_run(result, score="annotations", annotations=annotations(), top=5)
    assert ranked and ranked[0].score >= ranked[-1].score
    errors, scores, geometry = run_error_map(result, annotations(), level=0)
    assert errors.shape == geometry.shape
    assert scores.tp_px + scores.fp_px + scores.fn_px + scores.tn_px == errors.size
    calibration = run_calibration(result, annotations())
    assert calibration.temperature > 0 and calibration.held_px > 0
    assert run_temperature(result, [cards[0].parent]) is None
    written = write_calibrated_versions(cards, calibration, tmp_path / "calibrated")
    new = [read_card(p) for p in written]
    assert [c.version for c in new] == ["0.2", "0.2"]
    assert {c.temperature for c in new} == {calibration.temperature}
    assert new[0].metrics["ece_before"] == round(calibration.ece_before, 4)
    assert new[0].sha256 == read_card(cards[0]).sha256  # same weights
    assert load_model(written[0]).card.temperature == calibration.temperature
    assert run_temperature(result, [tmp_path / "calibrated"]) == calibration.temperature
    levels = calibrated_levels(result, calibration.temperature)
    assert len(levels) == len(result.levels("probability"))
    assert levels[-1].compute().dtype == np.float32


def test_member_disagreement_on_a_region(tiny):
    slide, _, members = tiny
    with Slide(slide) as opened:
        found = region_disagreement(opened, (512, 512, 512, 512), members)
    assert found.probabilities.shape[0] == 2
    assert found.agreement.shape == found.probabilities.shape[1:]
    assert found.agreement.min() >= 0.5 and found.agreement.max() <= 1.0
    assert found.names == ("resunet-test 0.1", "resunet-b 0.1")
    with pytest.raises(ValueError, match="`rect_l0`"), Slide(slide) as opened:
        region_disagreement(opened, (5000, 5000, 10, 10), members)


def test_cli_review_by_annotations_reads_the_autosaved_file(tiny, capsys):
    from napari_histo.io.annotations import write_annotations
    from napari_histo.io.annotations.autosave import autosave_path

    slide, _, _ = tiny
    assert main(["review", str(slide), "--score", "annotations"]) == 2
    assert "pass --annotations" in capsys.readouterr().err
    points = write_annotations(
        autosave_path(slide), [Annotation(kind="point", coords=[[10, 10]], label="tumor")]
    )
    assert main(["review", str(slide), "--score", "annotations"]) == 2
    err = capsys.readouterr().err
    assert str(points) in err and "no tumor / non-tumor regions" in err
    path = write_annotations(autosave_path(slide), annotations())
    try:
        assert main(["review", str(slide), "--score", "annotations", "--top", "2", "--json"]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["score"] == "annotations" and 1 <= len(out["regions"]) <= 2
    finally:
        path.unlink()


def test_region_annotations_at_each_granularity_and_member_cards(tiny, tmp_path):
    from napari_histo.errors import WeightsError

    slide, cards, _ = tiny
    result = latest_complete_run(slide)
    whole = (0, 0, 2048, 2048)
    kinds = {"bbox": "bbox", "ellipse": "ellipse", "polygon": "polygon", "pixel": "polygon"}
    for granularity, kind in kinds.items():
        anns = region_annotations(result, whole, granularity, threshold=0.2, author="ana")
        assert anns and {a.kind for a in anns} == {kind}
        assert {a.granularity for a in anns} == {granularity}
        assert {a.label for a in anns} == {"tumor"} and {a.author for a in anns} == {"ana"}
    assert region_annotations(result, whole, "bbox", threshold=0.99) == []
    with pytest.raises(ValueError, match="`granularity`"):
        region_annotations(result, whole, "circle")
    assert run_member_cards(result, [cards[0].parent]) == list(cards)
    with pytest.raises(WeightsError, match="no card with its weights"):
        run_member_cards(result, [tmp_path])
