"""Zarr result store: one per slide, resumable, with provenance.

Layout (zarr v3)::

    <slide>.histo.zarr/                 attrs: napari_histo = {format, slide identity}
      runs/<run_id>/                    attrs: provenance, geometry, status
        done                            uint8 (cell_rows, cell_cols): 1 = cell final on disk
        probability/0, /1, ...          OME-NGFF multiscale group; "0" is full result
        aleatoric/…, epistemic/…, entropy/…

A *run* is identified by a hash of everything that changes its numbers (model
card hashes, TTA set, overlap, model µm/px, tile size, region, slide
identity): a different model or setting gets a new run instead of mixing
results. Results are written per *cell* (a ``cell_px`` square of the output
grid, see :mod:`napari_histo.tiling`); finished cells are buffered and written
one whole chunk at a time, and a cell is marked done only after its chunk is on
disk, so a killed run leaves at worst cells that are recomputed, never cells
read as done but missing. ``status`` becomes "complete" only after every cell
is done and the display pyramid is written.

Nuclei runs (:mod:`napari_histo.nuclei.store`) sit beside them in
``nuclei/<run_id>/``: ``labels/0..n`` uint32 instance labels as OME-NGFF
multiscales (:func:`multiscales_metadata`), a per-block ``done`` mask and
``next_id`` (first free id), per-block measurement ``parts`` and, once
complete, the id-sorted ``features`` table.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from napari_histo import __version__
from napari_histo.errors import NoRunError, StoreError

__all__ = [
    "RESULT_ARRAYS",
    "ResultGeometry",
    "ResultRun",
    "ResultStore",
    "StoredRun",
    "default_store_path",
    "latest_complete_run",
    "multiscales_metadata",
    "run_id_for",
    "slide_identity",
]

#: Per-pixel result arrays, float32 in [0, 1] (entropy in [0, log C]).
RESULT_ARRAYS = ("probability", "aleatoric", "epistemic", "entropy")
FORMAT_VERSION = 1
#: Target chunk side of result arrays, px (a whole number of cells).
CHUNK_TARGET_PX = 512
#: Fast compression for float result chunks (lz4 with byte shuffle: ~2x faster
#: to write than zarr's default zstd, measured on probability maps).
RESULT_CODEC = BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")
#: Seconds between rewrites of the done mask while a run is going.
DONE_FLUSH_S = 2.0


def default_store_path(
    slide_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> Path:
    """``<slide>.histo.zarr`` beside the slide, or inside `out_dir` when given."""
    slide_path = Path(slide_path)
    name = slide_path.name + ".histo.zarr"
    return (Path(out_dir) if out_dir is not None else slide_path.parent) / name


def slide_identity(
    slide_path: str | os.PathLike[str], dimensions: tuple[int, int], mpp: float | None
) -> dict[str, Any]:
    """Cheap identity of a slide file: name, size, dimensions, mpp, hash of head and tail."""
    path = Path(slide_path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            digest.update(f.read(1 << 20))
    return {
        "name": path.name,
        "bytes": size,
        "width": int(dimensions[0]),
        "height": int(dimensions[1]),
        "mpp": mpp,
        "sha256_head_tail": digest.hexdigest(),
    }


def run_id_for(settings: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit id of run `settings` (a JSON-able mapping)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ResultGeometry:
    """Where a result grid sits on the slide.

    Attributes
    ----------
    origin_l0 : (int, int)
        Level-0 ``(x, y)`` of result pixel (0, 0)'s top-left corner.
    downsample : float
        Level-0 px per result px (model µm/px divided by slide µm/px).
    shape : (int, int)
        ``(height, width)`` of the result in result px.
    cell_px : int
        Side of a cell in result px (the tiling stride).
    mpp : float or None
        µm per result px, None when the slide has no mpp.
    """

    origin_l0: tuple[int, int]
    downsample: float
    shape: tuple[int, int]
    cell_px: int
    mpp: float | None

    @property
    def cell_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of cells covering :attr:`shape`."""
        return (-(-self.shape[0] // self.cell_px), -(-self.shape[1] // self.cell_px))

    @property
    def chunk_px(self) -> int:
        """Chunk side of result arrays: a whole number of cells near 512 px."""
        return self.cell_px * max(1, round(CHUNK_TARGET_PX / self.cell_px))

    def cell_bounds(self, row: int, col: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of cell (`row`, `col`) in result px, clipped."""
        y0, x0 = row * self.cell_px, col * self.cell_px
        return y0, min(y0 + self.cell_px, self.shape[0]), x0, min(x0 + self.cell_px, self.shape[1])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "origin_l0": list(self.origin_l0), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultGeometry:
        return cls(
            origin_l0=(int(data["origin_l0"][0]), int(data["origin_l0"][1])),
            downsample=float(data["downsample"]),
            shape=(int(data["shape"][0]), int(data["shape"][1])),
            cell_px=int(data["cell_px"]),
            mpp=None if data.get("mpp") is None else float(data["mpp"]),
        )


class ResultStore:
    """The zarr result store of one slide (a directory).

    Parameters
    ----------
    path : str or PathLike
        Store directory (``<slide>.histo.zarr``).
    identity : dict
        :func:`slide_identity` of the slide; a store made for another slide
        is refused rather than mixed.
    mode : {"a", "r"}
        Append (create if missing) or read only.
    """

    def __init__(
        self, path: str | os.PathLike[str], identity: Mapping[str, Any], mode: str = "a"
    ) -> None:
        if mode not in ("a", "r"):
            raise ValueError(f"`mode` must be 'a' or 'r', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        if mode == "a":
            self._check_writable()
        elif not self.path.exists():
            raise StoreError(f"{self.path}: no result store here")
        try:
            self.root = zarr.open_group(self.path, mode=mode, zarr_format=3)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            # (a zarr.json of garbage or of another JSON shape)
            raise StoreError(f"{self.path}: not a readable zarr result store ({err})") from err
        meta = self.root.attrs.get("napari_histo", {})
        if not isinstance(meta, Mapping) or not isinstance(meta.get("slide", {}), Mapping):
            raise StoreError(f"{self.path}: damaged store metadata (napari_histo: {meta!r:.80})")
        meta = dict(meta)
        if not meta:
            if mode == "r":
                raise StoreError(f"{self.path}: not a napari-histo result store")
            meta = {"format": FORMAT_VERSION, "slide": dict(identity)}
            self.root.attrs["napari_histo"] = meta
        if meta.get("format") != FORMAT_VERSION:
            raise StoreError(
                f"{self.path}: store format {meta.get('format')!r}, expected {FORMAT_VERSION}"
            )
        stored = dict(meta.get("slide", {}))
        if stored != dict(identity) and {**stored, "mpp": identity.get("mpp")} == dict(identity):
            raise StoreError(
                f"{self.path}: holds results made at {stored.get('mpp')} µm/px and the slide "
                f"is now at {identity.get('mpp')} µm/px; move it aside or choose another "
                "output directory"
            )
        if stored != dict(identity):
            raise StoreError(
                f"{self.path}: holds results of another slide "
                f"({meta.get('slide', {}).get('name')!r}); choose another output directory"
            )
        self.identity = dict(identity)

    def _check_writable(self) -> None:
        parent = self.path if self.path.exists() else self.path.parent
        if not parent.exists():
            raise StoreError(f"{self.path}: output directory {parent} does not exist")
        if not parent.is_dir():
            raise StoreError(f"{self.path}: {parent} is not a directory")
        try:  # a real write: os.access says yes to root on read-only mounts
            with tempfile.TemporaryFile(dir=parent):
                pass
        except OSError as err:
            raise StoreError(
                f"{self.path}: output directory {parent} is not writable ({err.strerror})"
            ) from err

    def run_ids(self) -> list[str]:
        """Ids of the runs in this store."""
        try:
            if "runs" not in self.root:
                return []
            return sorted(self.root["runs"].group_keys())
        except (OSError, ValueError, KeyError, TypeError) as err:  # a garbled runs/zarr.json
            raise StoreError(
                f"{self.path}: damaged store, its runs cannot be listed ({err})"
            ) from err

    def runs(self) -> Iterator[ResultRun]:
        """Every run in the store."""
        for run_id in self.run_ids():
            yield self.open_run(run_id)

    def open_run(self, run_id: str) -> ResultRun:
        """An existing run by id."""
        try:
            group = self.root["runs"][run_id]
        except KeyError:
            raise StoreError(f"{self.path}: no run {run_id!r}") from None
        except (OSError, ValueError, TypeError) as err:  # a garbled zarr.json of the run
            raise StoreError(f"{self.path}: run {run_id} is damaged ({err})") from err
        return ResultRun(self, group)

    def create_or_resume(self, settings: Mapping[str, Any], geometry: ResultGeometry) -> ResultRun:
        """The run for `settings`, resuming it if it exists, else created empty.

        Cells that no tile covers (no tissue) are marked done at creation by
        the caller through :meth:`ResultRun.mark_done`.
        """
        if self.mode != "a":
            raise StoreError(f"{self.path}: opened read-only")
        full = {**settings, "slide": self.identity, "geometry": geometry.to_dict()}
        run_id = run_id_for(full)
        runs = self.root.require_group("runs")
        if run_id in runs:
            run = ResultRun(self, runs[run_id])
            if run.geometry != geometry:
                raise StoreError(f"{self.path}: run {run_id} has another geometry")
            run.check_data()  # a complete run is not computed again: it must hold its data
            return run
        tmp_name = f".creating-{run_id}-{os.getpid()}"
        group = runs.create_group(tmp_name, overwrite=True)
        rows, cols = geometry.cell_shape
        chunk = geometry.chunk_px
        group.create_array(
            "done", shape=(rows, cols), chunks=(rows, cols), dtype="uint8", fill_value=0
        )
        for name in RESULT_ARRAYS:
            sub = group.create_group(name)
            sub.create_array(
                "0",
                shape=geometry.shape,
                chunks=(chunk, chunk),
                dtype="float32",
                fill_value=0.0,
                dimension_names=("y", "x"),
                compressors=RESULT_CODEC,
            )
            sub.attrs["multiscales"] = multiscales_metadata(name, geometry, 1)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        group.attrs.update(
            {
                "run_id": run_id,
                "settings": dict(settings),
                "geometry": geometry.to_dict(),
                "package_version": __version__,
                "created": now,
                "updated": now,
                "status": "running",
            }
        )
        # Publish under its final name only once complete: a crash before this
        # leaves a ".creating-*" group that is never read as a run.
        os.replace(self.path / "runs" / tmp_name, self.path / "runs" / run_id)
        self.root = zarr.open_group(self.path, mode=self.mode, zarr_format=3)
        return ResultRun(self, self.root["runs"][run_id])


def multiscales_metadata(name: str, geometry: ResultGeometry, levels: int) -> list[dict[str, Any]]:
    """OME-NGFF 0.4 multiscales metadata for `levels` 2× levels, in µm (or px).

    Parameters
    ----------
    name : str
        Name of the multiscale image (the array group's name).
    geometry : ResultGeometry
        Grid of level ``"0"``: its scale and its level-0 origin; each level's
        translation is the centre of its pixel (0, 0), as NGFF readers expect.
    levels : int
        Number of levels ``"0"``, ``"1"``, ... each 2× coarser than the one before.

    Returns
    -------
    list of dict
        The value of a group's ``multiscales`` attribute.
    """
    unit = "micrometer" if geometry.mpp is not None else None
    base = geometry.mpp if geometry.mpp is not None else geometry.downsample
    origin = geometry.origin_l0
    l0_size = geometry.mpp / geometry.downsample if geometry.mpp is not None else 1.0
    datasets = []
    for level in range(levels):
        factor = 2**level
        # NGFF places array index i at translation + i * scale: a pixel's centre. Result
        # pixel (0, 0) of this level spans level-0 px [o, o + d), centre o + (d - 1)/2 in
        # the slide's own centre-indexed frame (as napari shows it, see frames.py).
        half = (geometry.downsample * factor - 1) / 2
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [base * factor, base * factor]},
                    {
                        "type": "translation",
                        "translation": [(origin[1] + half) * l0_size, (origin[0] + half) * l0_size],
                    },
                ],
            }
        )
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if unit:
        for axis in axes:
            axis["unit"] = unit
    return [{"version": "0.4", "name": name, "axes": axes, "datasets": datasets}]


#: Former private name of :func:`multiscales_metadata`, kept for existing callers.
_multiscales = multiscales_metadata


class StoredRun:
    """What every run group of a result store has: id, geometry, settings and a status.

    Tumour runs (:class:`ResultRun`) and nuclei runs
    (:class:`napari_histo.nuclei.run.NucleiRun`) build on it.
    """

    def __init__(self, store: ResultStore, group: zarr.Group) -> None:
        self.store = store
        self.group = group
        attrs = dict(group.attrs)
        try:
            self.run_id: str = attrs["run_id"]
            self.geometry = ResultGeometry.from_dict(attrs["geometry"])
            self.settings: dict[str, Any] = dict(attrs["settings"])
        except (KeyError, ValueError, TypeError) as err:
            raise StoreError(f"{store.path}: unreadable run {group.path} ({err!r})") from err

    @property
    def status(self) -> str:
        """ "running", "cancelled" or "complete"."""
        return str(self.group.attrs.get("status", "running"))

    @property
    def complete(self) -> bool:
        """True once the run has finished and written everything it shows."""
        return self.status == "complete"


class ResultRun(StoredRun):
    """One run's arrays: write finished cells, resume, finish with a display pyramid."""

    def __init__(self, store: ResultStore, group: zarr.Group) -> None:
        super().__init__(store, group)
        try:
            self._done = np.asarray(group["done"][...], dtype=bool)
        except (KeyError, ValueError, OSError) as err:
            raise StoreError(
                f"{store.path}: run {self.run_id} has an unreadable done mask ({err})"
            ) from err
        # Chunks whose cells are partly buffered: chunk index -> {(r, c): {name: array}}.
        self._pending: dict[tuple[int, int], dict[tuple[int, int], dict[str, np.ndarray]]] = {}
        self._needed: dict[tuple[int, int], int] | None = None
        self._last_done_flush = time.monotonic()
        self._done_dirty = False

    # -- state ---------------------------------------------------------------
    @property
    def done(self) -> np.ndarray:
        """Copy of the done mask, bool ``(cell_rows, cell_cols)``."""
        return self._done.copy()

    def array(self, name: str, level: int = 0) -> zarr.Array:
        """Result array `name` at pyramid `level` (0 = full result)."""
        if name not in RESULT_ARRAYS:
            raise ValueError(f"`name` must be one of {RESULT_ARRAYS}, got {name!r}")
        try:
            return self.group[name][str(level)]
        except (KeyError, ValueError, TypeError) as err:  # a folder or zarr.json gone or garbled
            raise self._damaged(f"{name} level {level} is missing or unreadable", err) from err

    def levels(self, name: str) -> list[zarr.Array]:
        """All pyramid levels of `name`, largest first."""
        try:
            count = len(self.group[name].attrs["multiscales"][0]["datasets"])
        except (KeyError, IndexError, ValueError, TypeError) as err:
            raise self._damaged(f"{name} has no readable pyramid", err) from err
        return [self.array(name, level) for level in range(count)]

    def _damaged(self, what: str, err: BaseException | None = None) -> StoreError:
        reason = "" if err is None else f" ({type(err).__name__}: {err})"
        return StoreError(
            f"{self.store.path}: run {self.run_id} {what}{reason}; "
            "the store is damaged: delete it (or this run) and run again"
        )

    def check_data(self) -> None:
        """Raise StoreError when a complete run lacks chunk files it had when it finished.

        Missing chunks read as zeros (zarr's fill value), e.g. in a store copied
        without them: a slide without tumor, silently. :meth:`finish` records
        how many chunks each array has (all-zero chunks are never written, so
        the count is what was written, not the grid); runs finished before that
        record existed are not checked.
        """
        recorded = self.group.attrs.get("chunks") if self.complete else None
        if not isinstance(recorded, Mapping):
            return
        for name in RESULT_ARRAYS:
            expected = recorded.get(name)
            found = self.array(name).nchunks_initialized
            if isinstance(expected, int) and found < expected:
                raise self._damaged(
                    f"{name} has {found} of its {expected} data chunks (files are gone)"
                )

    def finest_level(self, *, max_px: int | None = None, max_side: int | None = None) -> int:
        """Finest pyramid level with at most `max_px` pixels and `max_side` px a side.

        The coarsest level when none is that small; level 0 without bounds.
        """
        levels = self.levels("probability")
        for level, array in enumerate(levels):
            height, width = array.shape
            if (max_px is None or height * width <= max_px) and (
                max_side is None or max(height, width) <= max_side
            ):
                return level
        return len(levels) - 1

    def read_level(self, name: str, level: int) -> np.ndarray:
        """Pyramid `level` of array `name` as float32, checked to be the result halved `level`×.

        Raises
        ------
        ValueError
            If `level` is not a level of the pyramid.
        StoreError
            If the level's shape is not the full result's halved `level` times.
        """
        levels = self.levels(name)
        if not 0 <= level < len(levels):
            raise ValueError(f"`level` must be in [0, {len(levels) - 1}], got {level}")
        array = levels[level]
        full = self.geometry.shape
        # Floor-halved (the store's pyramid) or ceil-halved: the same 2**level blocks.
        allowed = [tuple(n // 2**level for n in full), tuple(-(-n // 2**level) for n in full)]
        if tuple(array.shape) not in allowed:
            raise StoreError(
                f"{self.store.path}: run {self.run_id} {name} level {level} has shape "
                f"{tuple(array.shape)}, expected {allowed[0]} for a {full} result"
            )
        try:
            return np.asarray(array[...], np.float32)
        except (RuntimeError, ValueError, OSError) as err:  # corrupt chunks (codec errors)
            raise self._damaged(f"{name} level {level} cannot be decoded", err) from err

    # -- writing -------------------------------------------------------------
    def _chunk_of(self, row: int, col: int) -> tuple[int, int]:
        cells_per_chunk = self.geometry.chunk_px // self.geometry.cell_px
        return row // cells_per_chunk, col // cells_per_chunk

    def _chunk_cells(self, chunk: tuple[int, int]) -> tuple[slice, slice]:
        per = self.geometry.chunk_px // self.geometry.cell_px
        rows, cols = self.geometry.cell_shape
        return (
            slice(chunk[0] * per, min((chunk[0] + 1) * per, rows)),
            slice(chunk[1] * per, min((chunk[1] + 1) * per, cols)),
        )

    def mark_done(self, cells: np.ndarray) -> None:
        """Mark cells with nothing to compute (no tissue) as done; bool mask."""
        cells = np.asarray(cells, dtype=bool)
        if cells.shape != self._done.shape:
            raise ValueError(f"`cells` shape {cells.shape} must equal {self._done.shape}")
        self._done |= cells
        self._write_done()

    def write_cell(self, row: int, col: int, values: Mapping[str, np.ndarray]) -> None:
        """Buffer a final cell; whole chunks go to disk as soon as all their cells are in.

        Parameters
        ----------
        row, col : int
            Cell index.
        values : mapping
            One ``(h, w)`` float array per name in :data:`RESULT_ARRAYS`, the
            cell's clipped size.
        """
        y0, y1, x0, x1 = self.geometry.cell_bounds(row, col)
        for name in RESULT_ARRAYS:
            if np.shape(values[name]) != (y1 - y0, x1 - x0):
                expected = (y1 - y0, x1 - x0)
                raise ValueError(
                    f"cell ({row}, {col}) `{name}` shape {np.shape(values[name])} "
                    f"must be {expected}"
                )
        chunk = self._chunk_of(row, col)
        self._pending.setdefault(chunk, {})[(row, col)] = {
            name: np.asarray(values[name], dtype=np.float32) for name in RESULT_ARRAYS
        }
        rows, cols = self._chunk_cells(chunk)
        missing = ~self._done[rows, cols]
        buffered = self._pending[chunk]
        for r, c in zip(*np.nonzero(missing), strict=True):
            if (rows.start + int(r), cols.start + int(c)) not in buffered:
                break
        else:
            self._flush_chunk(chunk)
        if time.monotonic() - self._last_done_flush > DONE_FLUSH_S and self._done_dirty:
            self._write_done()

    def _flush_chunk(self, chunk: tuple[int, int]) -> None:
        cells = self._pending.pop(chunk, {})
        if not cells:
            return
        rows, cols = self._chunk_cells(chunk)
        y0 = rows.start * self.geometry.cell_px
        x0 = cols.start * self.geometry.cell_px
        y1 = min(rows.stop * self.geometry.cell_px, self.geometry.shape[0])
        x1 = min(cols.stop * self.geometry.cell_px, self.geometry.shape[1])
        full = len(cells) + int(self._done[rows, cols].sum()) == (rows.stop - rows.start) * (
            cols.stop - cols.start
        )
        for name in RESULT_ARRAYS:
            array = self.array(name)
            # A chunk whose other cells are done already must keep their values.
            block = (
                array[y0:y1, x0:x1]
                if not full or self._done[rows, cols].any()
                else np.zeros((y1 - y0, x1 - x0), np.float32)
            )
            for (r, c), values in cells.items():
                cy0, cy1, cx0, cx1 = self.geometry.cell_bounds(r, c)
                block[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = values[name]
            array[y0:y1, x0:x1] = block
        for r, c in cells:
            self._done[r, c] = True
        self._done_dirty = True

    def _write_done(self) -> None:
        self.group["done"][...] = self._done.astype(np.uint8)
        self.group.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._last_done_flush = time.monotonic()
        self._done_dirty = False

    def flush(self) -> None:
        """Write every buffered cell (partial chunks too) and the done mask."""
        for chunk in list(self._pending):
            self._flush_chunk(chunk)
        self._write_done()

    def cancel(self) -> None:
        """Flush and record that the run stopped before the end (it can resume)."""
        self.flush()
        self.group.attrs["status"] = "cancelled"

    def finish(self, extra_attrs: Mapping[str, Any] | None = None) -> None:
        """Flush, build the 2× display pyramid, then set status "complete"."""
        self.flush()
        if not self._done.all():
            raise StoreError(
                f"{self.store.path}: run {self.run_id} cannot finish with "
                f"{int((~self._done).sum())} cells not done"
            )
        # What is on disk now, to tell a copy that lost chunk files (check_data).
        self.group.attrs["chunks"] = {
            name: int(self.array(name).nchunks_initialized) for name in RESULT_ARRAYS
        }
        for name in RESULT_ARRAYS:
            self._build_pyramid(name)
        if extra_attrs:
            self.group.attrs.update(dict(extra_attrs))
        self.group.attrs["status"] = "complete"
        self.group.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def _build_pyramid(self, name: str, min_px: int = 256) -> None:
        group = self.group[name]
        level, current = 0, self.array(name, 0)
        chunk = self.geometry.chunk_px
        while max(current.shape) > min_px:
            h, w = current.shape[0] // 2, current.shape[1] // 2
            if h == 0 or w == 0:
                break
            smaller = group.create_array(
                str(level + 1),
                shape=(h, w),
                chunks=(chunk, chunk),
                dtype="float32",
                fill_value=0.0,
                dimension_names=("y", "x"),
                compressors=RESULT_CODEC,
                overwrite=True,
            )
            # Band by band: memory bounded by one band of the finer level.
            band = 2 * chunk
            for y in range(0, 2 * h, band):
                rows = np.asarray(current[y : min(y + band, 2 * h), : 2 * w], np.float32)
                # Four strided adds: ~4x faster than reshape(...).mean(axis=(1, 3)).
                total = rows[0::2, 0::2] + rows[1::2, 0::2]
                total += rows[0::2, 1::2]
                total += rows[1::2, 1::2]
                smaller[y // 2 : y // 2 + rows.shape[0] // 2] = total * np.float32(0.25)
            level, current = level + 1, smaller
        group.attrs["multiscales"] = multiscales_metadata(name, self.geometry, level + 1)


def covers_slide(run: StoredRun, dimensions: tuple[int, int]) -> bool:
    """Whether `run` covers the whole slide of level-0 `dimensions` (not a region of it)."""
    region = run.settings.get("region_l0")
    return region is None or [int(v) for v in region] == [0, 0, *map(int, dimensions)]


def latest_complete_run(
    slide_path: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str] | None = None,
    mpp: float | None = None,
) -> ResultRun:
    """The slide's most recently finished complete tumor run; whole-slide runs first.

    A run over a region of the slide (``infer --region``, the viewport) is
    returned only when no complete run covers the whole slide.

    Parameters
    ----------
    slide_path : str or PathLike
        The slide.
    out_dir : str or PathLike, optional
        Folder of the result store when it is not beside the slide.
    mpp : float, optional
        µm/px given to ``infer --mpp`` (the store is keyed by it).

    Raises
    ------
    NoRunError
        No store, or no complete run in it ("run napari-histo infer first").
    HistoError
        The slide or the store cannot be read.
    """
    from napari_histo.io.slide import Slide

    slide_path = Path(slide_path)
    with Slide(slide_path, mpp=mpp) as slide:
        identity = slide_identity(slide.path, slide.dimensions, slide.mpp)
        dimensions = slide.dimensions
    path = default_store_path(slide_path, out_dir)
    if not path.exists():
        raise NoRunError(f"{slide_path}: no result store; run napari-histo infer first")
    runs = [r for r in ResultStore(path, identity, mode="r").runs() if r.complete]
    if not runs:
        raise NoRunError(f"{slide_path}: no complete result run; run napari-histo infer first")

    def order(run: ResultRun) -> tuple[bool, str, str]:
        attrs = run.group.attrs
        when = str(attrs.get("updated", ""))
        return covers_slide(run, dimensions), when, run.run_id

    latest = max(runs, key=order)
    latest.check_data()
    return latest
