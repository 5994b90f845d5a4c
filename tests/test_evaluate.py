"""`napari-histo evaluate` and napari_histo.evaluate: scoring, tiles and masks, bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

from napari_histo.cli import main
from napari_histo.evaluate import (
    CSV_COLUMNS,
    EvaluationError,
    evaluate_folder,
    find_pairs,
    pooled_scores,
    read_image,
    read_mask,
    reliability_table,
    score_maps,
    write_reliability_png,
)
from napari_histo.models import default_models_dir, latest_cards

REAL = Path(__file__).parent / "data" / "real_tumor"
CAMELYON = ("camelyon16_10670", "camelyon16_10072")


# --------------------------------------------------------------------------- scoring, no model


def test_perfect_and_inverted_maps():
    rng = np.random.default_rng(0)
    truth = rng.random((64, 64)) < 0.3
    perfect = score_maps(truth.astype(float), truth, epistemic=np.zeros(truth.shape))
    assert perfect["dice"] == perfect["iou"] == perfect["auroc"] == 1.0
    assert perfect["ece"] == 0.0
    assert perfect["pixels"] == 4096 and perfect["tumor_fraction"] == pytest.approx(truth.mean())
    inverted = score_maps(1.0 - truth, truth)
    assert inverted["dice"] == inverted["iou"] == inverted["auroc"] == 0.0
    assert inverted["ece"] == pytest.approx(1.0)
    assert np.isnan(inverted["epistemic_error_auroc"])  # no uncertainty map given


def test_known_values():
    truth = np.array([1, 1, 0, 0], bool)
    p = np.array([0.9, 0.4, 0.6, 0.1])
    s = score_maps(p, truth, epistemic=np.array([0.0, 1.0, 1.0, 0.0]))
    assert s["dice"] == pytest.approx(0.5)  # 1 hit, 1 miss, 1 false alarm
    assert s["iou"] == pytest.approx(1 / 3)
    assert s["auroc"] == pytest.approx(0.75)
    assert s["epistemic_error_auroc"] == 1.0  # uncertainty exactly on the two errors
    empty = score_maps(np.zeros(5), np.zeros(5, bool))
    assert empty["dice"] == empty["iou"] == 1.0 and np.isnan(empty["auroc"])
    none = score_maps(np.zeros(0), np.zeros(0, bool))
    assert none["pixels"] == 0 and np.isnan(none["dice"])
    with pytest.raises(ValueError, match="size 3 must equal `truth` size 4"):
        score_maps(np.zeros(3), truth)


def test_pooled_figures_and_reliability_png(tmp_path):
    rng = np.random.default_rng(1)
    truth = rng.random(20_000) < 0.4
    calibrated = np.clip(np.where(truth, 0.8, 0.2) + rng.normal(0, 0.05, truth.size), 0, 1)
    pooled = {
        "probability": calibrated,
        "truth": truth,
        "epistemic": rng.random(truth.size),
        "tile_score": np.zeros(0),
        "tile_label": np.zeros(0, np.int64),
    }
    figures = pooled_scores(pooled)
    assert figures["dice"] == 1.0 and figures["auroc"] == 1.0
    assert figures["ece"] == pytest.approx(0.2, abs=0.02)  # says 0.8, right 100%
    assert 0.45 < figures["epistemic_error_auroc"] <= 0.55 or np.isnan(
        figures["epistemic_error_auroc"]
    )
    table = reliability_table(pooled)
    assert sum(table["count"]) == truth.size
    png = write_reliability_png(table, tmp_path / "r.png", title="test")
    image = imagecodecs.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary left


# --------------------------------------------------------------------------- files


def copy_crops(root: Path, names=CAMELYON) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for name in names:
        shutil.copy(REAL / "images" / f"{name}.jpg", images)
        shutil.copy(REAL / "masks" / f"{name}.png", masks)
    return images, masks


def test_masks_binary_forms(tmp_path):
    mask = read_mask(REAL / "masks" / "camelyon16_10670.png")
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    # Blurred edges saved as JPEG, like the CAMELYON16 masks (about 4-10% grey pixels).
    from scipy.ndimage import gaussian_filter

    soft = gaussian_filter(mask.astype(np.float32) * 255, 3.0).astype(np.uint8)
    assert ((soft > 32) & (soft < 223)).mean() > 0.03
    imagecodecs.imwrite(tmp_path / "soft.jpg", soft, level=75)
    imagecodecs.imwrite(tmp_path / "01.png", mask)
    imagecodecs.imwrite(tmp_path / "rgb.png", np.repeat(mask[..., None] * 255, 3, axis=2))
    imagecodecs.imwrite(tmp_path / "q.jpg", mask * 255, level=60)
    imagecodecs.imwrite(tmp_path / "f.tif", mask.astype(np.float32))
    imagecodecs.imwrite(tmp_path / "w.tif", mask.astype(np.uint16) * 65535)
    for name in ("01.png", "rgb.png", "q.jpg", "f.tif", "w.tif", "soft.jpg"):
        got = read_mask(tmp_path / name)
        assert (got == mask).mean() > 0.995, name


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda m: (m * 3).astype(np.uint8), r"values 0, 3 look like class labels"),
        (lambda m: (m * 2 + (m == 0)).astype(np.uint16), r"2 distinct values \(1, 2\)"),
        (lambda m: m.astype(np.float32) * 0.5, "float mask with values other than 0 and 1"),
        (
            lambda m: np.stack([m * 255, m * 0, m * 0], -1).astype(np.uint8),
            r"colour mask \(\d+\.\d% of pixels are coloured\)",
        ),
        (
            lambda m: np.asarray(read_image(REAL / "images" / "bcss_1008.jpg").mean(-1), np.uint8),
            r"\d+% of pixels are mid-grey \(33–222\); expected a binary 0/255 mask",
        ),
    ],
)
def test_non_binary_masks_are_refused(tmp_path, make, match):
    mask = read_mask(REAL / "masks" / "camelyon16_10670.png")
    path = tmp_path / "bad.tif"
    imagecodecs.imwrite(path, make(mask))
    with pytest.raises(EvaluationError, match=match):
        read_mask(path)


def test_images(tmp_path):
    rgb = read_image(REAL / "images" / "bcss_1008.jpg")
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    rgba = np.concatenate([rgb, np.full((256, 256, 1), 255, np.uint8)], axis=2)
    imagecodecs.imwrite(tmp_path / "a.png", rgba)
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)
    imagecodecs.imwrite(tmp_path / "grey.png", np.ascontiguousarray(rgb[..., 0]))
    with pytest.raises(EvaluationError, match=r"grey\.png: is not an RGB image"):
        read_image(tmp_path / "grey.png")
    imagecodecs.imwrite(tmp_path / "deep.tif", rgb.astype(np.uint16))
    with pytest.raises(EvaluationError, match="uint16 pixels; expected 8-bit RGB"):
        read_image(tmp_path / "deep.tif")


def test_pairs_by_stem_and_mask_suffix(tmp_path):
    images, masks = copy_crops(tmp_path)
    (masks / "camelyon16_10072.png").rename(masks / "camelyon16_10072_mask.png")
    (images / "README.txt").write_text("not an image")
    (images / ".DS_Store").write_bytes(b"\0")
    pairs = find_pairs(images, masks)
    assert [p.name for p in pairs] == sorted(CAMELYON)
    assert pairs[0].mask.name == "camelyon16_10072_mask.png"
    # One folder holding both.
    both = tmp_path / "both"
    both.mkdir()
    for p in images.glob("*.jpg"):
        shutil.copy(p, both / p.name)
    for p in masks.glob("*.png"):
        shutil.copy(p, both / f"{p.stem.removesuffix('_mask')}_mask.png")
    assert [p.name for p in find_pairs(both, both)] == sorted(CAMELYON)


# --------------------------------------------------------------------------- the command


def run_cli(capsys, *args):
    rc = main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_scores_real_tiles_with_default_models(tmp_path, capsys):
    images, masks = copy_crops(tmp_path)
    out = tmp_path / "report"
    rc, stdout, err = run_cli(capsys, images, masks, "--mpp", "1.0", "--out", out, "--quiet")
    assert rc == 0, err
    assert "2 tiles at 1 µm/px" in stdout and "pooled pixels: Dice" in stdout
    with (out / "tiles.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["name"] for r in rows] == sorted(CAMELYON)
    for r in rows:
        assert int(r["pixels"]) == 256 * 256
        assert 0 <= float(r["dice"]) <= 1 and 0 <= float(r["auroc"]) <= 1
        assert 0.2 < float(r["tumor_fraction"]) < 0.8
    summary = json.loads((out / "summary.json").read_text())
    cards = latest_cards(default_models_dir())
    assert {m["name"] for m in summary["models"]} == set(cards)
    assert summary["tiles"] == 2 and summary["mpp"] == 1.0 and summary["stain"] is None
    assert set(summary["pooled"]) >= {"dice", "iou", "auroc", "ece", "epistemic_error_auroc"}
    assert imagecodecs.imread(out / "reliability.png").ndim == 3
    # --json: one object, same figures, stain normalisation applied per tile.
    rc, stdout, _ = run_cli(
        capsys, images, masks, "--mpp", "1", "--json", "--members", "resunet", "--stain", "macenko"
    )
    payload = json.loads(stdout)
    assert rc == 0 and payload["tiles"] == 2 and payload["stain"]["method"] == "macenko"
    assert [m["name"] for m in payload["models"]] == ["resunet"]
    assert len(payload["rows"]) == 2 and payload["files"] == {}


def test_python_function_accepts_card_paths_of_any_version(tmp_path):
    images, masks = copy_crops(tmp_path, names=CAMELYON[:1])
    card = latest_cards(default_models_dir())["resunet"]
    result = evaluate_folder(images, masks, [card], mpp=1.0)
    assert len(result.rows) == 1 and result.files == {}
    assert result.summary["models"][0]["version"] == card.stem.split("-", 1)[1]


def _one_line_error(capsys, tmp_path, *args, match: str):
    out = tmp_path / "never"
    rc, stdout, err = run_cli(capsys, *args, "--out", out)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith("napari-histo evaluate: error: "), lines

    assert re.search(match, lines[0]), lines[0]
    assert not out.exists() and stdout == ""


def test_bad_folders_give_one_line_each(tmp_path, capsys):
    images, masks = copy_crops(tmp_path)
    mpp = ("--mpp", "1")
    (images / "extra.jpg").write_bytes((images / "camelyon16_10670.jpg").read_bytes())
    _one_line_error(
        capsys, tmp_path, images, masks, *mpp, match=r"images/extra\.jpg: no mask named extra"
    )
    (images / "extra.jpg").unlink()
    shutil.copy(masks / "camelyon16_10670.png", masks / "orphan.png")
    _one_line_error(
        capsys, tmp_path, images, masks, *mpp, match=r"masks/orphan\.png: no image named orphan"
    )
    (masks / "orphan.png").unlink()

    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, tmp_path, empty, masks, *mpp, match=r"empty: no image files")
    _one_line_error(capsys, tmp_path, tmp_path / "nope", masks, *mpp, match=r"nope: no such folder")

    mask = imagecodecs.imread(masks / "camelyon16_10670.png")
    imagecodecs.imwrite(masks / "camelyon16_10670.png", mask[:200])
    _one_line_error(
        capsys, tmp_path, images, masks, *mpp,
        match=r"camelyon16_10670\.png: mask is 256 x 200 px but image camelyon16_10670\.jpg is "
        r"256 x 256 px",
    )  # fmt: skip
    imagecodecs.imwrite(masks / "camelyon16_10670.png", (mask > 0).astype(np.uint8) * 7)
    _one_line_error(
        capsys, tmp_path, images, masks, *mpp, match=r"values 0, 7 look like class labels"
    )
    imagecodecs.imwrite(masks / "camelyon16_10670.png", mask)

    good = (images / "camelyon16_10072.jpg").read_bytes()
    (images / "camelyon16_10072.jpg").write_bytes(good[: len(good) // 2])
    _one_line_error(capsys, tmp_path, images, masks, *mpp, match=r"10072\.jpg: truncated JPEG")
    (images / "camelyon16_10072.jpg").write_bytes(b"")
    _one_line_error(
        capsys, tmp_path, images, masks, *mpp, match=r"10072\.jpg: is empty \(0 bytes\)"
    )
    (images / "camelyon16_10072.jpg").write_bytes(b"GIF89a this is not an image")
    _one_line_error(capsys, tmp_path, images, masks, *mpp, match=r"10072\.jpg: cannot be decoded")


def test_bad_options_give_one_line_each(tmp_path, capsys):
    images, masks = copy_crops(tmp_path, names=CAMELYON[:1])
    _one_line_error(capsys, tmp_path, images, masks, match=r"--mpp is required")
    _one_line_error(
        capsys, tmp_path, images, masks, "--mpp", "abc", match=r"--mpp must be a number"
    )
    _one_line_error(
        capsys,
        tmp_path,
        images,
        masks,
        "--mpp",
        "60",
        match=r"`mpp` must be .* \[0\.05, 50\], got 60",
    )
    _one_line_error(capsys, tmp_path, images, masks, "--mpp", "0.01", match=r"\[0\.05, 50\]")
    _one_line_error(
        capsys,
        tmp_path,
        images,
        masks,
        "--mpp",
        "1",
        "--tta",
        "3",
        match=r"`tta` must be 1, 2, 4 or 8",
    )
    _one_line_error(
        capsys, tmp_path, images, masks, "--mpp", "1", "--members", "nosuch", match=r"nosuch"
    )
    (tmp_path / "file").write_text("x")
    rc, _, err = run_cli(capsys, images, masks, "--mpp", "1", "--out", tmp_path / "file")
    assert rc == 2 and err.count("\n") == 1 and "exists and is not a folder" in err


# --------------------------------------------------------------------------- annotated slides

TILES = REAL / "tiles"  # four whole CAMELYON16 tiles (CC0), see their PROVENANCE.txt


def _annotated_slide(root: Path) -> tuple[Path, Path, float]:
    """Two real tiles on glass in an Aperio slide, their masks as QuPath-style GeoJSON."""
    from napari_histo.annotations.from_probability import probability_to_annotations
    from napari_histo.annotations.model import Annotation
    from napari_histo.io.annotations import write_geojson
    from tests.slides import write_aperio_svs

    glass = 64
    rgb = np.full((512 + 2 * glass, 1024 + 2 * glass, 3), 242, np.uint8)
    tumor = np.zeros(rgb.shape[:2], bool)
    tissue = np.zeros(rgb.shape[:2], bool)
    for i, name in enumerate(("10670", "10674")):
        x = glass + 512 * i
        rgb[glass : glass + 512, x : x + 512] = imagecodecs.imread(TILES / f"camelyon16_{name}.jpg")
        mask = imagecodecs.imread(TILES / f"camelyon16_{name}_mask.png")
        tumor[glass : glass + 512, x : x + 512] = (
            mask.max(axis=2) if mask.ndim == 3 else mask
        ) >= 128
        tissue[glass : glass + 512, x : x + 512] = True
    slide = root / "mosaic.svs"
    write_aperio_svs(slide, rgb, levels=1, mpp=1.2)
    anns = probability_to_annotations(
        tumor.astype(np.float32), 0.5, (0, 0), 1.0, min_area_px=400, label="tumor"
    ) + probability_to_annotations(
        (tissue & ~tumor).astype(np.float32), 0.5, (0, 0), 1.0, min_area_px=400,
        label="non-tumor",
    )  # fmt: skip
    anns.append(Annotation.from_bbox(glass, glass, glass + 40, glass + 40, label="ignore"))
    geojson = root / "mosaic.geojson"
    write_geojson(geojson, anns)
    return slide, geojson, float(tumor[tissue].mean())


def test_cli_scores_an_annotated_slide(tmp_path, capsys):
    slide, geojson, fraction = _annotated_slide(tmp_path)
    out = tmp_path / "report"
    from napari_histo.paths import default_models_dir

    # v1 (2 µm/px) keeps the run small and the expected pixel count fixed.
    v1 = default_models_dir() / "resunet-1.0.json"
    args = ("--slide", slide, "--annotations", geojson, "--members", v1, "--quiet")
    rc, stdout, err = run_cli(capsys, *args, "--out", out)
    assert rc == 0, err
    assert "mosaic.svs, annotated region 1024 x 512 px (models at 2 µm/px)" in stdout
    with (out / "tiles.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["name"] == "mosaic.svs"
    # About 2 x 512 x 512 level-0 px at 1.2 µm/px seen at 2 µm/px, minus the ignored box.
    assert abs(int(rows[0]["pixels"]) - 2 * 512 * 512 * (1.2 / 2.0) ** 2) < 0.03 * 2 * 512 * 512
    assert float(rows[0]["tumor_fraction"]) == pytest.approx(fraction, abs=0.03)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["region_l0"] == [64, 64, 1024, 512] and 0 <= summary["pooled"]["auroc"] <= 1
    assert (out / "reliability.png").stat().st_size > 10_000

    bad = tmp_path / "bad.geojson"
    bad.write_text(geojson.read_text().replace('"non-tumor"', '"stroma"'))
    for extra, match in [
        (("--slide", slide, "--annotations", bad), r"bad\.geojson: annotation \d+ .*'stroma'"),
        (("--slide", slide, "--annotations", tmp_path / "no.geojson"), "no such annotation file"),
        (("--slide", slide), "--slide and --annotations go together"),
        (("--slide", slide, "--annotations", geojson, "--mpp", "1"), "--mpp is for tiles"),
        ((REAL, "--slide", slide, "--annotations", geojson), "not both"),
    ]:
        _one_line_error(capsys, tmp_path, *extra, match=match)
