"""Real nuclei tiles (MoNuSeg, PanNuke crops in tests/data/real_nuclei): loader, split, model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_histo.models import default_models_dir, read_card
from napari_histo.nuclei.learned import DEFAULT_CARD
from napari_histo.training import real_nuclei as rn

DATA = __import__("pathlib").Path(__file__).parent / "data" / "real_nuclei"


def test_split_is_fixed_disjoint_and_covers_organs():
    held, val = set(rn.HELDOUT_TILES), set(rn.VALIDATION_TILES)
    assert len(held) == 5 and len(val) == 3 and not held & val
    assert len({rn.ORGANS[name] for name in held}) >= 4
    assert all(rn.monuseg_split(name) == "heldout" for name in held)
    assert all(rn.monuseg_split(name) == "validation" for name in val)
    assert rn.monuseg_split("TCGA-A7-A13E-01Z-00-DX1") == "train"


def test_load_monuseg_crops():
    tiles = rn.load_monuseg(DATA)
    assert [t.name for t in tiles] == ["TCGA-E2-A14V-01Z-00-DX1", "TCGA-G2-A2EK-01A-02-TSB"]
    for tile in tiles:
        assert tile.rgb.shape == (256, 256, 3) and tile.rgb.dtype == np.uint8
        assert tile.labels.shape == (256, 256) and np.issubdtype(tile.labels.dtype, np.integer)
        assert tile.mpp == rn.MONUSEG_MPP and tile.source == "monuseg" and tile.exact_instances
        assert len(np.unique(tile.labels)) - 1 >= 50
    assert [t.organ for t in tiles] == ["breast", "bladder"]
    # The same folder given directly; both crops are held out, none trains.
    assert len(rn.load_monuseg(DATA / rn.MONUSEG_DIR, "heldout")) == 2
    assert rn.load_monuseg(DATA, "train") == []
    with pytest.raises(ValueError, match="`split` must be one of"):
        rn.load_monuseg(DATA, "test")
    with pytest.raises(FileNotFoundError, match="monuseg2018_train20"):
        rn.load_monuseg(DATA / "missing")


def test_load_pannuke_crop_as_connected_components():
    (tile,) = rn.load_pannuke(DATA)
    assert tile.mpp == rn.PANNUKE_MPP and not tile.exact_instances
    assert tile.rgb.shape == (256, 256, 3) and tile.labels.max() >= 5


def test_hed_jitter_keeps_glass_white_and_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 0.6 + 0.2
    x[..., :4, :] = 1.0
    out = rn.hed_jitter(x, g)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out[..., :4, :], x[..., :4, :], atol=1e-3)
    assert not torch.allclose(out, x)


def test_training_steps_run_on_real_crops():
    tiles = [(t.rgb, t.labels, t.mpp) for t in rn.load_monuseg(DATA)]
    recipe = rn.RealNucleiRecipe(steps=3, batch_size=2, patch_px=64, width=4, synthetic_per_batch=0)
    model, steps, _, losses = rn._train(
        recipe, tiles, [], rn._normalisation(tiles), minutes=None, stop_after=None,
        progress=None, init=None,
    )  # fmt: skip
    assert steps == 3 and all(np.isfinite(losses)) and not model.training


def test_default_nuclei_model_is_real_trained_with_licence():
    card = read_card(default_models_dir() / DEFAULT_CARD)
    assert card.version == "2.2" and card.task == "nuclei"
    assert "MoNuSeg" in card.training_data and "CC BY-NC-SA 4.0" in card.training_data
    assert "non-commercial" in card.training_data
    assert {"heldout_real_aji", "heldout_real_pq", "heldout_synthetic_aji"} <= set(card.metrics)
    assert (default_models_dir() / "hovernet-1.0.json").is_file()  # v1 stays
    assert card.metrics["heldout_real_aji"] >= 0.55 and card.metrics["heldout_real_pq"] >= 0.53


def test_default_nuclei_model_on_heldout_real_crops():
    learned = rn.real_nuclei_quality(DATA, method="learned", per_tile=True)
    classical = rn.real_nuclei_quality(DATA, method="classical")
    print(f"\nheld-out real crops: learned {learned}, classical {classical}")
    assert learned["n_tiles"] == 2
    assert learned["aji"] >= 0.50 and learned["pq"] >= 0.45
    assert classical["aji"] >= 0.35


def test_gpu_recipe_batch_depends_only_on_seed_and_index(load_script):
    # The GPU recipe's DataLoader workers may draw batches in any order.
    script = load_script("gpu_train_nuclei")
    tiles = [(t.rgb, t.labels, t.mpp) for t in rn.load_monuseg(DATA)]
    recipe = rn.RealNucleiRecipe(steps=10, batch_size=2, patch_px=64, synthetic_per_batch=1)
    first = script._Batches(recipe, tiles, tiles[:1])
    later = script._Batches(recipe, tiles, tiles[:1])
    later[5]
    for a, b in zip(first[3], later[3], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[3][0], first[4][0])
    x, foreground, hv = first[0]
    assert x.shape == (2, 3, 64, 64) and foreground.shape == (2, 64, 64)
    assert hv.shape == (2, 2, 64, 64)


def test_gpu_recipe_trains_and_saves_a_card(tmp_path, load_script):
    script = load_script("gpu_train_nuclei")
    cache = tmp_path / "cache"
    cache.mkdir()
    # A cache as `pack` writes it, from the two test crops (one as "synthetic").
    from PIL import Image

    index, labels = [], {}
    for i, tile in enumerate(rn.load_monuseg(DATA)):
        name = f"synthetic-{i}" if i else tile.name
        Image.fromarray(tile.rgb).save(cache / f"{name}.webp", lossless=True)
        labels[name] = tile.labels.astype(np.int32)
        index.append({"name": name, "mpp": tile.mpp, "synthetic": bool(i)})
    np.savez_compressed(cache / "labels.npz", **labels)
    (cache / "tiles.json").write_text(__import__("json").dumps(index))
    script.main([
        "train", str(cache), str(tmp_path / "out"), "--version", "0.0test", "--width", "4",
        "--depth", "3", "--patch", "64", "--batch", "2", "--steps", "3", "--workers", "0",
        "--device", "cpu",
    ])  # fmt: skip
    card = read_card(tmp_path / "out" / "hovernet-0.0test.json")
    assert card.config["width"] == 4 and "3 steps" in card.notes


def test_the_card_says_synthetic_only_start_only_for_hovernet_1():
    norm = {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    texts = {
        init: rn.real_nuclei_card(rn.RealNucleiRecipe(init_card=init), norm).training_data
        for init in (None, "hovernet-1.0.json", "hovernet-2.1.json")
    }
    assert "Initialised" not in texts[None]
    assert "hovernet-1.0.json (synthetic slides only)." in texts["hovernet-1.0.json"]
    assert "hovernet-2.1.json." in texts["hovernet-2.1.json"]
    assert "synthetic slides only" not in texts["hovernet-2.1.json"]
