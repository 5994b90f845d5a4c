"""Real H&E tiles with expert tumor labels, at a model's resolution, split by source.

Each source of ``shared/data/real`` (see its README and every folder's
PROVENANCE.txt) is read into :class:`RealTile` objects: an RGB image resampled
to the model's µm/px, a per-pixel label (0 non-tumor, 1 tumor, 255 unknown) and,
for sources with tile-level labels only, the tile's label. The split into
training and held-out tiles is fixed here, per source, by patient or image,
so no recipe or benchmark ever scores on what it trained on.

Scales marked *estimated* are not in the files; they were judged from nucleus
size (lymphocyte nuclei about 6–7 µm, tumor nuclei about 8–12 µm across).
"""

from __future__ import annotations

import csv
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import torch
import torch.nn.functional as F

from napari_histo.training.losses import IGNORE

__all__ = [
    "SOURCES",
    "RealTile",
    "Source",
    "load_source",
    "load_tumor_tiles",
    "resample_labels",
    "resample_rgb",
]


@dataclass(frozen=True)
class Source:
    """One folder of real tiles: where it is, its scale, organ and licence."""

    name: str
    folder: str
    mpp: float
    mpp_note: str
    organ: str
    licence: str
    citation: str
    labels: str  # "pixel" or "tile"


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "camelyon16",
            "camelyon16_tiles",
            1.2,
            "estimated from nucleus size (provenance: about 1 µm/px)",
            "lymph node",
            "CC0 1.0",
            "CAMELYON16/17 (Litjens et al. 2018)",
            "pixel",
        ),
        Source(
            "bcss",
            "bcss_tumor_mask_3pairs",
            0.25,
            "BCSS native 0.25 µm/px",
            "breast",
            "CC0 1.0",
            "BCSS (Amgad et al. 2019), TCGA-BRCA",
            "pixel",
        ),
        Source(
            "glas",
            "glas_tiles",
            0.62,
            "GlaS 20x, about 0.62 µm/px",
            "colon",
            "GlaS@MICCAI2015 research / non-commercial use",
            "GlaS (Sirinukunwattana et al. 2017)",
            "pixel",
        ),
        Source(
            "ebhi",
            "ebhi_tiles",
            0.5,
            "estimated from nucleus size (224 px originals upscaled to 512)",
            "colon",
            "CC BY 4.0 (assumed, figshare default)",
            "EBHI-Seg (Shi et al. 2023)",
            "pixel",
        ),
        Source(
            "kather2016",
            "kather2016_samples24",
            0.495,
            "Kather 2016 native 0.495 µm/px",
            "colorectum",
            "CC BY 4.0",
            "Kather et al. 2016 (Zenodo 53169)",
            "pixel",
        ),
        Source(
            "oral_oscc",
            "oral_oscc_normal_224",
            1.1,
            "estimated from nucleus size, 400x photos only (squashed to 224², anisotropic)",
            "oral mucosa",
            "CC BY 4.0 (Rahman et al. 2020, Mendeley) / CC0 (Kaggle copy)",
            "Rahman et al. 2020, histopathological imaging database for oral cancer",
            "tile",
        ),
    )
}

#: Held-out tiles per source (never trained on): chosen by patient or image, spread
#: over classes. Everything else of a source is training data.
HELD_OUT: dict[str, frozenset[str]] = {
    "camelyon16": frozenset({"10676", "10684", "10692", "10698"}),
    "bcss": frozenset({"1015"}),
    "glas": frozenset({"testA_29", "testA_31", "testA_34", "testA_35", "testB_5", "testB_8"}),
    # by patient: these patients have no tile in the training part
    "ebhi": frozenset(
        {
            "C-GT2001838-1-400-005",
            "C-GT2012232-3-400-004",
            "C-GT2012286-3-400-004",
            "C-GT2100144-1-400-006",
            "B-GTDC2102188-3-400-002",
            "C-GTDC2102188-3-400-003",
        }
    ),
    "kather2016": frozenset(),  # the last tile of every class: see _kather
}
#: Oral tiles: a fixed fifth of the original (non-augmented) 400x photos by name hash.
ORAL_HELD_OUT_FRACTION = 0.2


@dataclass(frozen=True)
class RealTile:
    """One labelled real tile at the model's resolution.

    Attributes
    ----------
    source, name : str
        Source key of :data:`SOURCES` and the file stem.
    image : ndarray of uint8, shape (H, W, 3)
        RGB at `mpp`.
    mask : ndarray of uint8, shape (H, W)
        0 non-tumor, 1 tumor, 255 unknown.
    tile_label : int or None
        1 if the tile holds tumor, 0 if not, None when only `mask` is known.
    mpp : float
        µm per pixel of `image` and `mask`.
    heldout : bool
        True for tiles of the held-out split.
    """

    source: str
    name: str
    image: np.ndarray
    mask: np.ndarray
    tile_label: int | None
    mpp: float
    heldout: bool


# --------------------------------------------------------------------------- resampling


def resample_rgb(rgb: np.ndarray, factor: float) -> np.ndarray:
    """RGB uint8 (H, W, 3) scaled by `factor` (antialiased bilinear); `factor` 1 copies."""
    if abs(factor - 1) < 1e-3:
        return np.ascontiguousarray(rgb[..., :3])
    t = torch.from_numpy(np.ascontiguousarray(rgb[..., :3])).permute(2, 0, 1)[None].float()
    size = (max(1, round(rgb.shape[0] * factor)), max(1, round(rgb.shape[1] * factor)))
    out = F.interpolate(t, size=size, mode="bilinear", antialias=factor < 1, align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resample_labels(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Label image (H, W) resampled to `shape` by nearest neighbour (labels stay labels)."""
    if mask.shape == shape:
        return mask
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0], mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1], mask.shape[1] - 1)
    return mask[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def _read(path: Path) -> np.ndarray:
    try:
        image = imagecodecs.imread(str(path))
    except Exception as error:  # corrupt or unknown files: one line naming the file
        raise ValueError(f"{path}: cannot decode image ({error})") from None
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]


def _binary(mask: np.ndarray, threshold: int = 128) -> np.ndarray:
    grey = mask.max(axis=2) if mask.ndim == 3 else mask
    return (grey >= threshold).astype(np.uint8)


# --------------------------------------------------------------------------- sources


def _pairs(folder: Path, images: str, masks: str) -> Iterator[tuple[str, Path, Path]]:
    for image in sorted((folder / images).iterdir()):
        mask = folder / masks / image.name
        if not mask.exists():
            candidates = list((folder / masks).glob(image.stem + ".*"))
            if not candidates:
                raise ValueError(f"{image}: no mask {mask.name} in {folder / masks}")
            mask = candidates[0]
        yield image.stem, image, mask


def _camelyon(folder: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, int | None]]:
    for name, image, mask in _pairs(folder, "images", "masks"):
        yield name, _read(image), _binary(_read(mask)), None


def _bcss(folder: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, int | None]]:
    for name, image, mask in _pairs(folder / "data", "images", "masks"):
        yield name, _read(image), _binary(_read(mask)), None


def _csv_map(path: Path, key: str, value: str) -> dict[str, str]:
    """``{row[key]: row[value]}`` of a CSV table; ValueError naming `path` when it cannot
    be read or lacks a column."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in (key, value) if c not in (reader.fieldnames or ())]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a readable CSV table ({err})") from err
    if missing:
        raise ValueError(f"{path}: needs the columns {key!r} and {value!r} (missing: {missing})")
    return {row[key]: (row[value] or "").strip() for row in rows}


def _glas(folder: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, int | None]]:
    grades = _csv_map(folder / "grades.csv", "name", "grade_glas")
    for name, image, mask in _pairs(folder, "images", "masks"):
        if name not in grades:
            raise ValueError(f"{image}: no grade in {folder / 'grades.csv'}")
        glands = _binary(_read(mask))
        # Malignant glands are tumor; benign (healthy or adenomatous) images hold none.
        label = glands if grades[name] == "malignant" else np.zeros_like(glands)
        yield name, _read(image), label, None


#: EBHI classes: adenocarcinoma lesions are tumor; benign lesions (low-grade
#: dysplasia, polyp, serrated adenoma) and normal mucosa are not; high-grade
#: intraepithelial neoplasia is left out (neither label is safe).
_EBHI_TUMOR = {"AD": 1, "LO": 0, "PO": 0, "SE": 0, "NO": 0}


def _ebhi(folder: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, int | None]]:
    classes = {
        Path(file).stem: kind
        for file, kind in _csv_map(folder / "labels.csv", "file", "class").items()
    }
    for name, image, mask in _pairs(folder, "images", "masks"):
        kind = classes.get(name)
        if kind not in _EBHI_TUMOR:
            continue
        lesion = _binary(_read(mask), threshold=40)
        yield name, _read(image), lesion * np.uint8(_EBHI_TUMOR[kind]), None


def _kather(folder: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, int | None]]:
    for class_dir in sorted(p for p in (folder / "images").iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        tumor = class_dir.name.endswith("TUMOR")
        for i, path in enumerate(files):
            rgb = _read(path)
            mask = np.full(rgb.shape[:2], int(tumor), np.uint8)
            tag = "heldout" if i == len(files) - 1 else "train"
            yield f"{class_dir.name}/{path.stem}@{tag}", rgb, mask, int(tumor)


def _oral(folder: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray, int | None]]:
    seen: set[str] = set()
    for path in sorted((folder / "images").glob("*/*/*.jpg")):
        stem = path.stem
        # Only the original 400x photos: aug_* are copies, 100x is ~5 µm/px after squashing.
        if stem.startswith("aug_") or "_400x_" not in stem or stem in seen:
            continue
        seen.add(stem)
        tumor = int(stem.startswith("OSCC"))
        rgb = _read(path)
        # Normal tiles are non-tumor everywhere; OSCC tiles say only "tumor is here".
        mask = np.zeros(rgb.shape[:2], np.uint8) if not tumor else np.full(rgb.shape[:2], IGNORE)
        yield stem, rgb, mask.astype(np.uint8), tumor


_LOADERS = {
    "camelyon16": _camelyon,
    "bcss": _bcss,
    "glas": _glas,
    "ebhi": _ebhi,
    "kather2016": _kather,
    "oral_oscc": _oral,
}


def _is_heldout(source: str, name: str) -> bool:
    if source == "kather2016":
        return name.endswith("@heldout")
    if source == "oral_oscc":
        return zlib.crc32(name.encode()) % 1000 < ORAL_HELD_OUT_FRACTION * 1000
    return name in HELD_OUT[source]


def load_source(
    data_dir: str | os.PathLike[str], source: str, model_mpp: float, *, split: str = "all"
) -> list[RealTile]:
    """Tiles of one source resampled to `model_mpp`.

    Parameters
    ----------
    data_dir : path
        The real-data folder (``shared/data/real``).
    source : str
        A key of :data:`SOURCES`.
    model_mpp : float
        µm per pixel to resample to.
    split : {"all", "train", "heldout"}
        Which part of the fixed split.

    Raises
    ------
    ValueError
        Unknown source or split, a missing folder, or an unreadable file (one line
        naming it).
    """
    if source not in SOURCES:
        raise ValueError(f"`source` must be one of {sorted(SOURCES)}, got {source!r}")
    if split not in ("all", "train", "heldout"):
        raise ValueError(f"`split` must be 'all', 'train' or 'heldout', got {split!r}")
    spec = SOURCES[source]
    folder = Path(data_dir) / spec.folder
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder (is {data_dir} the real-data directory?)")
    factor = spec.mpp / model_mpp
    tiles = []
    for name, rgb, mask, tile_label in _LOADERS[source](folder):
        heldout = _is_heldout(source, name)
        if (split == "train" and heldout) or (split == "heldout" and not heldout):
            continue
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"{folder}/{name}: mask {mask.shape} and image {rgb.shape[:2]} differ")
        image = resample_rgb(rgb, factor)
        tiles.append(
            RealTile(
                source=source,
                name=name.split("@")[0],
                image=image,
                mask=resample_labels(mask, image.shape[:2]),
                tile_label=tile_label,
                mpp=model_mpp,
                heldout=heldout,
            )
        )
    return tiles


def load_tumor_tiles(
    data_dir: str | os.PathLike[str],
    model_mpp: float,
    *,
    split: str = "train",
    sources: tuple[str, ...] | None = None,
) -> list[RealTile]:
    """Tiles of every source (or `sources`) at `model_mpp`; see :func:`load_source`."""
    return [
        tile
        for source in (sources or tuple(SOURCES))
        for tile in load_source(data_dir, source, model_mpp, split=split)
    ]


def heldout_tumor_scores(
    data_dir: str | os.PathLike[str],
    card_paths: list[os.PathLike[str]] | list[str],
    *,
    tta: int = 1,
    sources: tuple[str, ...] | None = None,
) -> dict[str, dict[str, float]]:
    """Pooled figures of an ensemble on the held-out tiles of each real source.

    Returns ``{source: {"dice", "iou", "auroc", "ece", "epistemic_error_auroc",
    ...}}``; sources with tile labels add ``tile_auroc`` / ``tile_accuracy``.
    """
    from napari_histo.evaluate import LabelledTile, pooled_scores, score_tiles
    from napari_histo.models import load_model

    members = [load_model(p) for p in card_paths]
    model_mpp = members[0].card.input_mpp
    result = {}
    for source in sources or tuple(SOURCES):
        tiles = [
            LabelledTile(t.name, t.image, t.mask, t.mpp, t.tile_label)
            for t in load_source(data_dir, source, model_mpp, split="heldout")
        ]
        if tiles:
            _, pooled = score_tiles(tiles, members, tta=tta)
            result[source] = pooled_scores(pooled)
    return result
