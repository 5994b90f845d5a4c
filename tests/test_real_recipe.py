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
