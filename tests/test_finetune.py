"""Retrain from corrections: labels from annotations, spatial split, fine-tuning, versions."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_histo.annotations.model import Annotation
from napari_histo.errors import HistoError
from napari_histo.models import build_model, latest_cards, load_model, read_card
from napari_histo.training.annotations import (
    labels_from_annotations,
    plan_split,
    sample_annotation_patches,
    sample_label_patches,
    slide_labels,
    spatial_split,
)
from napari_histo.training.finetune import (
    ENCODER_PREFIXES,
    FinetuneConfig,
    annotation_dice,
    finetune_ensemble,
    next_version,
    set_encoder_trainable,
)
from napari_histo.training.losses import IGNORE

SMALL = FinetuneConfig(train_patches=16, val_patches=4, train_patch_px=64)


def _l_shape() -> Annotation:
    # An L: 40 x 10 bar plus a 10 x 30 bar below its left end (area 700 px).
    coords = [(10, 10), (50, 10), (50, 20), (20, 20), (20, 50), (10, 50)]
    return Annotation(kind="polygon", coords=coords, label="tumor", granularity="pixel")


def test_labels_at_each_granularity_on_known_shapes():
    anns = [
        Annotation.from_bbox(0, 0, 64, 64, label="non-tumor"),
        _l_shape(),
        Annotation.from_bbox(56, 56, 64, 64, label="ignore"),
    ]
    pixel = labels_from_annotations(anns, (80, 64), 1.0, "pixel")
    assert pixel.shape == (64, 80) and pixel.dtype == np.uint8
    assert (pixel == 1).sum() == 700  # the L as drawn
    assert (pixel[:, 64:] == IGNORE).all()  # unlabelled -> ignored
    assert (pixel[56:, 56:64] == IGNORE).all()  # ignore class -> ignored
    assert set(np.unique(pixel)) == {0, 1, IGNORE}
    np.testing.assert_array_equal(pixel, labels_from_annotations(anns, (80, 64), 1.0))
    bbox = labels_from_annotations(anns, (80, 64), 1.0, "bbox")
    assert (bbox == 1).sum() == 40 * 40 and (bbox[10:50, 10:50] == 1).all()
    ellipse = labels_from_annotations(anns, (80, 64), 1.0, "ellipse")
    assert 700 < (ellipse == 1).sum() < 40 * 40 and ellipse[15, 15] == 1
    assert ellipse[48, 48] != 1  # the L's empty corner stays out of the ellipse
    # Coarser output resolution: same regions, fewer pixels.
    coarse = labels_from_annotations(anns, (80, 64), 2.0, "pixel")
    assert coarse.shape == (32, 40) and (coarse == 1).sum() == pytest.approx(175, abs=10)


@pytest.mark.parametrize(
    ("annotations", "match"),
    [
        ([], "no annotations"),
        ([Annotation(kind="point", coords=[(5, 5)])], "no annotations"),
        ([Annotation.from_bbox(100, 100, 200, 200, label="tumor")], "outside the slide"),
        ([Annotation.from_bbox(1, 1, 9, 9, label="stroma")], "class 'stroma'"),
    ],
)
def test_labels_bad_input(annotations, match):
    with pytest.raises(HistoError, match=match):
        labels_from_annotations(annotations, (64, 64), 1.0)


def test_labels_bad_granularity():
    with pytest.raises(ValueError, match="`granularity`"):
        labels_from_annotations([_l_shape()], (64, 64), 1.0, "blob")


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """A 2048 px synthetic slide and pixel annotations of its truth."""
    from napari_histo.bench.train import TARGET_SEED, _slide, truth_annotations

    slide = _slide(tmp_path_factory.mktemp("ft"), TARGET_SEED, 2048)
    return slide, truth_annotations(slide)


def test_slide_bad_input(target):
    slide, anns = target
    tumor_only = [a for a in anns if a.label == "tumor"]
    with pytest.raises(HistoError, match="both tumor and non-tumor"):
        slide_labels(slide, tumor_only, model_mpp=2.0)
    glass = Annotation.from_bbox(0, 0, 60, 60, label="tumor")  # the slide's corner is glass
    with pytest.raises(HistoError, match="all 1 annotations lie outside tissue"):
        slide_labels(slide, [glass], model_mpp=2.0)
    with pytest.raises(HistoError, match="outside the slide"):
        sample_annotation_patches(
            slide, [*anns, Annotation.from_bbox(5000, 10, 5100, 90)], patch_px=64, model_mpp=2.0,
            count=4, seed=0,
        )  # fmt: skip


def test_annotations_on_glass_are_skipped_with_a_warning(target):
    slide, anns = target
    glass = Annotation.from_bbox(0, 0, 60, 60, label="non-tumor")  # the slide's corner is glass
    with pytest.warns(UserWarning, match=rf"skipping annotation {len(anns)} \(non-tumor.*outside"):
        labels, _ = slide_labels(slide, [*anns, glass], model_mpp=2.0)
    expected, _ = slide_labels(slide, anns, model_mpp=2.0)
    np.testing.assert_array_equal(labels, expected)


def test_spatial_split_is_spatial_and_deterministic(target):
    slide, anns = target
    labels, ds = slide_labels(slide, anns, model_mpp=2.0)
    split = plan_split(labels, ds, seed=3)
    assert split == plan_split(labels, ds, seed=3)
    band = split.band_mask(labels.shape, ds)
    held = np.where(band, labels, IGNORE)
    train_labels = np.where(band, IGNORE, labels)
    for part in (held, train_labels):  # both classes on both sides
        assert (part == 0).any() and (part == 1).any()
    labelled = labels != IGNORE
    assert 0.1 < (band & labelled).sum() / labelled.sum() < 0.5
    patches = sample_label_patches(
        slide, train_labels, ds, patch_px=64, model_mpp=2.0, count=40, seed=1, avoid=split
    )
    size_l0 = 64 * ds
    assert not any(split.overlaps(tuple(o), size_l0) for o in patches.origins_l0)
    again = sample_label_patches(
        slide, train_labels, ds, patch_px=64, model_mpp=2.0, count=40, seed=1, avoid=split
    )
    np.testing.assert_array_equal(patches.images, again.images)
    assert 0.2 < (patches.masks == 1).sum() / (patches.masks != IGNORE).sum() < 0.8  # balanced
    # Points and annotations: one band, same answer every time, nothing in both parts.
    points = np.random.default_rng(0).uniform(0, 2048, (100, 2))
    train_i, held_i = spatial_split(points, (2048, 2048), seed=5)
    assert (train_i, held_i) == spatial_split(points, (2048, 2048), seed=5)
    assert not set(train_i) & set(held_i) and 15 <= len(held_i) <= 35
    axis = int(np.argmax([np.ptp(points[held_i, k]) < 2000 for k in (0, 1)]))
    lo, hi = points[held_i, axis].min(), points[held_i, axis].max()
    inside = (points[train_i, axis] >= lo) & (points[train_i, axis] <= hi)
    assert not inside.any()  # held-out points form a band no training point enters
    train_a, held_a = spatial_split(anns, (2048, 2048))
    assert len(train_a) + len(held_a) == len(anns) and held_a


def test_encoder_prefixes_match_architectures():
    for architecture, _ in ENCODER_PREFIXES.items():
        model = build_model(architecture, {"width": 4})
        total = len(list(model.parameters()))
        frozen = set_encoder_trainable(model, architecture, False)
        assert 0 < frozen < total
        assert sum(not p.requires_grad for p in model.parameters()) == frozen
    assert next_version("1.0", {"1.1", "1.2"}) == "1.3"


def _weak_card(slide, out, steps=5):
    from napari_histo.bench.train import weak_model

    return weak_model(slide, out, steps=steps, width=4)


def _run(generator):
    events = []
    while True:
        try:
            events.append(next(generator))
        except StopIteration as stop:
            return events, stop.value


def test_finetune_writes_new_versions_and_cancel_writes_nothing(target, tmp_path, monkeypatch):
    from napari_histo.training import finetune as finetune_module
    from napari_histo.training.trainer import trains_in_bfloat16

    amps = []  # FinetuneConfig.amp reaches the trainer
    real_train_model = finetune_module.train_model

    def recording(*args, **kwargs):
        amps.append(kwargs.get("amp"))
        return real_train_model(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "train_model", recording)
    slide, anns = target
    card_path = _weak_card(slide, tmp_path)
    before_bytes = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    events, cards = _run(
        finetune_ensemble(
            [card_path], slide, anns, out_dir=tmp_path, steps=6, freeze_encoder_steps=3,
            config=SMALL,
        )
    )  # fmt: skip
    assert [e[1].step for e in events] == list(range(1, 7)) and events[0][0] == "weak"
    assert len(cards) == 1 and cards[0].name == "weak-1.1.json"
    card = read_card(cards[0])
    assert card.version == "1.1" and card.parent_version == "1.0"
    assert {"heldout_dice_before", "heldout_dice_after"} <= set(card.metrics)
    assert "fine-tuned on" in card.training_data and "granularity" in card.training_data
    assert amps and set(amps) == {SMALL.amp} == {True}
    precision = "bfloat16" if trains_in_bfloat16("cpu", True) else "float32"
    assert f"(forwards in {precision})" in card.notes
    assert load_model(cards[0]).card.version == "1.1"
    for name, data in before_bytes.items():  # parent untouched
        assert (tmp_path / name).read_bytes() == data
    # annotation_dice scores the same held-out band as the run did.
    assert annotation_dice([card_path], slide, anns, tile_px=128) == pytest.approx(
        card.metrics["heldout_dice_before"], abs=1e-4
    )
    # Cancel mid-run: nothing new on disk, the latest version stays 1.1.
    files = sorted(p.name for p in tmp_path.iterdir())
    cancel = threading.Event()
    generator = finetune_ensemble(
        [card_path], slide, anns, out_dir=tmp_path, steps=50, cancel=cancel, config=SMALL
    )
    next(generator)
    cancel.set()
    _, cancelled = _run(generator)
    assert cancelled == [] and sorted(p.name for p in tmp_path.iterdir()) == files
    assert latest_cards(tmp_path)["weak"].name == "weak-1.1.json"
    # Fine-tuning the parent again never overwrites 1.1.
    _, again = _run(
        finetune_ensemble([card_path], slide, anns, out_dir=tmp_path, steps=2, config=SMALL)
    )
    assert again[0].name == "weak-1.2.json" and read_card(again[0]).parent_version == "1.0"


def test_held_out_stripes_sample_the_whole_slide(target):
    """Issue #8: one band at a slide side held out a tissue found only there.

    On 8192² px synthetic slides the top band held every dense lymphoid aggregate
    (12,261 label px vs 35 in the training part): never trained on, they became
    false tumor and held-out Dice fell 0.918 -> 0.803. Where the labels span
    enough patches, the held-out part is stripes, so a tissue confined to any
    side of the slide lands in both parts for every seed.
    """
    labels = np.full((256, 256), IGNORE, np.uint8)
    labels[:, :128] = 1
    labels[:, 128:] = 0
    for seed in range(8):
        split = plan_split(labels, 8.0, seed=seed, patch_px=16)  # stripes every 48 px
        assert split.period_l0 == 3 * 16 * 8.0
        band = np.asarray(split.band_mask(labels.shape, 8.0))
        assert 0.2 < band.mean() < 0.3
        for side in (band[:64], band[-64:], band[:, :64], band[:, -64:]):  # every side
            assert side.any() and not side.all()
    # Small label extents keep one band at a side (4096² px slides: unchanged).
    assert plan_split(labels, 8.0, seed=0, patch_px=64).period_l0 == 0
    # Training patches never meet a stripe; each is moved to the nearest gap.
    slide, anns = target
    labels, ds = slide_labels(slide, anns, model_mpp=2.0)
    split = plan_split(labels, ds, seed=1, patch_px=16)
    assert split.period_l0 > 0 and "+ k *" in split.describe()
    band = np.asarray(split.band_mask(labels.shape, ds))
    train_labels = np.where(band, IGNORE, labels)
    patches = sample_label_patches(
        slide, train_labels, ds, patch_px=16, model_mpp=2.0, count=60, seed=2, avoid=split
    )
    assert not any(split.overlaps(tuple(o), 16 * ds) for o in patches.origins_l0)
    for x, y in patches.origins_l0:  # no held-out label pixel under any patch
        r0, c0 = int(y // ds), int(x // ds)
        assert not band[r0 : r0 + 16, c0 : c0 + 16].any()


def test_finetune_bad_input(target, tmp_path):
    slide, anns = target
    card_path = _weak_card(slide, tmp_path, steps=1)
    for bad, match in (([], "no annotations"), (anns[:1], "both tumor and non-tumor")):
        with pytest.raises(HistoError, match=match):
            next(finetune_ensemble([card_path], slide, bad, out_dir=tmp_path, steps=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weak-1.0.json", "weak-1.0.safetensors"]


def test_it_helps_small(tmp_path):
    from napari_histo.bench.train import it_helps

    result = it_helps(tmp_path, slide_px=4096, weak_steps=60, finetune_steps=100)
    print(f"it helps (small): {result}")
    assert result["dice_gain"] >= 0.05, result


def test_granularity_labels_and_patches(target):
    from napari_histo.synthetic import read_truth, truth_path_for
    from napari_histo.training.granularity import _label_dice, _patches, granularity_labels

    slide, _ = target
    truth = read_truth(truth_path_for(slide))
    labels = granularity_labels(truth.tumor, truth.tissue, truth.downsample, (2048, 2048), 8.0)
    assert labels["truth"].shape == (256, 256)
    quality = {g: _label_dice(labels[g], labels["truth"]) for g in ("pixel", "ellipse", "bbox")}
    assert quality["pixel"] == 1.0 > quality["ellipse"] > quality["bbox"], quality
    # bbox labels only add tumor (never drop it); unlabelled stays ignored
    assert ((labels["truth"] == 1) <= (labels["bbox"] == 1)).all()
    split = plan_split(labels["truth"], 8.0, seed=0)
    band = np.asarray(split.band_mask(labels["truth"].shape, 8.0))
    image = np.zeros((256, 256, 3), np.uint8)
    patches = _patches(image, labels["bbox"], band, count=20, patch_px=32, seed=0, model_mpp=2.0)
    for c0, r0 in patches.origins_l0:
        assert not band[r0 : r0 + 32, c0 : c0 + 32].any()
    assert 0.3 < (patches.masks == 1).sum() / (patches.masks != IGNORE).sum() < 0.9


def test_versions_active_choice_persists(tmp_path, monkeypatch):
    import dataclasses

    from napari_histo.models import ModelCard, default_models_dir, save_model
    from napari_histo.models.versions import (
        active_cards,
        all_versions,
        set_active_version,
        versions_path,
    )
    from napari_histo.training.retrain import estimate_steps, parent_card, resolve_cards

    monkeypatch.setenv("NAPARI_HISTO_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("NAPARI_HISTO_CONFIG", str(tmp_path / "config"))
    shipped = sorted(p.name for p in default_models_dir().iterdir())
    card = ModelCard(
        name="tiny", version="1.0", architecture="resunet", config={"width": 4, "depth": 2},
        input_mpp=2.0, patch_px=64, normalisation={"mean": [0.5] * 3, "std": [0.2] * 3},
        classes=("background", "tumor"), training_data="none (test)",
    )  # fmt: skip
    model = build_model("resunet", {"width": 4, "depth": 2})
    for version, parent in (("1.0", None), ("1.2", "1.0"), ("1.10", "1.2")):
        save_model(model, dataclasses.replace(card, version=version, parent_version=parent),
                   tmp_path / "models")  # fmt: skip
    assert [v.version for v in all_versions()["tiny"]] == ["1.0", "1.2", "1.10"]
    assert "hovernet" not in active_cards()  # only tumour-ensemble members
    assert active_cards()["tiny"].name == "tiny-1.10.json"  # newest unless chosen
    set_active_version("tiny", "1.2")
    assert active_cards()["tiny"].name == "tiny-1.2.json" and versions_path().is_file()
    assert resolve_cards(["tiny"])[0].name == "tiny-1.2.json"
    assert parent_card(active_cards()["tiny"]).name == "tiny-1.0.json"
    with pytest.raises(ValueError, match=r"no version '9\.9' of model 'tiny'"):
        set_active_version("tiny", "9.9")
    with pytest.raises(ValueError, match="--members: no model 'nope'"):
        resolve_cards(["nope"])
    set_active_version("tiny", None)
    assert active_cards()["tiny"].name == "tiny-1.10.json"
    assert estimate_steps([active_cards()["tiny"]], 5.0, SMALL) >= 1
    assert sorted(p.name for p in default_models_dir().iterdir()) == shipped


@pytest.mark.parametrize(("amp", "forced"), [(True, False), (False, False), (True, True)])
def test_training_forwards_run_in_bfloat16_where_the_cpu_has_it(amp, forced, monkeypatch):
    # Fine-tuning's forwards autocast to bfloat16 on such a CPU (FinetuneConfig.amp,
    # the default); weights stay float32, and the loss falls either way. `forced`:
    # bfloat16 on (emulated where the CPU lacks it) so every machine checks the path.
    import torch

    from napari_histo.inference import plan as plan_module
    from napari_histo.inference.plan import cpu_has_native_bfloat16
    from napari_histo.training.data import PatchSet

    if forced:
        monkeypatch.setattr(plan_module, "cpu_has_native_bfloat16", lambda: True)
    from napari_histo.training.settings import FinetuneConfig
    from napari_histo.training.trainer import train_model

    assert FinetuneConfig().amp
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            if self.training:
                seen.append(torch.is_autocast_enabled("cpu"))
            return self.model(x)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    masks = (images[..., 0] > 127).astype(np.uint8)  # learnable from the red channel
    patches = PatchSet(images=images, masks=masks, origins_l0=np.zeros((8, 2), int),
                       model_mpp=2.0)  # fmt: skip
    torch.manual_seed(0)
    model = Probe(build_model("resunet", {"width": 4, "depth": 2}))
    trainer = train_model(model, patches, steps=30, normalisation={
        "mean": [0.5] * 3, "std": [0.25] * 3}, batch_size=4, lr=3e-3, amp=amp)  # fmt: skip
    losses = [event.loss for event in trainer]
    native = forced or cpu_has_native_bfloat16()
    assert len(seen) == 30 and set(seen) == {amp and native}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
