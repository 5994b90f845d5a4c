"""Score a tumor model version on labelled tiles: Dice, IoU, AUROC, ECE, uncertainty.

Plain functions over arrays: :func:`score_tiles` runs an ensemble on each tile
(:func:`~napari_histo.inference.tiles.predict_tile`) and returns one row per
tile plus pooled figures; pooled figures count every labelled pixel of every
tile once (pixels labelled 255 are unknown and left out).

On files: :func:`evaluate_folder` pairs a folder of images with a folder of
binary tumor masks by file name, checks every pair before any model runs (one
:class:`EvaluationError` line naming the file and the problem), scores them and
writes a per-tile CSV, a summary JSON and a reliability diagram (PNG). It is
the ``napari-histo evaluate`` command; see :func:`read_mask` for what counts as
a binary mask.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo._atomic import atomic_write_bytes
from napari_histo.errors import HistoError
from napari_histo.inference.tiles import predict_tile
from napari_histo.metrics import auroc, expected_calibration_error, reliability
from napari_histo.models import LoadedModel
from napari_histo.stain import StainNormaliser, StainWarning

__all__ = [
    "CSV_COLUMNS",
    "Evaluation",
    "EvaluationError",
    "LabelledTile",
    "TilePair",
    "TileScore",
    "evaluate_folder",
    "evaluate_slide",
    "find_pairs",
    "pooled_scores",
    "read_image",
    "read_mask",
    "reliability_table",
    "score_maps",
    "score_tiles",
    "write_reliability_png",
]

UNKNOWN = 255
#: Pixels per tile kept for the pooled AUROC / ECE (a fixed-stride subsample).
_POOL_PX = 20_000


@dataclass(frozen=True)
class LabelledTile:
    """An RGB tile with a tumor mask (0 / 1 / 255 unknown) and/or a tile label."""

    name: str
    rgb: np.ndarray
    mask: np.ndarray | None
    mpp: float
    tile_label: int | None = None


@dataclass(frozen=True)
class TileScore:
    """Figures of one tile (NaN where undefined, e.g. AUROC of a one-class tile)."""

    name: str
    pixels: int
    tumor_fraction: float
    dice: float
    iou: float
    auroc: float
    ece: float
    mean_probability: float
    tile_score: float
    tile_label: int | None
    epistemic_error_auroc: float
    note: str = ""


def _overlap(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """|A ∩ B|, |A ∪ B| and |A| + |B| of two boolean masks."""
    return int((pred & truth).sum()), int((pred | truth).sum()), int(pred.sum() + truth.sum())


def _top_fifth(probability: np.ndarray) -> float:
    flat = np.sort(probability.ravel())
    return float(flat[-max(1, flat.size // 5) :].mean())


def score_maps(
    probability: np.ndarray, truth: np.ndarray, epistemic: np.ndarray | None = None
) -> dict[str, Any]:
    """Figures of one tile's labelled pixels (no model involved).

    Parameters
    ----------
    probability : ndarray of float
        Tumor probability of each labelled pixel (any shape).
    truth : ndarray of bool, same shape
        Tumor mask.
    epistemic : ndarray of float, optional
        Epistemic uncertainty; its AUROC at telling the misclassified pixels
        (at 0.5) from the others is ``epistemic_error_auroc``.

    Returns
    -------
    dict
        ``pixels``, ``tumor_fraction``, ``dice``, ``iou`` (prediction at 0.5;
        1.0 when prediction and truth are both empty), ``auroc``, ``ece`` and
        ``epistemic_error_auroc`` (NaN where undefined: no pixels, one class).
    """
    p = np.asarray(probability, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=bool).ravel()
    if p.shape != t.shape:
        raise ValueError(f"`probability` size {p.size} must equal `truth` size {t.size}")
    nan = float("nan")
    if not p.size:
        return dict(pixels=0, tumor_fraction=nan, dice=nan, iou=nan, auroc=nan, ece=nan,
                    epistemic_error_auroc=nan)  # fmt: skip
    pred = p > 0.5
    inter, union, total = _overlap(pred, t)
    e = None if epistemic is None else np.asarray(epistemic, dtype=np.float64).ravel()
    return dict(
        pixels=int(p.size),
        tumor_fraction=float(t.mean()),
        dice=2 * inter / total if total else 1.0,
        iou=inter / union if union else 1.0,
        auroc=auroc(p, t),
        ece=expected_calibration_error(p, t),
        epistemic_error_auroc=nan if e is None else auroc(e, pred != t),
    )


def score_tiles(
    tiles: Iterable[LabelledTile],
    members: Sequence[LoadedModel],
    *,
    tta: int = 1,
    stain: object = "card",
    progress: Callable[[int], None] | None = None,
) -> tuple[list[TileScore], dict[str, np.ndarray]]:
    """Run the ensemble on every tile and score it.

    `stain` is passed to :func:`~napari_histo.inference.tiles.predict_tile`; a
    tile it leaves unnormalised (too little tissue) says so in its ``note``.
    `progress`, if given, is called with the number of tiles done after each.

    Returns
    -------
    rows : list of TileScore
        One per tile.
    pooled : dict of ndarray
        Subsampled labelled pixels of all tiles (``probability``, ``truth``,
        ``epistemic``) and per-tile ``tile_score`` / ``tile_label`` arrays, for
        :func:`pooled_scores`.
    """
    rows = []
    keep: dict[str, list[np.ndarray]] = {"probability": [], "truth": [], "epistemic": []}
    tile_scores, tile_labels = [], []
    for tile in tiles:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StainWarning)
            out = predict_tile(tile.rgb, tile.mpp, members, tta=tta, stain=stain)
        notes = [str(w.message) for w in caught if issubclass(w.category, StainWarning)]
        for w in caught:
            if not issubclass(w.category, StainWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        prob = out.probability
        score = _top_fifth(prob)
        if tile.tile_label is not None:
            tile_scores.append(score)
            tile_labels.append(int(tile.tile_label))
        known = np.zeros(prob.shape, bool) if tile.mask is None else tile.mask != UNKNOWN
        truth = (tile.mask == 1) if tile.mask is not None else known
        p, t, e = prob[known], truth[known], out.epistemic[known]
        if p.size:
            stride = max(1, p.size // _POOL_PX)
            keep["probability"].append(p[::stride])
            keep["truth"].append(t[::stride])
            keep["epistemic"].append(e[::stride])
        rows.append(
            TileScore(
                name=tile.name,
                **score_maps(p, t, e),
                mean_probability=float(prob.mean()),
                tile_score=score,
                tile_label=tile.tile_label,
                note="; ".join(notes),
            )
        )
        if progress is not None:
            progress(len(rows))
    pooled = {k: np.concatenate(v) if v else np.zeros(0) for k, v in keep.items()}
    pooled["tile_score"] = np.asarray(tile_scores, dtype=np.float64)
    pooled["tile_label"] = np.asarray(tile_labels, dtype=np.int64)
    return rows, pooled


def pooled_scores(pooled: dict[str, np.ndarray]) -> dict[str, float]:
    """Dice, IoU, AUROC, ECE and epistemic-error AUROC over all pooled pixels.

    With tile labels, also ``tile_auroc`` (top-fifth mean probability against
    the tile label) and ``tile_accuracy`` at 0.5.
    """
    p, t, e = pooled["probability"], pooled["truth"].astype(bool), pooled["epistemic"]
    out: dict[str, float] = {}
    if p.size:
        pred = p > 0.5
        inter, union, total = _overlap(pred, t)
        out.update(
            dice=2 * inter / total if total else float("nan"),
            iou=inter / union if union else float("nan"),
            auroc=auroc(p, t),
            ece=expected_calibration_error(p, t),
            epistemic_error_auroc=auroc(e, pred != t),
            pixels=float(p.size),
        )
    if pooled["tile_label"].size:
        labels = pooled["tile_label"].astype(bool)
        out["tile_auroc"] = auroc(pooled["tile_score"], labels)
        out["tile_accuracy"] = float(((pooled["tile_score"] > 0.5) == labels).mean())
        out["tiles"] = float(labels.size)
    return {k: round(float(v), 4) for k, v in out.items()}


def reliability_table(pooled: dict[str, np.ndarray], bins: int = 10) -> dict[str, list[float]]:
    """Reliability-diagram data of the pooled pixels (mean probability, frequency, count)."""
    mean_p, freq, count = reliability(pooled["probability"], pooled["truth"], bins=bins)
    return {
        "mean_probability": mean_p.tolist(),
        "frequency": freq.tolist(),
        "count": count.tolist(),
    }


# --------------------------------------------------------------------------- files

#: Image file suffixes looked at in the folders (others, e.g. README.txt, are ignored).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".jp2", ".jxl")
#: Mask file stems may add one of these to the image's stem (``10670_mask.png``).
MASK_SUFFIXES = ("_mask", "-mask", "_masks", "_gt", "-gt", "_label", "_labels")
#: Grey values strictly between these count as "mid-grey" in a 0/255 mask.
MID_GREY = (32, 223)
#: A 0/255 mask may have at most this fraction of mid-grey pixels (JPEG noise,
#: blurred or anti-aliased edges); it is thresholded at 128.
MAX_MID_GREY = 0.25
#: Largest tile evaluated, in pixels (larger images belong in a slide).
MAX_TILE_PIXELS = 64_000_000
#: Per-tile CSV columns, in order.
CSV_COLUMNS = (
    "name",
    "pixels",
    "tumor_fraction",
    "dice",
    "iou",
    "auroc",
    "ece",
    "mean_probability",
    "epistemic_error_auroc",
)


class EvaluationError(HistoError):
    """Bad evaluation input: one line naming the file or folder and the problem."""


@dataclass(frozen=True)
class TilePair:
    """An image file and its mask file."""

    name: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_folder` measured (and wrote).

    Attributes
    ----------
    rows : list of TileScore
        One per tile, in file-name order.
    summary : dict
        JSON-ready: models, settings, pooled and mean per-tile figures, the
        reliability table, notes.
    files : dict of str to Path
        ``{"csv", "json", "png"}`` when written to an `out_dir`, else empty.
    """

    rows: list[TileScore]
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def _image_files(directory: Path, what: str) -> list[Path]:
    if not directory.exists():
        raise EvaluationError(f"{directory}: no such folder ({what})")
    if not directory.is_dir():
        raise EvaluationError(f"{directory}: not a folder ({what})")
    try:
        entries = sorted(directory.iterdir())
    except OSError as err:
        raise EvaluationError(f"{directory}: cannot list ({err.strerror or err})") from None
    return [
        p
        for p in entries
        if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    ]


def _mask_key(stem: str) -> str:
    for suffix in MASK_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _by_key(paths: Iterable[Path], key: Callable[[str], str], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in paths:
        k = key(path.stem)
        if k in out:
            raise EvaluationError(
                f"{path}: two {what} files for {k!r} ({out[k].name} and {path.name}); keep one"
            )
        out[k] = path
    return out


def find_pairs(
    images_dir: str | os.PathLike[str], masks_dir: str | os.PathLike[str]
) -> list[TilePair]:
    """Image/mask pairs of two folders, matched by file stem, sorted by name.

    A mask matches an image with the same stem (``a.jpg`` and ``a.png``) or the
    stem plus one of :data:`MASK_SUFFIXES` (``a_mask.png``). Files whose suffix
    is not in :data:`IMAGE_SUFFIXES` and hidden files are ignored. The two
    folders may be the same one; then files with a mask suffix are the masks.

    Raises
    ------
    EvaluationError
        A folder is missing or holds no image files; an image has no mask or a
        mask no image (the first one named, with how many more); two files
        claim the same name.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    image_files = _image_files(images_dir, "images")
    mask_files = _image_files(masks_dir, "masks")
    if images_dir.resolve() == masks_dir.resolve():
        mask_files = [p for p in image_files if _mask_key(p.stem) != p.stem]
        image_files = [p for p in image_files if _mask_key(p.stem) == p.stem]
    if not image_files:
        raise EvaluationError(
            f"{images_dir}: no image files ({', '.join(IMAGE_SUFFIXES)}) to evaluate"
        )
    if not mask_files:
        raise EvaluationError(f"{masks_dir}: no mask files ({', '.join(IMAGE_SUFFIXES)})")
    images = _by_key(image_files, lambda s: s, "image")
    masks = _by_key(mask_files, _mask_key, "mask")
    lonely_images = [images[k] for k in images if k not in masks]
    lonely_masks = [masks[k] for k in masks if k not in images]
    if lonely_images:
        more = (
            f" (and {len(lonely_images) - 1} more images without masks)"
            if len(lonely_images) > 1
            else ""
        )
        raise EvaluationError(
            f"{lonely_images[0]}: no mask named {lonely_images[0].stem}.* or "
            f"{lonely_images[0].stem}_mask.* in {masks_dir}{more}"
        )
    if lonely_masks:
        more = (
            f" (and {len(lonely_masks) - 1} more masks without images)"
            if len(lonely_masks) > 1
            else ""
        )
        raise EvaluationError(
            f"{lonely_masks[0]}: no image named {_mask_key(lonely_masks[0].stem)}.* in "
            f"{images_dir}{more}"
        )
    return [TilePair(k, images[k], masks[k]) for k in sorted(images)]


def _decode(path: Path) -> np.ndarray:
    """Decoded pixels of an image file, or EvaluationError naming it."""
    import imagecodecs

    try:
        data = path.read_bytes()
    except OSError as err:
        raise EvaluationError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not data:
        raise EvaluationError(f"{path}: is empty (0 bytes)")
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        # libjpeg fills a truncated JPEG with grey without an error.
        raise EvaluationError(f"{path}: truncated JPEG (no end-of-image marker)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = imagecodecs.imread(data)
    except Exception as err:  # imagecodecs raises many types; one line is what matters
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise EvaluationError(f"{path}: cannot be decoded as an image ({first})") from None
    pixels = np.asarray(pixels)
    if pixels.size == 0:
        raise EvaluationError(f"{path}: decodes to an empty image")
    if (pixels.ndim == 3 and pixels.shape[-1] > 4) or pixels.ndim > 3:
        raise EvaluationError(
            f"{path}: holds several images or planes (shape {pixels.shape}); expected one"
        )
    if pixels.shape[0] * pixels.shape[1] > MAX_TILE_PIXELS:
        raise EvaluationError(
            f"{path}: {pixels.shape[1]} x {pixels.shape[0]} px is larger than a tile "
            f"({MAX_TILE_PIXELS // 1_000_000} Mpx at most); evaluate it as a slide"
        )
    return pixels


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An 8-bit RGB tile from any format imagecodecs reads (alpha dropped).

    Raises
    ------
    EvaluationError
        Missing, empty, truncated or undecodable file; greyscale, not 8-bit,
        several pages, smaller than 8 px or larger than :data:`MAX_TILE_PIXELS`.
    """
    path = Path(path)
    pixels = _decode(path)
    if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
        raise EvaluationError(
            f"{path}: is not an RGB image (shape {pixels.shape}); expected H&E colour"
        )
    if pixels.dtype != np.uint8:
        raise EvaluationError(f"{path}: has {pixels.dtype} pixels; expected 8-bit RGB")
    if min(pixels.shape[:2]) < 8:
        raise EvaluationError(f"{path}: {pixels.shape[1]} x {pixels.shape[0]} px is too small")
    return np.ascontiguousarray(pixels[..., :3])


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """A binary tumor mask (uint8 0/1) from a 0/1 or 0/255 image.

    Accepted: single-channel, or 3/4-channel grey (channels equal within JPEG
    noise), of
    - values 0 and 1 (any integer type, or bool);
    - values 0 and 255 (or 65535 in 16 bits), thresholded at half range. In
      8 bits up to :data:`MAX_MID_GREY` (25%) of the pixels may be mid-grey
      (33–222: JPEG noise, blurred or anti-aliased edges).

    Raises
    ------
    EvaluationError
        Not decodable (as :func:`read_image`); a colour mask; class or
        instance labels (values like 0, 1, 2, 3); a greyscale picture (more
        than 25% mid-grey); a float mask with values other than 0 and 1.
    """
    path = Path(path)
    m = _decode(path)
    if m.ndim == 3:
        if m.shape[-1] >= 3:
            rgb = m[..., :3].astype(np.int32)
            spread = rgb.max(axis=-1) - rgb.min(axis=-1)
            coloured = float((spread > 64).mean())
            if coloured > 0.01:
                raise EvaluationError(
                    f"{path}: colour mask ({100 * coloured:.1f}% of pixels are coloured); "
                    "expected a binary grey mask (0/1 or 0/255)"
                )
        m = m[..., 0]
    if m.dtype == bool:
        return m.astype(np.uint8)
    if np.issubdtype(m.dtype, np.floating):
        finite = np.isfinite(m)
        if not finite.all() or not np.isin(m, (0.0, 1.0)).all():
            raise EvaluationError(
                f"{path}: float mask with values other than 0 and 1 "
                f"(range {np.nanmin(m):.3g}–{np.nanmax(m):.3g}); expected a binary mask"
            )
        return (m > 0.5).astype(np.uint8)
    if not np.issubdtype(m.dtype, np.integer):
        raise EvaluationError(f"{path}: has {m.dtype} pixels; expected a binary mask")
    top = int(m.max())
    if top <= 1:
        return (m > 0).astype(np.uint8)
    if m.dtype != np.uint8:
        full = np.iinfo(m.dtype).max
        values = np.unique(m)
        if set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, full}:
            return (m > 0).astype(np.uint8)
        raise EvaluationError(
            f"{path}: {len(values)} distinct values ({_few(values)}); expected a binary mask "
            "(0/1 or 0/255), not class or instance labels"
        )
    counts = np.bincount(m.ravel(), minlength=256)
    if top < MID_GREY[0]:
        values = np.flatnonzero(counts)
        raise EvaluationError(
            f"{path}: values {_few(values)} look like class labels; expected a binary mask "
            "(0/1 or 0/255)"
        )
    mid = float(counts[MID_GREY[0] + 1 : MID_GREY[1]].sum()) / m.size
    if mid > MAX_MID_GREY:
        raise EvaluationError(
            f"{path}: {100 * mid:.0f}% of pixels are mid-grey (33–222); expected a binary "
            f"0/255 mask (up to {100 * MAX_MID_GREY:.0f}% JPEG noise or soft edges allowed)"
        )
    return (m >= 128).astype(np.uint8)


def _few(values: np.ndarray) -> str:
    shown = ", ".join(str(v) for v in values[:6].tolist())
    return shown + (", …" if len(values) > 6 else "")


def _check_pair(pair: TilePair) -> tuple[np.ndarray, np.ndarray]:
    rgb = read_image(pair.image)
    mask = read_mask(pair.mask)
    if mask.shape != rgb.shape[:2]:
        raise EvaluationError(
            f"{pair.mask}: mask is {mask.shape[1]} x {mask.shape[0]} px but image "
            f"{pair.image.name} is {rgb.shape[1]} x {rgb.shape[0]} px; sizes must match"
        )
    return rgb, mask


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise EvaluationError(f"{out_dir}: exists and is not a folder")
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise EvaluationError(f"{out_dir}: cannot be written ({probe} is not a writable folder)")


def _check_settings(mpp: object, tta: object) -> float:
    if isinstance(mpp, bool) or not isinstance(mpp, int | float) or not math.isfinite(mpp):
        raise ValueError(f"`mpp` must be a number of µm/px in [0.05, 50], got {mpp!r}")
    if not 0.05 <= mpp <= 50:
        raise ValueError(f"`mpp` must be a number of µm/px in [0.05, 50], got {mpp!r}")
    if tta not in (1, 2, 4, 8) or isinstance(tta, bool):
        raise ValueError(f"`tta` must be 1, 2, 4 or 8, got {tta!r}")
    return float(mpp)


def _load_members(members: object) -> list[LoadedModel]:
    """LoadedModel of each member (card paths are loaded); tumor segmentation models only."""
    from napari_histo.models import load_model

    if isinstance(members, str | os.PathLike) or not isinstance(members, Sequence) or not members:
        raise ValueError("`members` must be a non-empty sequence of models or card paths")
    loaded = []
    for m in members:
        if isinstance(m, str | os.PathLike):
            m = load_model(m)
        if not isinstance(m, LoadedModel):
            raise TypeError(
                f"`members` must hold LoadedModel or card paths, got {type(m).__name__}"
            )
        if m.card.task != "segmentation":
            raise ValueError(
                f"{m.card_path}: a {m.card.task} model, not a tumor segmentation model"
            )
        loaded.append(m)
    return loaded


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else float("nan")


def _json_safe(value: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def evaluate_folder(
    images_dir: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str],
    members: Sequence[LoadedModel | str | os.PathLike[str]],
    *,
    mpp: float,
    tta: int = 1,
    stain: object = "card",
    out_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score an ensemble on a folder of labelled tiles.

    Parameters
    ----------
    images_dir, masks_dir : str or PathLike
        Folders of RGB tiles and of binary tumor masks, paired by name
        (:func:`find_pairs`; masks as :func:`read_mask` describes).
    members : sequence of LoadedModel or card paths
        Tumor segmentation models (any versions) with the same ``input_mpp``;
        card paths are loaded after the input files are checked.
    mpp : float
        µm per pixel of the tiles, 0.05–50; tiles are resampled to the models'.
    tta : {1, 2, 4, 8}
        Dihedral test-time transforms.
    stain : {"card", "none", "macenko", "reinhard"}
        Stain normalisation, fitted per tile (see :func:`napari_histo.stain.resolve`).
    out_dir : str or PathLike, optional
        Where to write ``tiles.csv`` (:data:`CSV_COLUMNS`), ``summary.json``
        and ``reliability.png`` (each atomically; the folder is created).
    progress : callable(done, total), optional
        Called after each tile.

    Returns
    -------
    Evaluation

    Raises
    ------
    EvaluationError
        Bad input files, one line naming the file and the problem; every pair
        is read and checked before any model runs, and nothing is written.
    ValueError, TypeError
        Bad `mpp`, `tta`, `stain` or `members`.
    """
    from napari_histo.stain import resolve as resolve_stain

    start = time.monotonic()
    mpp = _check_settings(mpp, tta)
    if stain is not None and not isinstance(stain, str | StainNormaliser):
        raise TypeError(f"`stain` must be a setting name or StainNormaliser, got {stain!r}")
    resolve_stain(stain, ())  # a known setting
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out_dir(out)
    pairs = find_pairs(images_dir, masks_dir)
    for pair in pairs:  # check everything first: no model time spent on a bad folder
        _check_pair(pair)
    members = _load_members(members)
    normaliser = resolve_stain(stain, [m.card for m in members])

    def tiles() -> Iterator[LabelledTile]:
        for pair in pairs:
            rgb, mask = _check_pair(pair)
            yield LabelledTile(pair.name, rgb, mask, mpp)

    rows, pooled = score_tiles(
        tiles(),
        members,
        tta=tta,
        stain=normaliser,
        progress=(lambda done: progress(done, len(pairs))) if progress else None,
    )
    summary: dict[str, Any] = {
        "images_dir": str(Path(images_dir)),
        "masks_dir": str(Path(masks_dir)),
        "models": [
            {"name": m.card.name, "version": m.card.version, "sha256": m.card.sha256}
            for m in members
        ],
        "mpp": mpp,
        "model_mpp": members[0].card.input_mpp,
        "tta": tta,
        "stain": None if normaliser is None else normaliser.spec(),
        "tiles": len(rows),
        "pooled": pooled_scores(pooled),
        "mean_per_tile": {
            k: _mean(getattr(r, k) for r in rows)
            for k in ("dice", "iou", "auroc", "ece", "epistemic_error_auroc")
        },
        "reliability": reliability_table(pooled),
        "notes": [f"{r.name}: {r.note}" for r in rows if r.note],
        "threshold": 0.5,
        "seconds": round(time.monotonic() - start, 2),
    }
    evaluation = Evaluation(rows, _json_safe(summary))
    if out is not None:
        return Evaluation(rows, evaluation.summary, write_outputs(evaluation, out))
    return evaluation


def _csv_bytes(rows: Sequence[TileScore]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = []
        for column in CSV_COLUMNS:
            value = getattr(row, column)
            if isinstance(value, float):
                value = "" if not math.isfinite(value) else f"{value:.4f}"
            values.append(value)
        writer.writerow(values)
    return buffer.getvalue().encode("utf-8")


def write_reliability_png(
    table: dict[str, list[float]], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Draw a reliability diagram (and the pixel count per bin) to a PNG, atomically.

    Parameters
    ----------
    table : dict
        :func:`reliability_table` output (``mean_probability``, ``frequency``,
        ``count`` per equal-width bin of [0, 1]).
    path : str or PathLike
    title : str
    """
    return atomic_write_bytes(path, _reliability_png(table, title))


def _reliability_png(table: dict[str, list[float]], title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mean_p = np.asarray(table["mean_probability"], dtype=np.float64)
    freq = np.asarray(table["frequency"], dtype=np.float64)
    count = np.asarray(table["count"], dtype=np.float64)
    bins = len(count)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = Figure(figsize=(5.0, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    shown = count > 0
    top.bar(centres[shown], freq[shown], width=1.0 / bins, color="#d62728", alpha=0.35,
            edgecolor="#d62728", label="tumor fraction per bin")  # fmt: skip
    top.plot(mean_p[shown], freq[shown], "o-", color="#d62728", lw=1.5, ms=4,
             label="mean probability → observed")  # fmt: skip
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed tumor fraction")
    top.legend(loc="upper left", fontsize=8)
    if title:
        top.set_title(title, fontsize=9)
    bottom.bar(centres, np.maximum(count, 0.5), width=1.0 / bins, color="0.5")
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted tumor probability")
    bottom.set_ylabel("pixels")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_outputs(evaluation: Evaluation, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``tiles.csv``, ``summary.json`` and ``reliability.png`` to `out_dir` (atomically)."""
    out = Path(out_dir)
    summary = evaluation.summary
    pooled = summary.get("pooled", {})
    ece = pooled.get("ece")
    what = (
        Path(summary["slide"]).name
        if "slide" in summary
        else f"{summary.get('tiles', len(evaluation.rows))} tiles"
    )
    title = (
        f"{what}, "
        + ", ".join(f"{m['name']} {m['version']}" for m in summary.get("models", []))
        + (f"; ECE {ece:.3f}" if isinstance(ece, float) else "")
    )
    # Everything rendered first, so a failure leaves no partial report behind.
    payloads = {
        "csv": ("tiles.csv", _csv_bytes(evaluation.rows)),
        "json": (
            "summary.json",
            (json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode(),
        ),
        "png": ("reliability.png", _reliability_png(summary["reliability"], title)),
    }
    out.mkdir(parents=True, exist_ok=True)
    return {key: atomic_write_bytes(out / name, data) for key, (name, data) in payloads.items()}


# --------------------------------------------------------------------------- slides

#: Annotation classes of an evaluated slide, in drawing order (later wins):
#: tumor inside a large non-tumor region counts as tumor; ``ignore`` always wins.
_SLIDE_CLASSES = (("non-tumor", 0), ("tumor", 1), ("ignore", UNKNOWN))
#: Labelled pixels kept for the pooled AUROC / ECE / reliability of a slide.
_SLIDE_POOL_PX = 200_000


def _slide_annotations(path: Path) -> tuple[list[Any], list[str]]:
    from napari_histo.io.annotations import read_annotations

    if not path.is_file():
        raise EvaluationError(f"{path}: no such annotation file")
    found = read_annotations(path)
    anns = [a for a in found.annotations if a.kind != "point"]
    names = {name for name, _ in _SLIDE_CLASSES}
    for i, ann in enumerate(anns):
        if ann.label not in names:
            raise EvaluationError(
                f"{path}: annotation {i} ({ann.id}): class {ann.label!r} is not one of "
                f"{sorted(names)}"
            )
    if not any(a.label in ("tumor", "non-tumor") for a in anns):
        raise EvaluationError(f"{path}: no tumor or non-tumor region to evaluate against")
    return anns, [f"{path.name}: {p}" for p in found.problems]


def evaluate_slide(
    slide_path: str | os.PathLike[str],
    annotations_path: str | os.PathLike[str],
    members: Sequence[LoadedModel | str | os.PathLike[str]],
    *,
    tta: int = 1,
    stain: str | None = "card",
    out_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Score an ensemble on an annotated slide (QuPath GeoJSON or ASAP XML).

    The engine (:func:`~napari_histo.inference.engine.infer_slide`) runs over
    the bounding box of the annotations, into a temporary result store; the
    annotations are rasterised on the result grid (µm/px of the models):
    ``tumor`` → tumor, ``non-tumor`` → not, ``ignore`` and unannotated pixels
    are left out. One row (the slide) plus pooled figures, written like
    :func:`evaluate_folder`'s.

    Parameters
    ----------
    slide_path : str or PathLike
        A slide with its µm/px in the metadata.
    annotations_path : str or PathLike
        Level-0 annotations of classes ``tumor``, ``non-tumor``, ``ignore``.
    members, tta, stain, out_dir
        As :func:`evaluate_folder`; stain normalisation is fitted once per slide.
    device : str
        Engine device ("auto", "cpu", "cuda", ...).
    progress : callable(done, total), optional
        Tiles done of total.

    Raises
    ------
    EvaluationError
        Missing or unreadable annotations, an unknown class, no tumor or
        non-tumor region, annotations outside the slide.
    HistoError
        The slide cannot be read or has no µm/px.
    """
    import tempfile

    from napari_histo.annotations.model import rasterize
    from napari_histo.inference.engine import EngineConfig, infer_slide
    from napari_histo.io.slide import Slide
    from napari_histo.stain import resolve as resolve_stain

    start = time.monotonic()
    _check_settings(1.0, tta)
    slide_path, annotations_path = Path(slide_path), Path(annotations_path)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out_dir(out)
    anns, notes = _slide_annotations(annotations_path)
    with Slide(slide_path) as slide:
        slide.require_mpp()
        width, height = slide.dimensions
    x0 = max(0, math.floor(min(a.bounds[0] for a in anns)))
    y0 = max(0, math.floor(min(a.bounds[1] for a in anns)))
    x1 = min(width, math.ceil(max(a.bounds[2] for a in anns)))
    y1 = min(height, math.ceil(max(a.bounds[3] for a in anns)))
    if x1 <= x0 or y1 <= y0:
        raise EvaluationError(
            f"{annotations_path}: the annotations lie outside the slide ({width} x {height} px)"
        )
    members = _load_members(members)
    config = EngineConfig(tta=tta, stain="none" if stain is None else stain, device=device)
    resolve_stain(config.stain, [m.card for m in members])
    with tempfile.TemporaryDirectory(prefix="napari-histo-evaluate-") as tmp:
        generator = infer_slide(
            slide_path, members, region=(x0, y0, x1 - x0, y1 - y0), config=config, out_dir=tmp
        )
        while True:
            try:
                event = next(generator)
            except StopIteration as stop:
                result = stop.value
                break
            if progress is not None:
                progress(event.done, event.total)
        geometry = result.run.geometry
        prob = np.asarray(result.run.array("probability")[...], dtype=np.float32)
        epistemic = np.asarray(result.run.array("epistemic")[...], dtype=np.float32)
        stain_setting = result.run.settings.get("stain")
    labels = np.full(geometry.shape, UNKNOWN, dtype=np.uint8)
    for name, value in _SLIDE_CLASSES:
        group = [a for a in anns if a.label == name]
        if group:
            drawn = rasterize(
                group, geometry.shape, geometry.downsample, origin=geometry.origin_l0,
                classes={name: 1},
            )  # fmt: skip
            labels[drawn.astype(bool)] = value
    known = labels != UNKNOWN
    if not known.any():
        raise EvaluationError(
            f"{annotations_path}: the annotations cover no pixel at the models' "
            f"{members[0].card.input_mpp:g} µm/px"
        )
    p, t, e = prob[known], labels[known] == 1, epistemic[known]
    figures = score_maps(p, t, e)
    row = TileScore(
        name=slide_path.name,
        **figures,
        mean_probability=float(p.mean()),
        tile_score=_top_fifth(p),
        tile_label=None,
    )
    stride = max(1, p.size // _SLIDE_POOL_PX)
    pooled = {
        "probability": p[::stride],
        "truth": t[::stride],
        "epistemic": e[::stride],
        "tile_score": np.zeros(0),
        "tile_label": np.zeros(0, np.int64),
    }
    figures_json = {k: round(float(v), 4) for k, v in figures.items()}
    summary: dict[str, Any] = {
        "slide": str(slide_path),
        "annotations": str(annotations_path),
        "models": [
            {"name": m.card.name, "version": m.card.version, "sha256": m.card.sha256}
            for m in members
        ],
        "model_mpp": members[0].card.input_mpp,
        "region_l0": [x0, y0, x1 - x0, y1 - y0],
        "tta": tta,
        "stain": None if not stain_setting else {
            "method": stain_setting["method"], "target": stain_setting["target"]
        },
        "tiles": 1,
        "pooled": figures_json,
        "mean_per_tile": figures_json,
        "reliability": reliability_table(pooled),
        "notes": notes,
        "threshold": 0.5,
        "seconds": round(time.monotonic() - start, 2),
    }  # fmt: skip
    evaluation = Evaluation([row], _json_safe(summary))
    if out is not None:
        return Evaluation([row], evaluation.summary, write_outputs(evaluation, out))
    return evaluation
