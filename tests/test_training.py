"""Training: loss, augmentation, patch sampling, loop and the default-ensemble recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_histo.models import ModelCard, build_model, load_model, read_card, save_model
from napari_histo.synthetic import read_truth, write_synthetic_slide
from napari_histo.training import augment_batch, sample_patches, segmentation_loss, train_model
from napari_histo.training.data import mask_patch
from napari_histo.training.losses import IGNORE

NORM = {"mean": [0.77, 0.63, 0.71], "std": [0.17, 0.19, 0.15]}


def test_loss_hand_computed():
    # Perfect, confident prediction: CE ~ 0 and both Dice ~ 1 -> loss ~ 0.
    target = torch.tensor([[[0, 1], [1, 0]]])
    logits = torch.stack([(1 - target) * 20.0, target * 20.0], dim=1).float()
    assert float(segmentation_loss(logits, target)) < 1e-3
    # Uniform prediction: CE = log 2; Dice_c = (2*0.5*2 + 1) / (2 + 2 + 1) = 0.6 for both.
    uniform = torch.zeros(1, 2, 2, 2)
    expected = 0.5 * np.log(2) + 0.25 * 0.4 + 0.25 * 0.4
    assert float(segmentation_loss(uniform, target)) == pytest.approx(expected, rel=1e-5)
    # Ignored pixels do not count.
    ignored = torch.full((1, 2, 2), IGNORE)
    ignored[0, 0, 0] = 0
    wrong = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 20.0)])[None]
    assert float(segmentation_loss(wrong, ignored)) > float(
        segmentation_loss(-wrong, ignored)
    )
    with pytest.raises(ValueError, match="`logits` must be"):
        segmentation_loss(torch.zeros(1, 3, 2, 2), target)


def test_augment_keeps_labels_aligned():
    gen = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 2, (6, 16, 24)).to(torch.uint8)
    images = masks[:, None].float().expand(6, 3, 16, 24).contiguous()
    aug_images, aug_masks = augment_batch(
        images, masks, gen, brightness=0, contrast=0, saturation=0, hue=0, stain=0
    )
    assert torch.equal((aug_images[:, 0] > 0.5).to(torch.uint8), aug_masks)
    jittered, _ = augment_batch(images * 0.5 + 0.25, masks, gen)
    assert 0 <= float(jittered.min()) and float(jittered.max()) <= 1


def test_mask_patch_nearest_and_outside():
    mask = np.arange(16, dtype=np.uint8).reshape(4, 4)
    out = mask_patch(mask, 16, 16, 16, 32, 4)  # level-0 square (16..48)^2, 8 px per patch px
    np.testing.assert_array_equal(out, mask[[1, 1, 2, 2]][:, [1, 1, 2, 2]])
    outside = mask_patch(mask, 16, 60, 60, 32, 4)
    assert outside[-1, -1] == 0


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return write_synthetic_slide(root / "t.svs", 4096, seed=1000, workers=1)


@pytest.mark.parametrize(("side", "size"), [(300, 256), (700, 128), (129, 128), (512, 300)])
def test_area_resize_matches_torch_area_interpolation(side, size):
    # read_patch resizes non-integer ratios in numpy, so the viewer needs no torch.
    from napari_histo.io.patch import area_resize

    image = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    want = torch.nn.functional.interpolate(tensor, size=(size, size), mode="area")
    got = area_resize(image, size)
    assert got.shape == (size, size, 3)
    np.testing.assert_allclose(got, want[0].permute(1, 2, 0).numpy(), atol=1e-4)


def test_sample_patches_balanced(synthetic):
    truth = read_truth(synthetic.truth_path)
    patches = sample_patches(
        synthetic.path, np.asarray(truth.tumor), np.asarray(truth.tissue), truth.downsample,
        count=40, patch_px=64, model_mpp=2.0, seed=3,
    )
    assert patches.images.shape == (40, 64, 64, 3) and patches.masks.shape == (40, 64, 64)
    tumor_share = (patches.masks == 1).mean()
    assert 0.2 < tumor_share < 0.8  # balanced, not the slide's tumor share
    again = sample_patches(
        synthetic.path, np.asarray(truth.tumor), np.asarray(truth.tissue), truth.downsample,
        count=40, patch_px=64, model_mpp=2.0, seed=3,
    )
    np.testing.assert_array_equal(patches.images, again.images)  # reproducible


def test_training_lowers_loss_and_loaded_models_train(synthetic, tmp_path):
    truth = read_truth(synthetic.truth_path)
    patches = sample_patches(
        synthetic.path, np.asarray(truth.tumor), np.asarray(truth.tissue), truth.downsample,
        count=32, patch_px=64, model_mpp=2.0, seed=1,
    )
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", {"width": 4})
    events = []
    generator = train_model(model, patches, steps=40, normalisation=NORM, batch_size=8, lr=3e-3)
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            result = stop.value
            break
    assert result.steps_done == 40 and not result.cancelled
    first = np.mean([e.loss for e in events[:5]])
    last = np.mean([e.loss for e in events[-5:]])
    assert last < first
    # A model as load_model returns it (channels_last) trains too (torch 2.13 crashed).
    card = ModelCard(
        name="m", version="1", architecture="deeplabv3plus", config={"width": 4, "num_classes": 2},
        input_mpp=2.0, patch_px=64, normalisation=NORM, classes=("background", "tumor"),
        training_data="synthetic",
    )
    loaded = load_model(save_model(model, card, tmp_path))
    generator = train_model(loaded.model, patches, steps=2, normalisation=NORM, batch_size=4)
    assert len(list(generator)) == 2


def test_default_recipe_writes_scored_cards(tmp_path):
    from napari_histo.training.default_ensemble import EnsembleRecipe, train_default_ensemble

    recipe = EnsembleRecipe(steps=3, patches_per_slide=8, slide_px=2048, train_patch_px=64)

    def train(out):
        generator = train_default_ensemble(
            out, recipe, work_dir=tmp_path / "work",
            members=(("deeplabv3plus", {"width": 4}),), log=lambda _: None,
        )
        while True:
            try:
                next(generator)
            except StopIteration as stop:
                return stop.value

    (card_path,) = train(tmp_path / "models")
    (again,) = train(tmp_path / "again")  # reproducible from the seed
    assert read_card(again).sha256 == read_card(card_path).sha256
    card = read_card(card_path)
    assert card.name == "deeplabv3plus" and card.input_mpp == 2.0 and card.patch_px == 256
    assert "SYNTHETIC" in card.training_data
    assert 0 <= card.metrics["heldout_dice_tumor"] <= 1
    assert json.loads(card_path.read_text())["sha256"] == card.sha256
    load_model(card_path)  # hash and shapes check out
