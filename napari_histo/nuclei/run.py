"""A stored whole-slide nuclei run: its layout, reading it back, finding a slide's runs.

See :mod:`napari_histo.nuclei.store` for the layout and the job that writes it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import zarr

from napari_histo.errors import StoreError
from napari_histo.io.slide import Slide
from napari_histo.io.store import (
    ResultStore,
    StoredRun,
    default_store_path,
    slide_identity,
)

__all__ = [
    "COLUMNS",
    "GROUP",
    "NucleiRun",
    "find_nuclei_runs",
    "open_store_for",
    "stored_runs",
    "table",
    "timestamp",
]

GROUP = "nuclei"


#: Measurement columns (``tumor_probability`` NaN where no tumour result covers a nucleus).
COLUMNS = (
    "id",
    "centroid_x_um",
    "centroid_y_um",
    "area_um2",
    "eccentricity",
    "solidity",
    "mean_haematoxylin",
    "tumor_probability",
)


class NucleiRun(StoredRun):
    """One nuclei run of a result store (see :mod:`napari_histo.nuclei.store` for the layout)."""

    def __init__(self, store: ResultStore, group: zarr.Group) -> None:
        super().__init__(store, group)
        try:
            self._done = np.asarray(group["done"][...], dtype=bool)
            self._next = np.asarray(group["next_id"][...], dtype=np.int64)
        except (KeyError, ValueError, OSError) as err:
            raise StoreError(f"{store.path}: unreadable nuclei run {group.path} ({err})") from err

    def __repr__(self) -> str:
        return f"NucleiRun({str(self.store.path)!r}, {self.run_id!r}, status={self.status!r})"

    @property
    def method(self) -> str:
        return str(self.settings.get("method"))

    @property
    def done(self) -> np.ndarray:
        """Copy of the block done mask, bool ``(block_rows, block_cols)``."""
        return self._done.copy()

    @property
    def next_id(self) -> int:
        """The first id not used by a finished block."""
        done = self._next[self._done]
        return int(max(1, done.max())) if done.size else 1

    def labels(self, level: int = 0) -> zarr.Array:
        """Label array at pyramid `level` (0: level-0 resolution over the region)."""
        return self.group["labels"][str(level)]

    def levels(self) -> list[zarr.Array]:
        """All label pyramid levels, largest first."""
        count = len(self.group["labels"].attrs["multiscales"][0]["datasets"])
        return [self.labels(level) for level in range(count)]

    def features(self) -> dict[str, np.ndarray]:
        """Measurement table (``id`` int64, the rest float64), empty columns if not complete."""
        if "features" not in self.group:
            return {c: np.zeros(0, np.int64 if c == "id" else np.float64) for c in COLUMNS}
        rows = np.asarray(self.group["features"][...], np.float64).reshape(-1, len(COLUMNS))
        return table(rows)

    # -- writing (the job in napari_histo.nuclei.store) ------------------------
    def write_state(self) -> None:
        self.group["done"][...] = self._done.astype(np.uint8)
        self.group["next_id"][...] = self._next
        self.group.attrs["updated"] = timestamp()

    def commit_block(self, row: int, col: int, next_id: int) -> None:
        self._done[row, col] = True
        self._next[row, col] = next_id
        self.write_state()


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def table(rows: np.ndarray) -> dict[str, np.ndarray]:
    table = {c: rows[:, i].copy() for i, c in enumerate(COLUMNS)}
    table["id"] = table["id"].astype(np.int64)
    return table


def stored_runs(store: ResultStore) -> list[NucleiRun]:
    if GROUP not in store.root:
        return []
    group = store.root[GROUP]
    return [NucleiRun(store, group[k]) for k in sorted(group.group_keys()) if "." not in k[:1]]


def find_nuclei_runs(
    slide_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    complete: bool = True,
) -> list[NucleiRun]:
    """Nuclei runs stored for a slide (complete ones only by default), whole-slide first."""
    path = Path(slide_path)
    if not default_store_path(path, out_dir).exists():
        return []
    with Slide(path) as slide:
        store = open_store_for(slide, out_dir, mode="r")
    runs = [r for r in stored_runs(store) if r.complete or not complete]
    return sorted(runs, key=lambda r: -r.geometry.shape[0] * r.geometry.shape[1])


def open_store_for(
    slide: Slide, out_dir: str | os.PathLike[str] | None = None, mode: str = "a"
) -> ResultStore:
    """The :class:`ResultStore` of `slide` (beside it, or in `out_dir`)."""
    identity = slide_identity(slide.path, slide.dimensions, slide.mpp)
    return ResultStore(default_store_path(slide.path, out_dir), identity, mode=mode)
