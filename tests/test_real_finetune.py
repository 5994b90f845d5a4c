"""Corrections on real tissue: a slide mosaicked from real lymph-node tiles.

Four real CAMELYON16 tiles (tests/data/real_tumor/tiles, CC0) are placed on
glass in an Aperio slide; their expert masks become QuPath-style GeoJSON
polygons, plus one non-tumor box a careless annotator drew on the glass.
Fine-tuning must skip that box with a warning naming it and raise the Dice on
the slide's held-out part.
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from napari_histo.annotations.from_probability import probability_to_annotations
from napari_histo.annotations.model import Annotation
from napari_histo.io.annotations import read_annotations, write_geojson
from napari_histo.models import default_models_dir, read_card
from napari_histo.training.finetune import FinetuneConfig, finetune_ensemble
from tests.slides import write_aperio_svs

TILES = Path(__file__).parent / "data" / "real_tumor" / "tiles"
NAMES = ("10670", "10672", "10674", "10678")
MPP = 1.2  # estimated from nucleus size (see the PROVENANCE)
GLASS = 96


def _mosaic() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    side = 2 * 512 + 2 * GLASS
    rgb = np.full((side, side, 3), 242, np.uint8)
    tumor = np.zeros((side, side), bool)
    tissue = np.zeros((side, side), bool)
    for i, name in enumerate(NAMES):
        y, x = GLASS + 512 * (i // 2), GLASS + 512 * (i % 2)
        image = imagecodecs.imread(TILES / f"camelyon16_{name}.jpg")
        rgb[y : y + 512, x : x + 512] = image[..., :3]
        mask = imagecodecs.imread(TILES / f"camelyon16_{name}_mask.png")
        tumor[y : y + 512, x : x + 512] = (mask.max(axis=2) if mask.ndim == 3 else mask) >= 128
        tissue[y : y + 512, x : x + 512] = True
    return rgb, tumor, tissue


@pytest.mark.slow
def test_finetune_on_real_tiles_skips_glass_and_raises_dice(tmp_path):
    rgb, tumor, tissue = _mosaic()
    slide = tmp_path / "real_mosaic.svs"
    write_aperio_svs(slide, rgb, levels=1, mpp=MPP)
    polygons = probability_to_annotations(
        tumor.astype(np.float32), 0.5, (0, 0), 1.0, min_area_px=400, label="tumor"
    ) + probability_to_annotations(
        (tissue & ~tumor).astype(np.float32), 0.5, (0, 0), 1.0, min_area_px=400,
        label="non-tumor",
    )  # fmt: skip
    on_glass = Annotation.from_bbox(4, 4, 60, 60, label="non-tumor")
    geojson = tmp_path / "real_mosaic.annotations.geojson"
    write_geojson(geojson, [*polygons, on_glass])
    annotations = read_annotations(geojson).annotations
    assert len(annotations) == len(polygons) + 1

    card = default_models_dir() / "deeplabv3plus-1.0.json"  # synthetic-only: blind on real
    generator = finetune_ensemble(
        [card], slide, annotations, out_dir=tmp_path / "models", steps=60,
        config=FinetuneConfig(train_patches=96, val_patches=8, train_patch_px=64),
    )  # fmt: skip
    with pytest.warns(UserWarning, match=rf"skipping annotation {len(polygons)} \(non-tumor"):
        while True:
            try:
                next(generator)
            except StopIteration as stop:
                written = stop.value
                break
    metrics = read_card(written[0]).metrics
    assert metrics["heldout_dice_after"] > metrics["heldout_dice_before"] + 0.2, metrics
