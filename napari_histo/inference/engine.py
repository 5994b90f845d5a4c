"""Batched whole-slide inference: read-ahead threads → batches → device → stitching → store.

The computation is a generator (:func:`infer_slide`) that yields
:class:`Progress` events and the cells it has just finished, and returns an
:class:`InferenceResult`. The CLI and tests drive it with :func:`run`; the GUI
drives the same generator from a napari ``thread_worker``.

Tiles are read by a small thread pool (each thread has its own OpenSlide handle
through :class:`~napari_histo.io.slide.Slide`) a few batches ahead of the
model, so the model never waits on I/O. Results go to a resumable
:class:`~napari_histo.io.store.ResultRun`: a cancelled or killed run continues
where it stopped; values do not depend on batch size or thread count.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_histo import __version__
from napari_histo.errors import HistoError
from napari_histo.frames import check_region_l0
from napari_histo.generators import drive
from napari_histo.inference.ensemble import ensemble_predict, tta_transforms
from napari_histo.io.slide import Slide
from napari_histo.io.store import (
    RESULT_ARRAYS,
    ResultGeometry,
    ResultRun,
    ResultStore,
    default_store_path,
    slide_identity,
)
from napari_histo.models import LoadedModel
from napari_histo.resample import area_average
from napari_histo.stain import resolve as resolve_stain
from napari_histo.tiling import Stitcher, TileGrid, make_grid, order_centre_out
from napari_histo.tissue import slide_tissue_mask

__all__ = [
    "EngineConfig",
    "InferenceResult",
    "Progress",
    "default_batch_size",
    "infer_slide",
    "predict_batch",
    "run",
    "select_device",
]


@dataclass(frozen=True)
class EngineConfig:
    """How to run the ensemble (not what it computes, except `tta` and `overlap`).

    Attributes
    ----------
    tta : int
        Test-time augmentations per member: 1, 2, 4 or 8 dihedral transforms.
    overlap : float
        Tile overlap as a fraction of the tile, in [0, 1).
    batch_size : int or None
        Tiles per forward pass (halved automatically on CUDA out-of-memory);
        None picks :func:`default_batch_size` for the device.
    read_threads : int or None
        Threads reading and decoding tiles ahead of the model; None picks
        :func:`default_read_threads` for the device.
    device : str
        "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:N" or "mps".
    amp : bool
        Autocast to float16 on CUDA.
    prefetch_batches : int
        Batches read ahead of the model.
    stain : {"card", "none", "macenko", "reinhard"}
        Stain normalisation, fitted once per slide on its thumbnail (see
        :func:`napari_histo.stain.resolve`); "card" follows the model cards.
    """

    tta: int = 1
    overlap: float = 0.5
    batch_size: int | None = None
    read_threads: int | None = None
    device: str = "auto"
    amp: bool = True
    prefetch_batches: int = 3
    stain: str = "card"

    def __post_init__(self) -> None:
        tta_transforms(self.tta)  # validates
        resolve_stain(self.stain, ())  # validates
        if not 0 <= self.overlap < 1:
            raise ValueError(f"`overlap` must be in [0, 1), got {self.overlap!r}")
        for name in ("batch_size", "read_threads", "prefetch_batches"):
            value = getattr(self, name)
            if name in ("batch_size", "read_threads") and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")


@dataclass(frozen=True)
class Progress:
    """One progress report: tiles done of total, with timing."""

    done: int
    total: int
    elapsed_s: float
    eta_s: float | None
    batch_size: int
    cells: list[tuple[int, int, dict[str, np.ndarray]]] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class InferenceResult:
    """What a run produced."""

    run: ResultRun | None
    tiles_total: int
    tiles_run: int
    seconds: float
    cancelled: bool
    device: str
    geometry: ResultGeometry


def select_device(name: str = "auto") -> torch.device:
    """The torch device for `name`: "auto" picks cuda > mps > cpu."""
    if not isinstance(name, str):
        raise TypeError(f"`device` must be a str, got {type(name).__name__}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"`device` must be auto, cpu, cuda[:N] or mps, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HistoError(f"device {name!r} requested but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise HistoError(f"device {name!r} requested but MPS is not available here")
    return device


def default_batch_size(device: torch.device) -> int:
    """Tiles per batch: 4 on CPU (measured fastest per tile on 2 cores), 16 on GPUs."""
    return 4 if device.type == "cpu" else 16


def default_read_threads(device: torch.device) -> int:
    """Tile-reading threads: 2 on CPU (the model needs the cores), up to 8 beside a GPU."""
    if device.type == "cpu":
        return 2
    return max(2, min(8, (os.cpu_count() or 2) - 1))


def _check_members(members: Sequence[LoadedModel]) -> LoadedModel:
    if not members:
        raise ValueError("`members` must hold at least one model")
    first = members[0].card
    for member in members[1:]:
        card = member.card
        for attr in ("input_mpp", "patch_px", "classes"):
            if getattr(card, attr) != getattr(first, attr):
                raise HistoError(
                    f"{member.card_path}: `{attr}` {getattr(card, attr)!r} differs from "
                    f"{members[0].card_path}'s {getattr(first, attr)!r}; members must agree"
                )
    return members[0]


def _check_region(
    region: Sequence[int] | None, width: int, height: int, path: Path, name: str = "region"
) -> tuple[int, int, int, int]:
    if region is None:
        return 0, 0, width, height
    return check_region_l0(region, (width, height), name=name, path=path)


def _cells_meeting(grid: TileGrid, rect_l0: tuple[int, int, int, int]) -> np.ndarray:
    """Bool cell mask: cells of `grid` that meet the level-0 rectangle `rect_l0`."""
    rows, cols = grid.cell_shape
    x0, y0, _, _ = grid.region
    step = grid.stride_px * grid.scale  # level-0 px per cell
    rx, ry, rw, rh = rect_l0
    c0 = max(0, int((rx - x0 * grid.scale) // step))
    c1 = min(cols, int(-(-(rx + rw - x0 * grid.scale) // step)))
    r0 = max(0, int((ry - y0 * grid.scale) // step))
    r1 = min(rows, int(-(-(ry + rh - y0 * grid.scale) // step)))
    mask = np.zeros((rows, cols), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def _tile_reader(slide: Slide, grid: TileGrid) -> Callable[[int], np.ndarray]:
    """Function reading tile `i` at the level just finer than the model's resolution."""
    level = slide.best_level_for_downsample(grid.scale)
    downsample = slide.level_downsamples[level]

    def read(index: int) -> np.ndarray:
        x, y, w, h = grid.tile_region_l0(index)
        lw, lh = round(w / downsample), round(h / downsample)
        tile = slide.read_region(level, x, y, lw, lh)
        factor, rest = divmod(lw, grid.tile_px)
        if 1 < factor <= 16 and rest == 0 and lh == lw:
            # Exact area average here, on the reader thread, not on the model's.
            return area_average(tile, factor)
        return tile

    return read


def predict_batch(
    members: Sequence[LoadedModel],
    tiles: np.ndarray,
    *,
    tile_px: int,
    tta: Sequence[int],
    device: torch.device,
    amp: bool,
    class_index: int,
) -> np.ndarray:
    """Ensemble outputs for a batch of RGB tiles.

    Parameters
    ----------
    tiles : ndarray of uint8 or float32, shape (B, h, w, 3)
        Tiles as read (0–255); resized (area average) to `tile_px` on the
        device when they are not that size already.

    Returns
    -------
    ndarray of float32, shape (B, 4, tile_px, tile_px)
        Probability, aleatoric and epistemic variance of class `class_index`,
        and predictive entropy, in :data:`RESULT_ARRAYS` order.
    """
    card = members[0].card
    batch = torch.from_numpy(np.ascontiguousarray(tiles))
    if device.type == "cuda":
        batch = batch.pin_memory()
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != tile_px or x.shape[-2] != tile_px:
        x = F.interpolate(x, size=(tile_px, tile_px), mode="area")
    mean = torch.tensor(card.normalisation["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(card.normalisation["std"], device=device).view(1, 3, 1, 1)
    x = (x - mean) / std
    models = [m.model for m in members]
    with torch.autocast(
        device_type="cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"
    ):
        out = ensemble_predict(models, x, tta=tuple(tta))
    stacked = torch.stack(
        [
            out.probability[:, class_index],
            out.aleatoric[:, class_index],
            out.epistemic[:, class_index],
            out.entropy,
        ],
        dim=1,
    )
    return stacked.float().cpu().numpy()


def infer_slide(
    slide_path: str | Path,
    members: Sequence[LoadedModel],
    *,
    region: Sequence[int] | None = None,
    within: Sequence[int] | None = None,
    centre: tuple[float, float] | None = None,
    config: EngineConfig | None = None,
    out_dir: str | Path | None = None,
    cancel: threading.Event | None = None,
) -> Generator[Progress, None, InferenceResult]:
    """Run the ensemble over the tissue of a slide (or a region), resumably.

    Parameters
    ----------
    slide_path : str or Path
        The slide.
    members : sequence of LoadedModel
        Ensemble members; they must agree on µm/px, patch size and classes.
    region : (x, y, w, h), optional
        Level-0 px rectangle the result covers; the whole slide by default.
    within : (x, y, w, h), optional
        Compute only the result cells meeting this level-0 rectangle (e.g. the
        viewport), plus the tiles they need; the run stays resumable and other
        cells can be computed later. Default: every cell.
    centre : (x, y), optional
        Level-0 point; tiles nearest to it are computed first (viewport
        inference). Default: row-major order.
    config : EngineConfig, optional
        Batch size, threads, device, TTA, overlap.
    out_dir : str or Path, optional
        Directory of the result store; default beside the slide.
    cancel : threading.Event, optional
        Set it to stop after the current batch; the run can be resumed.

    Yields
    ------
    Progress
        After every batch, with the cells that became final.

    Returns
    -------
    InferenceResult
    """
    config = config or EngineConfig()
    cancel = cancel or threading.Event()
    start = time.monotonic()
    lead = _check_members(members)
    card = lead.card
    device = select_device(config.device)
    for member in members:
        member.model.to(device).eval()
    class_index = card.classes.index("tumor") if "tumor" in card.classes else len(card.classes) - 1
    tta = tta_transforms(config.tta)
    stain = resolve_stain(config.stain, [m.card for m in members])

    with Slide(slide_path) as slide:
        stain_source = stain.fit_slide(slide) if stain is not None else None
        slide_mpp = slide.require_mpp()
        width, height = slide.dimensions
        region_l0 = _check_region(region, width, height, slide.path)
        tissue, tissue_downsample = slide_tissue_mask(slide)
        grid = make_grid(
            region_l0,
            slide_mpp=slide_mpp,
            model_mpp=card.input_mpp,
            tile_px=card.patch_px,
            overlap=config.overlap,
            tissue=tissue,
            tissue_downsample=tissue_downsample,
        )
        geometry = ResultGeometry(
            origin_l0=(region_l0[0], region_l0[1]),
            downsample=grid.scale,
            shape=(grid.region[3], grid.region[2]),
            cell_px=grid.stride_px,
            mpp=card.input_mpp,
        )
        settings = {
            "models": [
                {"name": m.card.name, "version": m.card.version, "sha256": m.card.sha256}
                for m in members
            ],
            "tta": list(tta),
            "overlap": config.overlap,
            "model_mpp": card.input_mpp,
            "tile_px": card.patch_px,
            "region_l0": list(region_l0),
            "class": card.classes[class_index],
        }
        if stain_source is not None:  # only then, so earlier runs still resume
            settings["stain"] = {**stain.spec(), "source": stain_source.to_dict()}
        store = ResultStore(
            default_store_path(slide.path, out_dir),
            slide_identity(slide.path, slide.dimensions, slide_mpp),
        )
        run_ = store.create_or_resume(settings, geometry)
        covered = grid.covered_cells()
        if not run_.done[~covered].all():
            run_.mark_done(~covered)
        wanted = ~run_.done
        if within is not None:
            within_l0 = _check_region(within, width, height, slide.path, "within")
            wanted &= _cells_meeting(grid, within_l0)
        todo = grid.tiles_touching(wanted)
        if centre is not None and len(todo):
            order = order_centre_out(grid, (float(centre[0]), float(centre[1])))
            todo = order[np.isin(order, todo)]
        total = len(grid.origins)
        if total == 0:
            warnings.warn(
                f"{slide.path}: no tissue found in the region; the result is empty",
                UserWarning,
                stacklevel=2,
            )
        if len(todo) == 0:
            if not run_.complete and run_.done.all():
                run_.finish(_provenance(grid, total, 0, device, start))
            return InferenceResult(
                run_, total, 0, time.monotonic() - start, False, str(device), geometry
            )

        stitcher = Stitcher(grid, channels=len(RESULT_ARRAYS), tiles=todo)
        read = _tile_reader(slide, grid)
        if stain_source is not None:  # on the reader threads, like the decoding
            read = lambda i, read=read: stain.transform(read(i), stain_source)  # noqa: E731
        batch_size = config.batch_size or default_batch_size(device)
        done_before = total - len(todo)
        pending: deque[tuple[int, Future[np.ndarray]]] = deque()
        queue = iter(todo.tolist())
        tiles_run = 0
        already_done = run_.done  # cells finished by an earlier run (one copy, not per cell)
        # Store writes (compression + I/O) run on their own thread, in order, so the
        # model is not held up by them; errors surface at the next batch.
        writer = ThreadPoolExecutor(1, thread_name_prefix="histo-write")
        writes: deque[Future[None]] = deque()

        def check_writes(wait: bool) -> None:
            while writes and (wait or writes[0].done()):
                writes.popleft().result()

        with (
            writer,
            ThreadPoolExecutor(
                config.read_threads or default_read_threads(device),
                thread_name_prefix="histo-read",
            ) as pool,
        ):

            def refill() -> None:
                while len(pending) < batch_size * (config.prefetch_batches + 1):
                    index = next(queue, None)
                    if index is None:
                        return
                    pending.append((index, pool.submit(read, index)))

            try:
                refill()
                while pending:
                    if cancel.is_set():
                        break
                    take = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                    refill()
                    indices = [i for i, _ in take]
                    tiles = np.stack([f.result() for _, f in take])
                    outputs, batch_size = _predict_with_oom_retry(
                        members,
                        tiles,
                        card.patch_px,
                        tta,
                        device,
                        config.amp,
                        class_index,
                        batch_size,
                    )
                    finished = []
                    for index, out in zip(indices, outputs, strict=True):
                        stitcher.add(index, out)
                    for row, col, values in stitcher.pop_final_cells():
                        if already_done[row, col]:
                            continue
                        cell = {name: values[k] for k, name in enumerate(RESULT_ARRAYS)}
                        writes.append(writer.submit(run_.write_cell, row, col, cell))
                        finished.append((row, col, cell))
                    check_writes(wait=False)
                    tiles_run += len(indices)
                    elapsed = time.monotonic() - start
                    rate = tiles_run / elapsed if elapsed > 0 else 0.0
                    remaining = len(todo) - tiles_run
                    yield Progress(
                        done=done_before + tiles_run,
                        total=total,
                        elapsed_s=elapsed,
                        eta_s=remaining / rate if rate > 0 else None,
                        batch_size=batch_size,
                        cells=finished,
                    )
            finally:
                for _, future in pending:
                    future.cancel()
                check_writes(wait=True)
                if cancel.is_set() or pending or tiles_run < len(todo):
                    run_.cancel()
        cancelled = tiles_run < len(todo)
        if not cancelled and within is not None:
            run_.flush()  # part of the slide: resumable, finished by a later run
        if not cancelled and run_.done.all():
            run_.finish(_provenance(grid, total, tiles_run, device, start))
        return InferenceResult(
            run_, total, tiles_run, time.monotonic() - start, cancelled, str(device), geometry
        )


def _provenance(
    grid: TileGrid, total: int, tiles_run: int, device: torch.device, start: float
) -> dict[str, Any]:
    return {
        "tiles_total": total,
        "tiles_run_last": tiles_run,
        "device": str(device),
        "seconds_last": round(time.monotonic() - start, 3),
        "package_version": __version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _predict_with_oom_retry(members, tiles, tile_px, tta, device, amp, class_index, batch_size):
    """Predict `tiles`, halving the batch on CUDA out-of-memory; returns (outputs, batch_size)."""
    while True:
        try:
            parts = [
                predict_batch(
                    members,
                    tiles[i : i + batch_size],
                    tile_px=tile_px,
                    tta=tta,
                    device=device,
                    amp=amp,
                    class_index=class_index,
                )
                for i in range(0, len(tiles), batch_size)
            ]
            return np.concatenate(parts), batch_size
        except torch.OutOfMemoryError:
            if device.type != "cuda" or batch_size == 1:
                raise
            torch.cuda.empty_cache()
            batch_size = max(1, batch_size // 2)
            warnings.warn(
                f"CUDA out of memory: batch size halved to {batch_size}",
                RuntimeWarning,
                stacklevel=2,
            )


def run(
    generator: Generator[Progress, None, InferenceResult],
    progress: Callable[[Progress], None] | None = None,
) -> InferenceResult:
    """Drive `generator` to the end synchronously, calling `progress` per event.

    Returns the generator's result, or None if it had already ended by an exception.
    """
    return drive(generator, progress)
