"""Out-of-distribution score: stain statistics of a slide against the training tiles."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from napari_histo.errors import WeightsError
from napari_histo.inference.stain_check import slide_ood
from napari_histo.models import default_models_dir, read_card, write_card
from napari_histo.models.card import ModelCard
from napari_histo.ood import (
    FEATURES,
    StainReference,
    fit_reference,
    ood_message,
    ood_score,
    stain_features,
)

DATA = Path(__file__).parent / "data"
TILES = DATA / "real_tumor" / "tiles"


def _real_patches() -> list[np.ndarray]:
    """Quadrants of the four real lymph-node tiles (16 patches of 256²)."""
    patches = []
    for path in sorted(TILES.glob("camelyon16_*[0-9].jpg")):
        rgb = imagecodecs.imread(path)[..., :3]
        patches += [rgb[y : y + 256, x : x + 256] for y in (0, 256) for x in (0, 256)]
    return patches


@pytest.fixture(scope="module")
def reference() -> StainReference:
    return fit_reference([stain_features(p) for p in _real_patches()])


def test_features_of_tissue_and_glass():
    features = stain_features(_real_patches()[0])
    assert features.shape == (len(FEATURES),) and np.isfinite(features).all()
    assert stain_features(np.full((64, 64, 3), 245, np.uint8)) is None  # glass only
    with pytest.raises(ValueError, match="rgb"):
        stain_features(np.zeros((4, 4)))


def test_training_like_tiles_score_low_and_other_stains_high(reference):
    scores = [ood_score(stain_features(p), reference) for p in _real_patches()]
    assert np.median(scores) < 1
    brown = np.empty((128, 128, 3), np.uint8)
    brown[:] = (150, 100, 60)  # DAB-like brown, no haematoxylin or eosin
    brown[::2] = (120, 80, 40)
    assert ood_score(stain_features(brown), reference) > 1
    assert "unlike" in ood_message(2.0) and "typical" in ood_message(0.3)
    assert np.isnan(ood_score(None, reference))


def test_reference_needs_enough_tiles():
    with pytest.raises(ValueError, match="at least"):
        fit_reference([stain_features(p) for p in _real_patches()[:3]])


def test_card_round_trip_and_validation(reference, tmp_path):
    card = read_card(sorted(default_models_dir().glob("resunet-*.json"))[0])
    with_ref = dataclasses.replace(card, stain_reference=reference.to_dict())
    again = ModelCard.from_dict(json.loads(json.dumps(with_ref.to_dict())))
    assert StainReference.from_dict(again.stain_reference).threshold == pytest.approx(
        reference.threshold, rel=1e-3
    )
    old = {k: v for k, v in card.to_dict().items() if k != "stain_reference"}
    assert ModelCard.from_dict(old).stain_reference is None  # older cards still load
    malformed = {"mean": [1, 2], "covariance": [], "threshold": 1}
    bad = {**with_ref.to_dict(), "stain_reference": malformed}
    with pytest.raises(WeightsError, match="stain_reference"):
        ModelCard.from_dict(bad, source="bad.json")


def test_slide_ood_on_the_real_cmu_slide(reference, tmp_path):
    source = sorted(default_models_dir().glob("deeplabv3plus-*.json"))
    card = read_card(source[0])
    plain = tmp_path / "plain.json"
    write_card(plain, dataclasses.replace(card, stain_reference=None))
    score, text = slide_ood(DATA / "cmu_small_region.svs", [plain])
    assert np.isnan(score) and "no stain reference" in text
    with_ref = tmp_path / "with_ref.json"
    write_card(with_ref, dataclasses.replace(card, stain_reference=reference.to_dict()))
    score, text = slide_ood(DATA / "cmu_small_region.svs", [plain, with_ref])
    assert np.isfinite(score) and text.startswith(("Slide vs training data", "Warning"))
