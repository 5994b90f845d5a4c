"""Real nuclei tiles with instance labels: loading, the fixed MoNuSeg split and scoring.

No Qt, no napari. Two sources are read from a data directory (the folder holding
them, or a source folder itself):

``monuseg2018_train20``
    20 MoNuSeg 2018 training tiles (Kumar et al., IEEE TMI 2017), 1000² px RGB at
    0.25 µm/px (40×), 7 organs, TCGA; ``images/<id>.png`` with
    ``instance_labels/<id>.tif`` (uint16 instance maps, 0 = background). Licence
    CC BY-NC-SA 4.0 (non-commercial, share-alike): weights trained on it carry
    these terms. The labels miss some nuclei (about 17k of the official ~21.6k),
    so unlabelled nuclei count as false positives: a ceiling on AJI and PQ.
``nuclei_pannuke_minitest10``
    10 PanNuke tiles (CC BY-NC-SA 4.0), 2× upsampled to 512² (~0.125 µm/px), with
    colour-coded class masks. Instances can NOT be recovered from them (touching
    nuclei share one colour; the other values are dithering at the edges), so the
    connected components of the foreground stand in for instances. They are never
    trained on and are scored separately, as a second source only.

The split of MoNuSeg is fixed by organ and tile (:data:`HELDOUT_TILES`: 5 tiles of 5
organs, never trained on and never used to tune anything; :data:`VALIDATION_TILES`:
3 tiles of 3 organs, for post-processing thresholds and the classical defaults; the
other 12 train). :func:`real_nuclei_quality` scores a backend on a split;
:mod:`napari_histo.training.real_nuclei` trains the HoVer-Net-style model on the
training tiles plus synthetic slides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_histo.metrics import aggregated_jaccard_index, panoptic_quality

__all__ = [
    "HELDOUT_TILES",
    "MONUSEG_DIR",
    "MONUSEG_MPP",
    "ORGANS",
    "PANNUKE_DIR",
    "PANNUKE_MPP",
    "SPLITS",
    "VALIDATION_TILES",
    "RealNucleiTile",
    "learned_segmenter",
    "load_monuseg",
    "load_pannuke",
    "monuseg_split",
    "real_nuclei_quality",
    "score_tiles",
]

MONUSEG_DIR = "monuseg2018_train20"
PANNUKE_DIR = "nuclei_pannuke_minitest10"
#: µm/px of the MoNuSeg tiles (40×) and of the 2×-upsampled PanNuke tiles.
MONUSEG_MPP = 0.25
PANNUKE_MPP = 0.125

#: Organ of each MoNuSeg 2018 training tile (TCGA case → organ, as the challenge lists
#: them; the "liver" cases carry lung-study TCGA codes, as in the challenge).
ORGANS = {
    "TCGA-18-5592-01Z-00-DX1": "liver",
    "TCGA-21-5784-01Z-00-DX1": "liver",
    "TCGA-38-6178-01Z-00-DX1": "liver",
    "TCGA-49-4488-01Z-00-DX1": "liver",
    "TCGA-50-5931-01Z-00-DX1": "liver",
    "TCGA-A7-A13E-01Z-00-DX1": "breast",
    "TCGA-A7-A13F-01Z-00-DX1": "breast",
    "TCGA-AR-A1AK-01Z-00-DX1": "breast",
    "TCGA-AR-A1AS-01Z-00-DX1": "breast",
    "TCGA-E2-A1B5-01Z-00-DX1": "breast",
    "TCGA-E2-A14V-01Z-00-DX1": "breast",
    "TCGA-B0-5698-01Z-00-DX1": "kidney",
    "TCGA-B0-5710-01Z-00-DX1": "kidney",
    "TCGA-B0-5711-01Z-00-DX1": "kidney",
    "TCGA-HE-7128-01Z-00-DX1": "kidney",
    "TCGA-HE-7129-01Z-00-DX1": "kidney",
    "TCGA-HE-7130-01Z-00-DX1": "kidney",
    "TCGA-G9-6336-01Z-00-DX1": "prostate",
    "TCGA-G9-6348-01Z-00-DX1": "prostate",
    "TCGA-G9-6356-01Z-00-DX1": "prostate",
    "TCGA-G9-6362-01Z-00-DX1": "prostate",
    "TCGA-G9-6363-01Z-00-DX1": "prostate",
    "TCGA-CH-5767-01Z-00-DX1": "prostate",
    "TCGA-DK-A2I6-01A-01-TS1": "bladder",
    "TCGA-G2-A2EK-01A-02-TSB": "bladder",
    "TCGA-AY-A8YK-01A-01-TS1": "colon",
    "TCGA-NH-A8F7-01A-01-TS1": "colon",
    "TCGA-KB-A93J-01A-01-TS1": "stomach",
    "TCGA-RD-A8N9-01A-01-TS1": "stomach",
}

#: Never trained on, never used to tune thresholds: one tile of each of five organs
#: (the bladder one a frozen section).
HELDOUT_TILES = (
    "TCGA-49-4488-01Z-00-DX1",  # liver
    "TCGA-E2-A14V-01Z-00-DX1",  # breast
    "TCGA-HE-7129-01Z-00-DX1",  # kidney
    "TCGA-G9-6362-01Z-00-DX1",  # prostate
    "TCGA-G2-A2EK-01A-02-TSB",  # bladder
)
#: Tuning of post-processing thresholds and of the classical backend's defaults.
VALIDATION_TILES = (
    "TCGA-38-6178-01Z-00-DX1",  # liver
    "TCGA-AR-A1AS-01Z-00-DX1",  # breast
    "TCGA-HE-7128-01Z-00-DX1",  # kidney
)
SPLITS = ("train", "validation", "heldout", "all")


@dataclass(frozen=True)
class RealNucleiTile:
    """One real tile with nucleus instance labels.

    Attributes
    ----------
    name : str
        File stem.
    source : str
        ``"monuseg"`` or ``"pannuke"``.
    organ : str
        Organ (``"unknown"`` when the source does not say).
    mpp : float
        µm per pixel.
    rgb : ndarray of uint8, shape (H, W, 3)
    labels : ndarray of int32, shape (H, W)
        Instances 1..n, 0 = background.
    exact_instances : bool
        False when instances are only the connected components of a mask (PanNuke).
    """

    name: str
    source: str
    organ: str
    mpp: float
    rgb: np.ndarray = dataclasses.field(repr=False)
    labels: np.ndarray = dataclasses.field(repr=False)
    exact_instances: bool = True


def monuseg_split(name: str) -> str:
    """``"heldout"``, ``"validation"`` or ``"train"`` for a MoNuSeg tile name."""
    if name in HELDOUT_TILES:
        return "heldout"
    if name in VALIDATION_TILES:
        return "validation"
    return "train"


def _source_dir(data_dir: str | Path, folder: str, marker: str) -> Path:
    """`data_dir` itself when it holds `marker` (a sub-folder), else ``data_dir / folder``."""
    data_dir = Path(data_dir)
    for candidate in (data_dir, data_dir / folder):
        if (candidate / marker).is_dir():
            return candidate
    raise FileNotFoundError(f"no {folder!r} folder (with {marker}/) in or at {data_dir}")


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def load_monuseg(data_dir: str | Path, split: str = "all") -> list[RealNucleiTile]:
    """MoNuSeg tiles of one split, in name order.

    Parameters
    ----------
    data_dir : str or Path
        A folder holding ``monuseg2018_train20``, or that folder itself (or any folder
        with the same ``images/*.png`` + ``instance_labels/*.tif`` layout).
    split : {"train", "validation", "heldout", "all"}
        Which tiles (see :data:`HELDOUT_TILES`, :data:`VALIDATION_TILES`).

    Returns
    -------
    list of RealNucleiTile

    Raises
    ------
    FileNotFoundError
        If there is no such folder or it holds no image with labels.
    ValueError
        For an unknown split or an image whose labels differ in size.
    """
    import tifffile

    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")
    root = _source_dir(data_dir, MONUSEG_DIR, "images")
    tiles = []
    for image_path in sorted((root / "images").glob("*.png")):
        name = image_path.stem
        labels_path = root / "instance_labels" / f"{name}.tif"
        if not labels_path.is_file() or (split != "all" and monuseg_split(name) != split):
            continue
        rgb = _read_rgb(image_path)
        labels = np.asarray(tifffile.imread(labels_path)).astype(np.int32)
        if labels.shape != rgb.shape[:2]:
            raise ValueError(f"{labels_path}: labels {labels.shape} differ from image {rgb.shape}")
        tiles.append(
            RealNucleiTile(name, "monuseg", ORGANS.get(name, "unknown"), MONUSEG_MPP, rgb, labels)
        )
    if not tiles and split == "all":
        raise FileNotFoundError(f"{root} holds no images/*.png with instance_labels/*.tif")
    return tiles


def load_pannuke(data_dir: str | Path) -> list[RealNucleiTile]:
    """PanNuke mini-test tiles; instances = connected components of the mask (approximate).

    Parameters
    ----------
    data_dir : str or Path
        A folder holding ``nuclei_pannuke_minitest10``, or that folder itself.

    Returns
    -------
    list of RealNucleiTile
        With ``exact_instances=False``.
    """
    root = _source_dir(data_dir, PANNUKE_DIR, "data") / "data"
    tiles = []
    for image_path in sorted((root / "images").glob("*.png")):
        mask_path = root / "masks" / image_path.name
        if not mask_path.is_file():
            continue
        mask = _read_rgb(mask_path)
        labels, _ = ndi.label(mask.max(axis=2) > 0)
        tiles.append(
            RealNucleiTile(
                image_path.stem, "pannuke", "unknown", PANNUKE_MPP, _read_rgb(image_path),
                labels.astype(np.int32), exact_instances=False,
            )
        )  # fmt: skip
    return tiles


# -- scoring ---------------------------------------------------------------------------------


def score_tiles(
    segment: Callable[[np.ndarray, float], np.ndarray], tiles: Sequence[RealNucleiTile]
) -> dict[str, float]:
    """Mean AJI, PQ, DQ, SQ over tiles of ``segment(rgb, mpp) -> labels``, and per tile AJI."""
    if not tiles:
        raise ValueError("no tiles to score")
    rows = []
    out: dict[str, float] = {}
    for tile in tiles:
        pred = segment(tile.rgb, tile.mpp)
        aji = aggregated_jaccard_index(tile.labels, pred)
        pq, dq, sq = panoptic_quality(tile.labels, pred)
        rows.append((aji, pq, dq, sq))
        out[f"aji_{tile.name}"] = round(float(aji), 4)
    aji, pq, dq, sq = (round(float(v), 4) for v in np.mean(rows, axis=0))
    return {"aji": aji, "pq": pq, "dq": dq, "sq": sq, "n_tiles": len(tiles)} | out


def _segmenter(method: str, card_path, classical_params, hv_params):
    from napari_histo.nuclei.classical import ClassicalParams, segment_nuclei

    if method == "classical":
        params = ClassicalParams() if classical_params is None else classical_params
        return lambda rgb, mpp: segment_nuclei(rgb, mpp, "classical", params=params)
    if method != "learned":
        raise ValueError(f"`method` must be 'learned' or 'classical', got {method!r}")
    from napari_histo.nuclei.learned import learned_model

    return learned_segmenter(learned_model(card_path), hv_params, classical_params)


def learned_segmenter(loaded, hv_params=None, classical_params=None):
    """``segment(rgb, mpp)`` as ``segment_nuclei(..., "learned")`` runs it (its size limits)."""
    from napari_histo.nuclei.classical import ClassicalParams
    from napari_histo.nuclei.learned import segment_learned

    params = ClassicalParams() if classical_params is None else classical_params

    def segment(rgb: np.ndarray, mpp: float) -> np.ndarray:
        return segment_learned(
            rgb, mpp, min_area_um2=params.min_area_um2, max_area_um2=params.max_area_um2,
            tissue_od=params.tissue_od, params=hv_params, loaded=loaded,
        )  # fmt: skip

    return segment


def real_nuclei_quality(
    data_dir: str | Path,
    card_path: str | Path | None = None,
    method: str = "learned",
    *,
    split: str = "heldout",
    source: str = "monuseg",
    classical_params=None,
    hv_params=None,
    per_tile: bool = False,
) -> dict[str, float]:
    """AJI, PQ, DQ and SQ of a nuclei backend on real tiles (mean over tiles).

    Parameters
    ----------
    data_dir : str or Path
        Folder with ``monuseg2018_train20`` (and ``nuclei_pannuke_minitest10``).
    card_path : str or Path, optional
        Learned model card (default: the bundled default model).
    method : {"learned", "classical"}
        Backend.
    split : {"heldout", "validation", "train", "all"}
        MoNuSeg tiles to score (ignored for PanNuke, which is never trained on).
    source : {"monuseg", "pannuke"}
        Which tiles; PanNuke instances are approximate (see :func:`load_pannuke`).
    classical_params : ClassicalParams, optional
        Classical parameters (default the shipped defaults); the learned backend takes
        its size limits and ``tissue_od`` from them, as ``segment_nuclei`` does.
    hv_params : HVParams, optional
        Learned post-processing (default the shipped defaults).
    per_tile : bool
        Add ``aji_<tile>`` entries.

    Returns
    -------
    dict
        ``{"aji", "pq", "dq", "sq", "n_tiles"}`` (and per-tile AJI when asked).
    """
    if source == "monuseg":
        tiles = load_monuseg(data_dir, split)
    elif source == "pannuke":
        tiles = load_pannuke(data_dir)
    else:
        raise ValueError(f"`source` must be 'monuseg' or 'pannuke', got {source!r}")
    scores = score_tiles(_segmenter(method, card_path, classical_params, hv_params), tiles)
    if not per_tile:
        scores = {k: v for k, v in scores.items() if not k.startswith("aji_")}
    return scores
