"""The default ensemble shipped as package data: safe, small, honest cards, and good."""

from __future__ import annotations

import pytest

from napari_histo.models import latest_cards, load_model, read_card
from napari_histo.synthetic import write_synthetic_slide
from napari_histo.training.default_ensemble import HELD_OUT_SEEDS, TRAIN_SEEDS, heldout_dice


@pytest.fixture(scope="module")
def cards():
    found = latest_cards()
    assert set(found) == {"resunet", "denseunet", "deeplabv3plus"}
    return list(found.values())


def test_cards_are_small_synthetic_and_scored(cards):
    architectures = set()
    for path in cards:
        card = read_card(path)
        architectures.add(card.architecture)
        assert (path.parent / card.weights_file).suffix == ".safetensors"
        assert (path.parent / card.weights_file).stat().st_size <= 10 * 2**20
        assert "SYNTHETIC" in card.training_data
        assert card.metrics["heldout_dice_tumor"] >= 0.85
        assert card.input_mpp == 2.0 and card.classes == ("background", "tumor")
        load_model(path)  # sha256 and tensor shapes verified
    assert len(architectures) == 3  # diverse members


def test_ensemble_dice_on_an_unseen_synthetic_slide(cards, tmp_path):
    seed = 2002
    assert seed not in TRAIN_SEEDS and seed not in HELD_OUT_SEEDS
    slide = write_synthetic_slide(tmp_path / "unseen.svs", 6144, seed=seed, workers=1)
    assert heldout_dice([slide.path], cards) >= 0.85
