"""Stain normalisation (Macenko, Reinhard) on real H&E crops, as a card field and in inference."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from napari_histo import stain
from napari_histo.errors import WeightsError
from napari_histo.models import ModelCard, default_models_dir, latest_cards, load_model, read_card
from napari_histo.stain import (
    MACENKO_REFERENCE,
    REINHARD_REFERENCE,
    MacenkoStains,
    ReinhardStats,
    StainError,
    StainNormaliser,
    StainWarning,
    fit_macenko,
    fit_reinhard,
    normalise,
)

REAL = Path(__file__).parent / "data" / "real_tumor"


def tile(name: str) -> np.ndarray:
    return imagecodecs.imread(REAL / "images" / f"{name}.jpg")


@pytest.fixture(scope="module")
def lymph() -> np.ndarray:
    """CAMELYON16 lymph-node crop: strongly purple."""
    return tile("camelyon16_10670")


@pytest.fixture(scope="module")
def breast() -> np.ndarray:
    """BCSS breast crop: another lab, another stain."""
    return tile("bcss_1008")


def glass(seed: int = 0, shape=(128, 128)) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 10, (*shape, 3))
    return (238 + noise).astype(np.uint8)


def angle_deg(a: MacenkoStains, b: MacenkoStains) -> float:
    """Largest angle between corresponding stain vectors, degrees."""
    cos = [np.dot(u, v) for u, v in zip(a.stain_matrix, b.stain_matrix, strict=True)]
    return float(np.degrees(np.arccos(np.clip(min(cos), -1, 1))))


def macenko_distance(a: MacenkoStains, b: MacenkoStains) -> float:
    conc = np.abs(np.log(np.divide(a.max_concentrations, b.max_concentrations))).max()
    return angle_deg(a, b) + 10 * float(conc)


def reinhard_distance(a: ReinhardStats, b: ReinhardStats) -> float:
    return float(
        np.abs(np.subtract(a.mean, b.mean)).sum() + np.abs(np.subtract(a.std, b.std)).sum()
    )


def test_fits_on_real_tiles_are_h_and_e(lymph, breast):
    for rgb in (lymph, breast):
        s = fit_macenko(rgb)
        h, e = np.asarray(s.stain_matrix)
        assert np.allclose(np.linalg.norm([h, e], axis=1), 1, atol=1e-6)
        assert (h > 0).all() and (e > 0).all()
        assert h[0] > e[0]  # haematoxylin absorbs more red than eosin
        assert all(c > 0.1 for c in s.max_concentrations)
        r = fit_reinhard(rgb)
        assert 20 < r.mean[0] < 90 and all(v > 0 for v in r.std)
    # The two labs' stains differ measurably (what the normalisation has to remove).
    assert macenko_distance(fit_macenko(lymph), fit_macenko(breast)) > 5


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalising_towards_another_tile_brings_its_statistics(lymph, breast, method):
    source, target = stain.fit(lymph, method), stain.fit(breast, method)
    out = stain.apply(lymph, source, target)
    assert out.dtype == np.uint8 and out.shape == lymph.shape
    after = stain.fit(out, method)
    distance = macenko_distance if method == "macenko" else reinhard_distance
    before_d, after_d = distance(source, target), distance(after, target)
    assert after_d < 0.5 * before_d, (before_d, after_d)
    if method == "macenko":
        assert angle_deg(after, target) < 0.4 * angle_deg(source, target)
    # The tissue stays where it was: structure (luminance ranks) is kept.
    grey_in, grey_out = lymph.mean(-1).ravel(), out.astype(float).mean(-1).ravel()
    assert np.corrcoef(grey_in, grey_out)[0, 1] > 0.8


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalise_to_reference_is_nearly_idempotent(lymph, breast, method):
    reference = MACENKO_REFERENCE if method == "macenko" else REINHARD_REFERENCE
    distance = macenko_distance if method == "macenko" else reinhard_distance
    for rgb in (lymph, breast):
        once = normalise(rgb, method)
        twice = normalise(once, method)
        assert np.abs(once.astype(int) - twice.astype(int)).mean() < 3.0
        fitted = stain.fit(once, method)
        # Far from the reference before, near it after (measured: 20-26 -> 1-2.3, Macenko).
        assert distance(fitted, reference) < 0.25 * distance(stain.fit(rgb, method), reference)
        if method == "macenko":
            assert angle_deg(fitted, reference) < 6
    # Two labs' tiles end closer together than they started.
    a, b = normalise(lymph, method), normalise(breast, method)
    before = distance(stain.fit(lymph, method), stain.fit(breast, method))
    assert distance(stain.fit(a, method), stain.fit(b, method)) < 0.8 * before


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_background_only_tile_is_returned_unchanged_with_a_reason(method):
    bg = glass()
    with pytest.warns(StainWarning, match="too little tissue"):
        out = normalise(bg, method)
    assert out is bg
    with pytest.raises(StainError, match=r"too little tissue .* 0 of 16384 px"):
        stain.fit(bg, method)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_mostly_glass_tile_and_float_batches(lymph, method):
    """Half glass: fitted on the tissue, glass stays bright; no NaN; float stacks work."""
    half = glass(shape=lymph.shape[:2])
    half[:, :64] = lymph[:, :64]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = normalise(half, method)
    assert np.isfinite(out).all()
    assert out[:, 128:].mean() > 225  # glass stays glass
    norm = StainNormaliser(method)
    source = norm.fit(lymph)
    batch = np.stack([lymph, lymph[::-1]]).astype(np.float32)
    mapped = norm.transform(batch, source)
    assert mapped.dtype == np.float32 and mapped.shape == batch.shape
    assert np.abs(mapped[0] - norm.transform(lymph, source)).max() <= 0.5 + 1e-3


def test_bad_input():
    with pytest.raises(TypeError, match="numpy array"):
        normalise([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\) RGB array, got shape \(8, 8\)"):
        normalise(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        normalise(np.zeros((8, 8, 3), np.int32))
    with pytest.raises(ValueError, match="`method` must be one of macenko, reinhard"):
        normalise(np.zeros((8, 8, 3), np.uint8), "vahadane")
    with pytest.raises(TypeError, match="both be MacenkoStains or both ReinhardStats"):
        stain.apply(np.zeros((8, 8, 3), np.uint8), MACENKO_REFERENCE, REINHARD_REFERENCE)
    # One stain colour only (a flat pink image): H and E cannot be separated.
    flat = np.broadcast_to(np.array([200, 90, 170], np.uint8), (64, 64, 3)).copy()
    with pytest.raises(StainError):
        fit_macenko(flat)
    with pytest.raises(ValueError, match="stain setting must be one of card, none"):
        stain.resolve("auto", [])


def test_spec_round_trip_and_validation():
    assert StainNormaliser.from_spec(None) is None
    norm = StainNormaliser.from_spec({"method": "macenko", "target": None})
    assert norm.target == MACENKO_REFERENCE
    again = StainNormaliser.from_spec(json.loads(json.dumps(norm.spec())))
    assert again.method == "macenko"
    assert np.allclose(again.target.stain_matrix, MACENKO_REFERENCE.stain_matrix, atol=1e-3)
    custom = {"method": "reinhard", "target": {"mean": [60, 20, -10], "std": [12, 5, 5]}}
    assert StainNormaliser.from_spec(custom).target == ReinhardStats((60, 20, -10), (12, 5, 5))
    for bad, match in [
        ({"method": "vahadane"}, "`method` must be one of"),
        ({"method": "reinhard", "target": {"mean": [1, 2, 3]}}, "keys"),
        ({"method": "reinhard", "target": {"mean": [1, 2, 3], "std": [1, 0, 1]}}, "> 0"),
        (
            {
                "method": "macenko",
                "target": {"stain_matrix": [[1, 1, 1]], "max_concentrations": [1, 1]},
            },
            "2 rows",
        ),
        ({"target": None}, "must be null or"),
        ({"method": "macenko", "extra": 1}, "must be null or"),
    ]:
        with pytest.raises(ValueError, match=match):
            StainNormaliser.from_spec(bad)


# --------------------------------------------------------------------------- model cards


@pytest.fixture(scope="module")
def default_cards() -> dict[str, Path]:
    return latest_cards(default_models_dir())


def test_old_cards_without_the_field_still_load_and_round_trip(default_cards, tmp_path):
    path = next(iter(default_cards.values()))
    raw = json.loads(path.read_text())
    assert "stain_normalisation" not in raw
    card = read_card(path)
    assert card.stain_normalisation is None
    assert "stain_normalisation" not in card.to_dict()  # unchanged on disk when unused
    spec = {"method": "macenko", "target": None}
    data = {**raw, "stain_normalisation": spec}
    with_stain = ModelCard.from_dict(data)
    assert with_stain.stain_normalisation == spec
    out = with_stain.to_dict()
    assert list(out).index("stain_normalisation") == list(out).index("normalisation") + 1
    assert ModelCard.from_dict(out).to_dict() == out
    custom = {"method": "reinhard", "target": REINHARD_REFERENCE.to_dict()}
    assert ModelCard.from_dict({**raw, "stain_normalisation": custom}).stain_normalisation == custom


def test_bad_card_field_is_one_line(default_cards):
    path = next(iter(default_cards.values()))
    raw = json.loads(path.read_text())
    for bad in ("macenko", {"method": "sepia"}, {"method": "reinhard", "target": [1]}):
        with pytest.raises(WeightsError, match=r"card\.json: field `stain_normalisation` must be"):
            ModelCard.from_dict({**raw, "stain_normalisation": bad}, source="card.json")


# --------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def members(default_cards):
    """One real default member (the stain plumbing does not need all three)."""
    return [load_model(default_cards["resunet"])]


def test_predict_tile_applies_the_setting(members, breast):
    from napari_histo.inference.tiles import predict_tile

    breast = breast[:128, :128]
    plain = predict_tile(breast, 1.0, members, stain="none").probability
    card = predict_tile(breast, 1.0, members).probability  # default cards: no normalisation
    assert np.array_equal(plain, card)
    mac = predict_tile(breast, 1.0, members, stain="macenko").probability
    assert np.isfinite(mac).all() and not np.allclose(mac, plain)
    with pytest.warns(StainWarning, match="too little tissue"):
        predict_tile(glass(), 1.0, members, stain="reinhard")


def test_members_must_agree_on_card_stain(default_cards):
    a, b = (read_card(default_cards[name]) for name in ("resunet", "denseunet"))
    b = ModelCard.from_dict({**b.to_dict(), "stain_normalisation": {"method": "macenko"}})
    with pytest.raises(ValueError, match="disagree on stain normalisation"):
        stain.resolve("card", [a, b])
    assert stain.resolve("card", [b, b]).method == "macenko"
    assert stain.resolve("none", [a, b]) is None


def test_engine_normalises_once_per_slide_and_keys_the_run(cmu_svs, members, tmp_path):
    from napari_histo.inference.engine import EngineConfig, infer_slide, run

    def infer(setting):
        config = EngineConfig(stain=setting, device="cpu", batch_size=4, overlap=0.0)
        gen = infer_slide(cmu_svs, members, region=(0, 0, 1024, 1024), config=config,
                          out_dir=tmp_path)  # fmt: skip
        return run(gen)

    plain, card = infer("none"), infer("card")
    assert plain.run.run_id == card.run.run_id  # default cards: the same run
    assert "stain" not in plain.run.settings
    mac = infer("macenko")
    assert mac.run.run_id != plain.run.run_id
    recorded = mac.run.settings["stain"]
    assert recorded["method"] == "macenko" and set(recorded["source"]) == {
        "stain_matrix",
        "max_concentrations",
    }
    p_plain = np.asarray(plain.run.array("probability")[...])
    p_mac = np.asarray(mac.run.array("probability")[...])
    assert np.isfinite(p_mac).all() and not np.allclose(p_mac, p_plain)
    with pytest.raises(ValueError, match="stain setting must be one of"):
        EngineConfig(stain="sepia")


def test_live_settings_carry_the_stain_setting():
    from napari_histo.live.controller import LiveSettings

    settings = LiveSettings.from_dict({"stain": "reinhard"})
    assert settings.engine_config().stain == "reinhard"
    assert LiveSettings().stain == "card"
    with pytest.raises(ValueError, match="`stain` must be one of"):
        LiveSettings(stain="sepia")
