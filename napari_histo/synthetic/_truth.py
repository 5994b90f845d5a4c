"""Ground truth of a synthetic slide, stored as a zarr v3 group beside the ``.svs``.

Layout of ``<stem>.truth.zarr``:

``tissue``, ``tumor``
    uint8 (0/1) masks, shape ``(ceil(height / D), ceil(width / D))`` with
    ``D = attrs["truth_downsample"]``; mask pixel ``(i, j)`` covers level-0 pixels
    ``[j*D, (j+1)*D) x [i*D, (i+1)*D)`` and holds the layout evaluated at its centre.
``nuclei``
    uint32 instance labels at level 0, shape ``(height, width)``, chunks 1024², zstd;
    0 is background. Only the level-0 ``(x, y, w, h)`` rectangles listed in
    ``attrs["nuclei_regions"]`` are written; elsewhere the array reads 0 (no chunks).
``nuclei_class``
    uint32, shape ``(n, 2)``: ``(id, class)`` rows sorted by id for every id present in
    ``nuclei``; classes are 1 normal, 2 tumour, 3 lymphocyte.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo.errors import StoreError
from napari_histo.synthetic._layout import F, SlideModel, interp_rect
from napari_histo.synthetic._render import CLASSES

GENERATOR_VERSION = "1"
CHUNK_PX = 1024


def truth_path_for(slide_path: str | os.PathLike[str]) -> Path:
    """Path of the ground-truth zarr written beside a synthetic slide.

    Examples
    --------
    >>> truth_path_for("/data/slide.svs").as_posix()
    '/data/slide.truth.zarr'
    """
    p = Path(slide_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return p.with_name(f"{stem}.truth.zarr")


def truth_downsample_for(width: int, height: int) -> int:
    """Mask downsample: the smallest power of two >= 16 giving <= 8192 px a side."""
    d = 16
    while -(-max(width, height) // d) > 8192:
        d *= 2
    return d


def layout_masks(model: SlideModel, downsample: int) -> tuple[np.ndarray, np.ndarray]:
    """Tissue and tumour masks (uint8 0/1) at ``downsample``, evaluated at block centres."""
    d = downsample
    h, w = -(-model.height // d), -(-model.width // d)
    tissue = np.zeros((h, w), np.uint8)
    tumor = np.zeros((h, w), np.uint8)
    band = 512
    for i0 in range(0, h, band):
        n = min(band, h - i0)
        f = interp_rect(
            model.fields,
            model.grid_px,
            d / 2,
            (i0 + 0.5) * d,
            w,
            n,
            step=d,
            which=[F["tissue_d"], F["tumor_d"]],
        )
        tissue[i0 : i0 + n] = f[0] > 0
        tumor[i0 : i0 + n] = f[1] > 0
    return tissue, tumor


class TruthWriter:
    """Write the truth group of one slide at ``path`` (a temporary name, renamed later).

    Parameters
    ----------
    path : Path
        Directory of the zarr group to create.
    model : SlideModel
        The slide.
    regions : sequence of (x, y, w, h)
        Level-0 rectangles whose nucleus labels are stored.
    attrs : mapping
        Extra group attributes.
    """

    def __init__(
        self,
        path: Path,
        model: SlideModel,
        regions: Sequence[tuple[int, int, int, int]],
        attrs: Mapping[str, Any],
    ) -> None:
        import zarr

        self.regions = [tuple(int(v) for v in r) for r in regions]
        self._classes: dict[int, int] = {}
        self._group = zarr.open_group(store=str(path), mode="w", zarr_format=3)
        d = truth_downsample_for(model.width, model.height)
        tissue, tumor = layout_masks(model, d)
        for name, mask in (("tissue", tissue), ("tumor", tumor)):
            arr = self._group.create_array(
                name,
                shape=mask.shape,
                chunks=(min(CHUNK_PX, mask.shape[0]), min(CHUNK_PX, mask.shape[1])),
                dtype="uint8",
                fill_value=0,
            )
            arr[...] = mask
        self.nuclei = self._group.create_array(
            "nuclei",
            shape=(model.height, model.width),
            dtype="uint32",
            fill_value=0,
            chunks=(min(CHUNK_PX, model.height), min(CHUNK_PX, model.width)),
        )
        self._attrs = {
            "generator": "napari_histo.synthetic",
            "generator_version": GENERATOR_VERSION,
            "seed": model.seed,
            "mpp": model.mpp,
            "width": model.width,
            "height": model.height,
            "truth_downsample": d,
            "nuclei_regions": [list(r) for r in self.regions],
            "classes": {str(k): v for k, v in CLASSES.items()},
            "tissue_fraction": float(tissue.mean()),
            "tumor_fraction_of_tissue": float(tumor.sum() / max(1, tissue.sum())),
            "artefacts": list(model.artefacts),
            "stain_od": {"hematoxylin": model.stain[0].tolist(), "eosin": model.stain[1].tolist()},
            **dict(attrs),
        }

    def wants(self, x0: int, y0: int, w: int, h: int) -> bool:
        """Whether the level-0 rectangle intersects a labelled region."""
        return any(_intersect((x0, y0, w, h), r) is not None for r in self.regions)

    def put(self, x0: int, y0: int, lab: np.ndarray, classes: np.ndarray) -> None:
        """Store the parts of a label block (origin ``x0, y0``) that lie in the regions."""
        present: set[int] = set()
        for r in self.regions:
            box = _intersect((x0, y0, lab.shape[1], lab.shape[0]), r)
            if box is None:
                continue
            bx, by, bw, bh = box
            part = lab[by - y0 : by - y0 + bh, bx - x0 : bx - x0 + bw]
            if part.any():
                self.nuclei[by : by + bh, bx : bx + bw] = part
                present.update(np.unique(part).tolist())
        for i, c in classes.tolist():
            if i in present:
                self._classes[i] = c

    def close(self) -> None:
        """Write the class table and the attributes."""
        table = np.array(sorted(self._classes.items()), np.uint32).reshape(-1, 2)
        arr = self._group.create_array(
            "nuclei_class",
            shape=table.shape,
            chunks=(max(1, len(table)), 2),
            dtype="uint32",
            fill_value=0,
        )
        if len(table):
            arr[...] = table
        self._group.attrs.update(self._attrs | {"nuclei_count": len(table)})


def _intersect(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return (x0, y0, x1 - x0, y1 - y0) if x1 > x0 and y1 > y0 else None


@dataclass(frozen=True)
class SyntheticTruth:
    """Ground truth of a synthetic slide, as returned by :func:`read_truth`.

    Attributes
    ----------
    tissue, tumor : zarr.Array of uint8, shape (ceil(height / D), ceil(width / D))
        0/1 masks at ``downsample`` D.
    nuclei : zarr.Array of uint32, shape (height, width)
        Level-0 nucleus instance labels, written inside ``regions`` only.
    nuclei_class : np.ndarray of uint32, shape (n, 2)
        ``(id, class)`` rows sorted by id (1 normal, 2 tumour, 3 lymphocyte).
    downsample : int
        Mask downsample relative to level 0.
    regions : tuple of (x, y, w, h)
        Level-0 rectangles where ``nuclei`` holds labels.
    attrs : dict
        All group attributes (seed, mpp, width, height, generator_version, ...).
    """

    tissue: Any
    tumor: Any
    nuclei: Any
    nuclei_class: np.ndarray
    downsample: int
    regions: tuple[tuple[int, int, int, int], ...]
    attrs: dict

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def class_of(self, ids: np.ndarray) -> np.ndarray:
        """Class of each nucleus id (0 for ids not in the table, e.g. background)."""
        ids = np.asarray(ids)
        table = self.nuclei_class
        if len(table) == 0:
            return np.zeros(ids.shape, np.uint8)
        k = np.clip(np.searchsorted(table[:, 0], ids), 0, len(table) - 1)
        return np.where(table[k, 0] == ids, table[k, 1], 0).astype(np.uint8)


def read_truth(truth_path: str | os.PathLike[str]) -> SyntheticTruth:
    """Open the ground truth written by :func:`write_synthetic_slide`.

    Parameters
    ----------
    truth_path : str or PathLike
        The ``.truth.zarr`` directory (see :func:`truth_path_for`).

    Returns
    -------
    SyntheticTruth

    Raises
    ------
    StoreError
        If the path is not a synthetic-slide truth group.
    """
    import zarr

    try:
        g = zarr.open_group(store=str(truth_path), mode="r")
        attrs = dict(g.attrs)
        arrays = {k: g[k] for k in ("tissue", "tumor", "nuclei", "nuclei_class")}
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise StoreError(f"{truth_path}: not a synthetic-slide truth group ({exc})") from exc
    if attrs.get("generator") != "napari_histo.synthetic":
        raise StoreError(f"{truth_path}: not a synthetic-slide truth group (no generator attr)")
    return SyntheticTruth(
        tissue=arrays["tissue"],
        tumor=arrays["tumor"],
        nuclei=arrays["nuclei"],
        nuclei_class=np.asarray(arrays["nuclei_class"][...]),
        downsample=int(attrs["truth_downsample"]),
        regions=tuple(tuple(int(v) for v in r) for r in attrs["nuclei_regions"]),
        attrs=attrs,
    )
