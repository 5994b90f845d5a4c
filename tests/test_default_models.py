"""The default ensemble (v2): safe, small, honest cards, and good on real and synthetic tissue."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import pytest

from napari_histo.evaluate import LabelledTile, pooled_scores, score_tiles
from napari_histo.models import latest_cards, load_model, read_card
from napari_histo.synthetic import write_synthetic_slide
from napari_histo.training.default_ensemble import heldout_dice
from napari_histo.training.real_ensemble import SYNTHETIC_HELDOUT_SEEDS, SYNTHETIC_TRAIN_SEEDS

HELDOUT = Path(__file__).parent / "data" / "real_tumor" / "heldout"


@pytest.fixture(scope="module")
def cards():
    found = latest_cards()
    assert set(found) == {"resunet", "denseunet", "deeplabv3plus"}
    return list(found.values())


def test_cards_are_small_real_and_scored(cards):
    architectures = set()
    for path in cards:
        card = read_card(path)
        architectures.add(card.architecture)
        assert card.version.startswith("2.")
        assert (path.parent / card.weights_file).suffix == ".safetensors"
        assert (path.parent / card.weights_file).stat().st_size <= 25 * 2**20
        # Every training set is named with its licence.
        for name in ("CAMELYON16", "BCSS", "GlaS", "EBHI", "Kather", "oral", "synthetic"):
            assert name in card.training_data
        assert "licence" in card.training_data and "CC0" in card.training_data
        assert card.input_mpp == 1.0 and card.classes == ("background", "tumor")
        assert card.stain_reference is not None  # the dock's out-of-distribution check
        assert card.metrics["heldout_synthetic_dice_tumor"] >= 0.85
        assert {"heldout_camelyon16_dice", "heldout_bcss_auroc"} <= set(card.metrics)
        load_model(path)  # sha256 and tensor shapes verified
    assert len(architectures) == 3  # diverse members


def test_ensemble_on_held_out_real_tiles(cards):
    """Two lymph-node tiles of the held-out split (never trained on), CC0."""
    members = [load_model(p) for p in cards]
    tiles = []
    for image in sorted(HELDOUT.glob("*.jpg")):
        mask = imagecodecs.imread(image.with_name(image.stem + "_mask.png")) >= 128
        tiles.append(LabelledTile(image.stem, imagecodecs.imread(image)[..., :3], mask, 1.2))
    assert len(tiles) == 2
    _, pooled = score_tiles(tiles, members)
    scores = pooled_scores(pooled)
    assert scores["auroc"] >= 0.75 and scores["dice"] >= 0.6, scores


def test_ensemble_dice_on_an_unseen_synthetic_slide(cards, tmp_path):
    seed = 2002
    assert seed not in SYNTHETIC_TRAIN_SEEDS and seed not in SYNTHETIC_HELDOUT_SEEDS
    slide = write_synthetic_slide(tmp_path / "unseen.svs", 6144, seed=seed, workers=1)
    assert heldout_dice([slide.path], cards) >= 0.85
