"""The real-data tumor recipe: warm starts from a bundled version, bf16 steps."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_histo.errors import WeightsError
from napari_histo.models import load_model
from napari_histo.paths import default_models_dir
from napari_histo.training import real_ensemble as re


def _tiny_pool(rng) -> re._Pool:
    images = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(3)]
    masks = [(rng.random((96, 96)) > 0.5).astype(np.int64) for _ in range(3)]
    return re._Pool("tiny", 1.0, images, masks, [-1, -1, -1])


def test_warm_start_loads_the_bundled_member_and_trains_in_bf16(rng):
    recipe = re.RealRecipe(
        init_version="2.0", bf16=True, steps=2, batch_size=2, train_patch_px=64,
        restart_steps=0,
    )  # fmt: skip
    loaded = re._init_member(recipe, 0)
    bundled = load_model(default_models_dir() / "resunet-2.0.json")
    start = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    for key, value in bundled.model.state_dict().items():
        assert torch.equal(start[key], value)
    batches = re._Batches([_tiny_pool(rng)], recipe, seed=0, strength=1.0)
    steps = re._train_member(loaded.model, batches, recipe, loaded.card.normalisation, None)
    progress = list(steps)
    assert [p.step for p in progress] == [1, 2] and all(np.isfinite(p.loss) for p in progress)
    after = loaded.model.state_dict()
    assert any(not torch.equal(after[k], start[k]) for k in start if after[k].is_floating_point())


def test_warm_start_refuses_a_member_of_another_shape():
    recipe = re.RealRecipe(init_version="2.0")
    other = replace(recipe, members=(("resunet", {"width": 16, "depth": 4}),))
    with pytest.raises(ValueError, match="config"):
        re._init_member(other, 0)
    with pytest.raises(WeightsError, match="no such model card"):
        re._init_member(replace(recipe, init_version="9.9"), 0)


def _photo_pool(rng, name: str, labels: list[int]) -> re._Pool:
    # Blocks with grain: lossless WebP keeps the grain, lossy q92 drops most of it.
    images = []
    for _ in labels:
        base = np.kron(rng.integers(60, 220, (6, 6, 3)), np.ones((16, 16, 1), int))
        images.append((base + rng.integers(-6, 7, base.shape)).astype(np.uint8))
    masks = [(rng.random((96, 96)) > 0.5).astype(np.uint8) for _ in labels]
    return re._Pool(name, 0.5, images, masks, labels)


def test_gpu_tumor_cache_round_trip_and_lossy_fallback(tmp_path, rng, load_script):
    script = load_script("gpu_train_tumor")
    pools = [_photo_pool(rng, "camelyon16", [-1, -1]), _photo_pool(rng, "synthetic", [-1, -1])]
    norm = {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    script.write_cache(pools, norm, tmp_path / "exact", max_mb=10)
    loaded, loaded_norm = script.load_pools(tmp_path / "exact")
    assert loaded_norm == norm and [p.name for p in loaded] == ["camelyon16", "synthetic"]
    for pool, back in zip(pools, loaded, strict=True):
        assert back.weight == pool.weight and back.tile_labels == pool.tile_labels
        for a, b in zip(pool.images, back.images, strict=True):
            assert np.array_equal(a, b)
        for a, b in zip(pool.masks, back.masks, strict=True):
            assert np.array_equal(a, b)
    # Too small for lossless: the synthetic pool goes lossy, the expert tiles stay exact.
    exact_mb = sum(p.stat().st_size for p in (tmp_path / "exact").glob("*.webp")) / 1e6
    script.write_cache(pools, norm, tmp_path / "small", max_mb=exact_mb * 0.9)
    meta = __import__("json").loads((tmp_path / "small" / "pools.json").read_text())
    assert [p["webp_quality"] for p in meta["pools"]] == [None, 90]
    small, _ = script.load_pools(tmp_path / "small")
    assert np.array_equal(small[0].images[0], pools[0].images[0])
    assert np.abs(small[1].images[0].astype(int) - pools[1].images[0]).mean() < 6
    with pytest.raises(SystemExit, match="even at WebP quality 65-80"):
        script.write_cache(pools, norm, tmp_path / "none", max_mb=1e-4)


def test_gpu_tumor_batch_depends_only_on_seed_member_and_index(rng, load_script):
    script = load_script("gpu_train_tumor")
    pools = [_photo_pool(rng, "camelyon16", [-1, -1, -1]), _photo_pool(rng, "oral", [1, 0, 1])]
    recipe = script.gpu_recipe(steps=10, batch_size=3, train_patch_px=64)
    norm = {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    first = script._Batches(pools, recipe, 1, norm)
    later = script._Batches(pools, recipe, 1, norm)
    later[5]
    for a, b in zip(first[3], later[3], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[3][0], first[4][0])
    assert not torch.equal(first[3][0], script._Batches(pools, recipe, 2, norm)[3][0])
    x, y, labels = first[0]
    assert x.shape == (3, 3, 64, 64) and y.shape == (3, 64, 64) and labels.shape == (3,)
    assert x.dtype == torch.uint8  # crops as drawn, a quarter of float's shared memory
    # The augmentation (on the training device) depends only on the index too.
    a = first.augment(7, x.clone(), y.clone())
    b = later.augment(7, x.clone(), y.clone())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], first.augment(8, x.clone(), y.clone())[0])


def test_pil_jpeg_artefacts_matches_the_recipe_s_jpeg(rng, load_script):
    # The GPU machine's stand-in for imagecodecs: libjpeg at the same quality.
    from napari_histo.training.augment import jpeg_artefacts

    script = load_script("gpu_train_tumor")
    rgb = _photo_pool(rng, "p", [-1]).images[0]
    ours = script.pil_jpeg_artefacts(rgb, np.random.default_rng(1), (40, 40))
    theirs = jpeg_artefacts(rgb, np.random.default_rng(1), (40, 40))
    assert ours.shape == rgb.shape and ours.dtype == np.uint8
    assert not np.array_equal(ours, rgb)
    assert np.abs(ours.astype(int) - theirs).mean() < 3


def test_gpu_tumor_recipe_trains_a_member_and_saves_its_card(tmp_path, rng, load_script):
    script = load_script("gpu_train_tumor")
    pools = [_photo_pool(rng, "camelyon16", [-1, -1]), _photo_pool(rng, "oral", [1, 0])]
    script.write_cache(pools, {"mean": [0.5] * 3, "std": [0.2] * 3}, tmp_path / "c", 10)
    script.main(
        ["train", str(tmp_path / "c"), str(tmp_path / "out"), "--member", "0", "--width", "4",
         "--patch", "64", "--batch", "2", "--steps", "2", "--workers", "0", "--device", "cpu"]
    )  # fmt: skip
    loaded = load_model(tmp_path / "out" / "resunet-3.0.json")
    assert loaded.card.config == {"width": 4, "depth": 4, "num_classes": 2}
    assert loaded.card.input_mpp == 1.0 and loaded.card.classes == ("background", "tumor")
    assert "2 steps" in loaded.card.notes and "licence" in loaded.card.training_data
    out = loaded.model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 2, 64, 64) and torch.isfinite(out).all()
    # The recipe's own JPEG artefacts are back once training is over.
    from napari_histo.training.augment import jpeg_artefacts

    assert re.jpeg_artefacts is jpeg_artefacts
    # Scoring wants every member (one crashed on the device: say so, score nothing).
    with pytest.raises(SystemExit, match="no card of deeplabv3plus, denseunet"):
        script.score(str(tmp_path / "out"), "unused", to=str(tmp_path / "scored"))
    assert 0 < script.cache_budget_mb() < 64 * 2**20 / 1e6


def test_a_label_table_without_its_column_is_one_error_naming_it(tmp_path):
    from napari_histo.training.realdata import _csv_map

    table = tmp_path / "grades.csv"
    table.write_text("name,grade\ntrain_1,malignant\n")
    with pytest.raises(ValueError, match=r"grades\.csv: needs the columns 'name' and 'grade_glas'"):
        _csv_map(table, "name", "grade_glas")
    table.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ValueError, match=r"grades\.csv: not a readable CSV table"):
        _csv_map(table, "name", "grade_glas")
    table.write_text("name,grade_glas\ntrain_1, malignant \n")
    assert _csv_map(table, "name", "grade_glas") == {"train_1": "malignant"}
