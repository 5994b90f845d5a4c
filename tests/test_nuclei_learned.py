"""Learned (HoVer-Net-style) nuclei backend: targets, post-processing, model, quality."""

from __future__ import annotations

import json
import re
import shutil
import threading

import numpy as np
import pytest
import torch

from napari_histo.errors import WeightsError
from napari_histo.io.slide import Slide
from napari_histo.metrics import aggregated_jaccard_index, panoptic_quality
from napari_histo.models import (
    available_architectures,
    build_model,
    default_models_dir,
    latest_cards,
    load_model,
    read_card,
)
from napari_histo.nuclei.classical import segment_nuclei, segment_region
from napari_histo.nuclei.evaluate import nuclei_quality
from napari_histo.nuclei.learned import (
    DEFAULT_CARD,
    hv_postprocess,
    hv_targets,
    learned_model,
)
from napari_histo.synthetic import read_truth, write_synthetic_slide
from napari_histo.training.nuclei import (
    HELDOUT_SEEDS,
    TRAIN_SEEDS,
    VALIDATION_SEEDS,
    NucleiRecipe,
    hovernet_loss,
    load_synthetic_nuclei,
    train_nuclei_model,
)

CARD = default_models_dir() / DEFAULT_CARD


def _disk(shape, centre, radius):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


# -- targets --------------------------------------------------------------------------


def test_hv_targets_on_hand_made_instances():
    labels = np.zeros((20, 30), np.uint16)
    labels[2:5, 2:9] = 1  # 3 x 7 rectangle: centroid (3, 5)
    labels[10:19, 10:19][_disk((9, 9), (4, 4), 4)] = 7  # disk, centroid (14, 14)
    labels[0, 29] = 3  # a single pixel
    hv = hv_targets(labels)
    assert hv.shape == (2, 20, 30) and hv.dtype == np.float32
    np.testing.assert_allclose(hv[0, 3, 2:9], [-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1], atol=1e-6)
    np.testing.assert_allclose(hv[1, 2:5, 5], [-1, 0, 1], atol=1e-6)
    assert hv[0, 14, 10] == -1 and hv[0, 14, 18] == 1 and hv[1, 10, 14] == -1
    assert hv[0, 14, 14] == 0 and hv[1, 14, 14] == 0
    assert np.all(hv[:, labels == 0] == 0)
    assert np.all(hv[:, 0, 29] == 0)  # one pixel: its own centroid
    assert np.abs(hv).max() <= 1


def test_hv_targets_off_centre_nucleus_spans_both_signs():
    labels = np.zeros((10, 10), np.int32)
    labels[2:8, 2:4] = 1
    labels[2:4, 4:8] = 1  # an L: centroid off the bounding-box centre
    hv = hv_targets(labels)
    inside = hv[:, labels == 1]
    assert inside.min(axis=1).tolist() == [-1, -1] and inside.max(axis=1).tolist() == [1, 1]


def test_hv_targets_bad_input():
    with pytest.raises(ValueError, match="`labels` must have an integer dtype"):
        hv_targets(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="`labels` must be a 2-D array"):
        hv_targets(np.zeros((4, 4, 2), np.int32))


# -- post-processing -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def heldout_slide(tmp_path_factory):
    """A held-out synthetic slide (seed 5, never used in training) and its labels."""
    made = write_synthetic_slide(
        tmp_path_factory.mktemp("learned") / "s.svs", size=2048, seed=5, workers=1
    )
    return made.path, np.asarray(read_truth(made.truth_path).nuclei[...])


def test_postprocess_of_perfect_maps_is_near_perfect(heldout_slide):
    _, labels = heldout_slide
    truth = labels[:1024, :1024]
    pred = hv_postprocess((truth > 0).astype(np.float32), hv_targets(truth), 0.25)
    aji = aggregated_jaccard_index(truth, pred)
    pq, dq, _ = panoptic_quality(truth, pred)
    assert aji >= 0.95 and pq >= 0.95 and dq >= 0.97
    assert abs(int(pred.max()) - (len(np.unique(truth)) - 1)) <= 3


def test_postprocess_splits_two_touching_disks():
    truth = np.zeros((60, 90), np.int32)
    truth[_disk(truth.shape, (30, 30), 14)] = 1
    truth[_disk(truth.shape, (30, 56), 14) & (truth == 0)] = 2
    fg = (truth > 0).astype(np.float32)
    pred = hv_postprocess(fg, hv_targets(truth), 0.5)
    assert pred.max() == 2 and aggregated_jaccard_index(truth, pred) > 0.95
    # Without the maps (all zero) the same foreground is one nucleus.
    assert hv_postprocess(fg, np.zeros((2, 60, 90), np.float32), 0.5).max() == 1


def test_postprocess_respects_size_limits_and_tissue():
    truth = np.zeros((60, 60), np.int32)
    truth[_disk(truth.shape, (20, 20), 2)] = 1  # ~13 px = 3 µm² at 0.5 µm/px: too small
    truth[_disk(truth.shape, (40, 40), 8)] = 2
    fg = (truth > 0).astype(np.float32)
    pred = hv_postprocess(fg, hv_targets(truth), 0.5)
    assert pred.max() == 1 and pred[40, 40] == 1 and pred[20, 20] == 0
    assert hv_postprocess(fg, hv_targets(truth), 0.5, tissue=np.zeros_like(fg, bool)).max() == 0
    assert hv_postprocess(fg, hv_targets(truth), 0.5, max_area_um2=20).max() == 0


# -- loss and training --------------------------------------------------------------------


def test_loss_is_lower_for_the_truth_and_training_reduces_it(tmp_path):
    labels = np.zeros((2, 64, 64), np.int64)
    labels[0][_disk((64, 64), (30, 30), 9)] = 1
    fg = torch.from_numpy(labels > 0).long()
    hv = torch.from_numpy(np.stack([hv_targets(lab) for lab in labels]))
    logits = (fg[:, None] * 2 - 1).float() * torch.tensor([-20.0, 20.0]).view(1, 2, 1, 1)
    perfect = torch.cat([logits, hv], 1)
    assert hovernet_loss(perfect, fg, hv) < 0.05
    assert hovernet_loss(torch.zeros(2, 4, 64, 64), fg, hv) > 0.5

    slides = load_synthetic_nuclei([TRAIN_SEEDS[0]], 1024, 0.5, tmp_path)
    norm = {"mean": (0.8, 0.8, 0.8), "std": (0.2, 0.2, 0.2)}
    recipe = NucleiRecipe(seed=3, steps=12, batch_size=2, patch_px=64, width=4, depth=2)
    first = train_nuclei_model(recipe, slides, norm)
    again = train_nuclei_model(recipe, slides, norm)
    assert first.steps_done == 12 and first.losses == again.losses  # seed-reproducible
    assert np.mean(first.losses[-4:]) < np.mean(first.losses[:4])
    for a, b in zip(
        first.model.state_dict().values(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_heldout_seeds_are_never_training_or_validation_seeds():
    assert not set(HELDOUT_SEEDS) & (set(TRAIN_SEEDS) | set(VALIDATION_SEEDS))
    with pytest.raises(ValueError, match=r"`train_seeds` must .* avoid the held-out seeds"):
        NucleiRecipe(train_seeds=(HELDOUT_SEEDS[0],))
    card = read_card(CARD)
    for seed in HELDOUT_SEEDS:
        assert f" {seed}," not in card.training_data.split("seeds")[1].split("]")[0] + ","


# -- the bundled model ------------------------------------------------------------------------


def test_bundled_card_is_a_nuclei_model_and_not_an_ensemble_member():
    card = read_card(CARD)
    assert card.task == "nuclei" and card.architecture == "hovernet"
    assert card.classes == ("background", "nucleus") and card.input_mpp == 0.5
    assert "hovernet" not in latest_cards()  # tumour-ensemble members only
    assert latest_cards(task="nuclei") == {"hovernet": CARD}
    assert set(latest_cards(task=None)) >= {"hovernet", "resunet"}
    assert "hovernet" not in available_architectures()
    assert available_architectures("nuclei") == ("hovernet",)
    # Small enough to ship in the wheel (the tumour members may be up to 25 MB each).
    assert CARD.with_suffix(".safetensors").stat().st_size < 8_000_000


def test_bundled_model_loads_and_outputs_four_maps():
    loaded = load_model(CARD)
    with torch.inference_mode():
        out = loaded.model(torch.zeros(1, 3, 64, 96))
    assert out.shape == (1, 4, 64, 96) and torch.isfinite(out).all()


def test_learned_model_is_loaded_once_across_threads():
    found = []
    threads = [threading.Thread(target=lambda: found.append(learned_model())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 4 and all(m is found[0] for m in found)


def test_tampered_weights_are_refused(tmp_path):
    shutil.copy(CARD, tmp_path / CARD.name)
    weights = CARD.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / weights.name).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=rf"{re.escape(weights.name)}: sha256 mismatch"):
        learned_model(tmp_path / CARD.name)
    # A nuclei card pointing at a segmentation architecture is refused by the backend too.
    card = json.loads(CARD.read_text())
    resunet = json.loads((default_models_dir() / "resunet-1.0.json").read_text())
    shutil.copy(default_models_dir() / resunet["weights_file"], tmp_path)
    (tmp_path / "other.json").write_text(json.dumps(resunet | {"name": card["name"]}))
    with pytest.raises(WeightsError, match="not a nuclei model"):
        learned_model(tmp_path / "other.json")


def test_hovernet_needs_multiple_of_eight():
    model = build_model("hovernet").eval()
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(1, 3, 60, 64))


# -- segment_nuclei(method="learned") ---------------------------------------------------------


def test_learned_quality_on_heldout_tiles():
    scores = nuclei_quality("learned", HELDOUT_SEEDS[:2], 6)
    print(f"\nlearned on 6 held-out 512² tiles: {scores}")
    assert scores["aji"] >= 0.70 and scores["pq"] >= 0.65
    assert set(scores) == {"aji", "pq", "dq", "sq"}


def test_learned_blank_and_bad_input():
    white = np.full((200, 300, 3), 245, np.uint8)
    assert segment_nuclei(white, 0.25, "learned").max() == 0
    assert segment_nuclei(white[:1, :1], 0.5, "learned").shape == (1, 1)
    with pytest.raises(ValueError, match="outside what the learned nuclei model supports"):
        segment_nuclei(white, 10.0, "learned")
    with pytest.raises(ValueError, match="outside what the learned nuclei model supports"):
        segment_nuclei(white, 0.01, "learned")
    with pytest.raises(ValueError, match=r"`rgb` must have shape \(H, W, 3\)"):
        segment_nuclei(np.zeros((8, 8, 4), np.uint8), 0.5, "learned")
    with pytest.raises(ValueError, match="`mpp` must be a finite number > 0"):
        segment_nuclei(white, -1.0, "learned")


def test_learned_finds_dark_disks_at_two_resolutions():
    rgb = np.full((160, 200, 3), (235, 170, 205), np.uint8)
    for centre in [(40, 60), (40, 84), (110, 140)]:
        rgb[_disk(rgb.shape[:2], centre, 11)] = (70, 50, 130)
    labels = segment_nuclei(rgb, 0.5, "learned")
    assert labels.dtype == np.uint32 and labels.max() == 3
    assert len({labels[40, 60], labels[40, 84], labels[110, 140]} - {0}) == 3
    # The same scene at twice the magnification (rescaled to the model's 0.5 µm/px).
    fine = segment_nuclei(rgb.repeat(2, axis=0).repeat(2, axis=1), 0.25, "learned")
    assert fine.shape == (320, 400) and fine.max() == 3
    assert len({fine[80, 120], fine[80, 168], fine[220, 280]} - {0}) == 3


def test_the_cards_postprocess_is_used_and_checked():
    import dataclasses

    from napari_histo.nuclei.learned import HVParams, card_params, segment_learned

    rgb = np.full((160, 200, 3), (235, 170, 205), np.uint8)
    for centre in [(40, 60), (40, 84), (110, 140)]:
        rgb[_disk(rgb.shape[:2], centre, 11)] = (70, 50, 130)
    loaded = load_model(CARD)
    plain = dataclasses.replace(loaded, card=dataclasses.replace(loaded.card, postprocess=None))
    assert card_params(plain.card) == HVParams()
    area = (segment_learned(rgb, 0.5, loaded=plain) > 0).sum()
    # A card with a stricter foreground threshold gives smaller nuclei: it is used.
    strict = dataclasses.replace(
        loaded, card=dataclasses.replace(loaded.card, postprocess={"fg_threshold": 0.999})
    )
    assert card_params(strict.card).fg_threshold == 0.999
    assert (segment_learned(rgb, 0.5, loaded=strict) > 0).sum() < area
    # Explicit parameters win over the card's.
    assert (segment_learned(rgb, 0.5, loaded=strict, params=HVParams()) > 0).sum() == area
    wrong = dataclasses.replace(loaded.card, postprocess={"threshold": 0.5})
    with pytest.raises(WeightsError, match=r"hovernet-\S+: `postprocess` does not fit HVParams"):
        card_params(wrong)


def test_learned_region_tiling_matches_one_call(heldout_slide):
    path, truth = heldout_slide
    region = (0, 512, 1536, 1024)
    with Slide(path) as slide:
        whole = segment_region(slide, region, method="learned", tile_px=4096)
        events = []
        tiled = segment_region(
            slide, region, method="learned", tile_px=768, progress=lambda d, t: events.append(t)
        )
    assert events and events[-1] == len(events)  # one pass for the learned backend
    ref = truth[512:1536, 0:1536]
    assert aggregated_jaccard_index(whole, tiled) > 0.98  # the default overlap gives the context
    assert aggregated_jaccard_index(ref, tiled) >= 0.65
