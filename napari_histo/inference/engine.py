"""Batched whole-slide inference: read-ahead threads → batches → device → stitching → store.

A run is planned, then executed. :func:`plan_inference` checks the inputs,
finds the tissue, lays out the grid and creates (or resumes) the store run,
raising at once on bad input; :func:`execute_inference` is a generator that
reads, batches, predicts and stitches, yields :class:`Progress` events with the
cells it has just finished, and returns an :class:`InferenceResult`.
:func:`infer_slide` does both. The CLI and tests drive the generator with
:func:`run`; the GUI drives the same generator from its job runner.

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
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_histo import __version__
from napari_histo._malloc import RssCap, tune_malloc
from napari_histo.generators import drive
from napari_histo.inference.blocks import block_steps, member_forwards
from napari_histo.inference.ensemble import apply_dihedral, ensemble_predict, transform_groups
from napari_histo.inference.plan import (
    EngineConfig,
    InferencePlan,
    autocast,
    autocast_dtype,
    block_centres,
    block_need,
    cpu_has_native_bfloat16,
    plan_inference,
    precision_name,
    select_device,
)
from napari_histo.inference.result import InferenceResult, Progress
from napari_histo.io.slide import Slide
from napari_histo.io.store import RESULT_ARRAYS
from napari_histo.models import LoadedModel
from napari_histo.resample import area_average
from napari_histo.tiling import Stitcher, TileGrid

__all__ = [
    "EngineConfig",
    "InferencePlan",
    "InferenceResult",
    "Progress",
    "autocast",
    "autocast_dtype",
    "block_transform_masks",
    "cpu_has_native_bfloat16",
    "default_batch_size",
    "execute_inference",
    "infer_slide",
    "plan_inference",
    "precision_name",
    "predict_batch",
    "run",
    "select_device",
    "tile_reader",
]

#: Largest input (px) whose test-time transforms go through a member as one batch;
#: larger ones (large tiles) one transform at a time, for the activation memory.
BATCH_TRANSFORMS_MAX_PX = 1024**2
#: Seconds between progress reports while a large tile is computed.
BLOCK_PROGRESS_S = 0.5
#: Piece core (model px) local members fall back to when a whole large tile
#: does not fit in GPU memory.
OOM_PIECE_PX = 512


class _BlockCancelled(Exception):
    """Raised between the pieces of a large tile when the run is cancelled."""


def default_batch_size(device: torch.device) -> int:
    """Tiles per batch: 4 on CPU (measured fastest per tile on 2 cores), 16 on GPUs."""
    return 4 if device.type == "cpu" else 16


def default_read_threads(device: torch.device) -> int:
    """Tile-reading threads: 2 on CPU (the model needs the cores), up to 8 beside a GPU."""
    if device.type == "cpu":
        return 2
    return max(2, min(8, (os.cpu_count() or 2) - 1))


def _rect_reader(slide: Slide, scale: float) -> Callable[[int, int, int, int], np.ndarray]:
    """Function reading a model-px rectangle at the level just finer than the model's."""
    level = slide.best_level_for_downsample(scale)
    downsample = slide.level_downsamples[level]

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        lw, lh = round(w * scale / downsample), round(h * scale / downsample)
        rgb = slide.read_region(level, round(x * scale), round(y * scale), lw, lh)
        factor, rest = divmod(lw, w)
        if 1 < factor <= 16 and rest == 0 and lh == h * factor:
            # Exact area average here, on the reader thread, not on the model's.
            return area_average(rgb, factor)
        return rgb  # resized on the device (predict_batch)

    return read


def tile_reader(slide: Slide, grid: TileGrid) -> Callable[[int], np.ndarray]:
    """Function reading grid tile `i` at the model's resolution (what the engine feeds).

    It reads the level just finer than the model's resolution and area-averages
    on the calling (reader) thread when the factor is an integer.
    """
    read_rect = _rect_reader(slide, grid.scale)

    def read(index: int) -> np.ndarray:
        x, y = grid.origins[index]
        return read_rect(int(x), int(y), grid.tile_px, grid.tile_px)

    return read


def predict_batch(
    members: Sequence[LoadedModel],
    tiles: np.ndarray,
    *,
    tile_px: int | tuple[int, int],
    tta: Sequence[int],
    device: torch.device,
    amp: bool,
    class_index: int,
    forwards: Sequence[Callable] | None = None,
    need: np.ndarray | None = None,
) -> np.ndarray:
    """Ensemble outputs for a batch of RGB tiles.

    Parameters
    ----------
    tiles : ndarray of uint8 or float32, shape (B, h, w, 3)
        Tiles as read (0–255); resized (area average) to `tile_px` on the
        device when they are not that size already.
    tile_px : int or (height, width)
        Model input size, model px.
    forwards : sequence of callables, optional
        What runs in place of each member's model (large tiles: see
        :func:`napari_histo.inference.blocks.member_forwards`).
    need : ndarray of bool, shape (height, width) or (k, height, width), optional
        With `forwards`: masks passed to them as channels 4, 5, ... (large tiles:
        the pixels to compute, then the centres of the pooled members' patches).

    Returns
    -------
    ndarray of float32, shape (B, 4, height, width)
        Probability, aleatoric and epistemic variance of class `class_index`,
        and predictive entropy, in :data:`RESULT_ARRAYS` order.
    """
    card = members[0].card
    size = (tile_px, tile_px) if isinstance(tile_px, int | np.integer) else tuple(tile_px)
    batch = torch.from_numpy(np.ascontiguousarray(tiles))
    if device.type == "cuda":
        batch = batch.pin_memory()
    rgb = batch.to(device, non_blocking=True).permute(0, 3, 1, 2)
    # One float buffer holds the model input (and the `need` masks as more
    # channels): a large tile's float copies are tens of MB each. Channels last, as
    # the tiles are read and as the models run; the caller's tiles stay as read.
    masks = None if need is None else np.asarray(need, bool).reshape(-1, *size)
    resized = tuple(rgb.shape[-2:]) != size
    if resized:
        rgb = F.interpolate(rgb.float(), size=size, mode="area")
    if resized and masks is None:
        x = rgb  # a float copy of its own already
    else:
        x = torch.empty(
            (rgb.shape[0], 3 + (0 if masks is None else len(masks)), *size),
            device=device,
            memory_format=torch.channels_last,
        )
        x[:, :3] = rgb
    del rgb
    mean = torch.tensor(card.normalisation["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(card.normalisation["std"], device=device).view(1, 3, 1, 1)
    x[:, :3].div_(255.0).sub_(mean).div_(std)
    if masks is not None:
        x[:, 3:] = torch.from_numpy(np.ascontiguousarray(masks)).to(device)
    models = list(forwards) if forwards is not None else [m.model for m in members]
    with autocast(device, amp):
        # Large tiles: one transform at a time (TTA stacked in a batch would
        # multiply the activation memory).
        out = ensemble_predict(
            models, x, tta=tuple(tta), batch_members=size[0] * size[1] <= BATCH_TRANSFORMS_MAX_PX
        )
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


def execute_inference(
    plan: InferencePlan, cancel: threading.Event | None = None
) -> Generator[Progress, None, InferenceResult]:
    """Carry out `plan`: reader threads, batches on the device, stitching, store writes.

    Yields :class:`Progress` after every batch (with the cells that became
    final) and returns an :class:`InferenceResult`. Setting `cancel` stops it
    after the current batch (large tiles: after the current piece, and the
    tile is computed again on resume); finished cells are kept and the run
    resumes.
    """
    cancel = cancel or threading.Event()
    rss_cap = None
    # A large tile's tensors reused from the heap, not faulted in each pass, but
    # not more and more of them, block after block.
    if plan.blocks is not None and tune_malloc():
        rss_cap = RssCap()
    start, run_, grid, todo, total = plan.started, plan.run, plan.grid, plan.todo, plan.total
    device, members = plan.device, plan.members
    card = members[0].card

    precision = precision_name(device, plan.config.amp)

    def result(tiles_run: int, cancelled: bool) -> InferenceResult:
        seconds = time.monotonic() - start
        return InferenceResult(
            run_, total, tiles_run, seconds, cancelled, str(device), plan.geometry, precision
        )

    if len(todo) == 0:
        if not run_.complete and run_.done.all():
            run_.finish(_provenance(grid, total, 0, device, precision, start))
        return result(0, False)
    for member in members:
        member.model.to(device).eval()
    forwards = None
    block_steps_done = [0]  # large tiles: pieces and patch rows done in the current block
    # Set when this generator stops for any reason (cancel, an error, closed early):
    # the block on the model thread stops at its next piece instead of finishing.
    abort = threading.Event()

    def step() -> None:
        block_steps_done[0] += 1
        if cancel.is_set() or abort.is_set():  # its cells are computed again on resume
            raise _BlockCancelled

    def block_forwards(
        sub_tile_px: int | Sequence[int | None] | None, patch_batch: int
    ) -> list[Callable]:
        return member_forwards(
            [m.model for m in members], plan.member_margins, card.patch_px, plan.margin_px,
            sub_tile_px, on_step=step, patch_batch=patch_batch,
        )  # fmt: skip

    if plan.blocks is not None:
        forwards = block_forwards(
            plan.sub_tile_px, plan.config.batch_size or default_batch_size(device)
        )
    config = plan.config
    stain, stain_source = plan.stain, plan.stain_source
    stitcher = Stitcher(grid, channels=len(RESULT_ARRAYS), tiles=todo)
    batch_size = config.batch_size or default_batch_size(device)
    done_before = total - len(todo)
    # The unit of reading and predicting: one grid tile (batched), or one large block.
    units: list[Any] = todo.tolist() if plan.blocks is None else list(plan.blocks)
    pending: deque[tuple[Any, Future[np.ndarray]]] = deque()
    queue = iter(units)
    tiles_run = 0
    already_done = run_.done  # cells finished by an earlier run (one copy, not per cell)

    with Slide(plan.slide_path, mpp=plan.mpp) as slide:
        read_tile = tile_reader(slide, grid)
        read_rect = _rect_reader(slide, grid.scale)

        def normalised(rgb: np.ndarray) -> np.ndarray:
            # Stain normalisation on the reader threads, like the decoding.
            return rgb if stain_source is None else stain.transform(rgb, stain_source)

        def read(unit: Any) -> np.ndarray:
            if plan.blocks is None:
                return normalised(read_tile(unit))
            return normalised(read_rect(unit.x, unit.y, unit.w, unit.h))

        def predict(
            take: list[Any], arrays: list[np.ndarray], need: np.ndarray | None = None
        ) -> list[tuple[int, np.ndarray]]:
            nonlocal batch_size, forwards
            if plan.blocks is None:
                outputs, batch_size = _predict_with_oom_retry(
                    members, np.stack(arrays), card.patch_px, plan.tta, device,
                    config.amp, plan.class_index, batch_size,
                )  # fmt: skip
                return list(zip(take, outputs, strict=True))
            block = take[0]
            try:
                out = predict_batch(
                    members, arrays[0][None], tile_px=(block.h, block.w), tta=plan.tta,
                    device=device, amp=config.amp, class_index=plan.class_index,
                    forwards=forwards, need=need,
                )[0]  # fmt: skip
            except torch.OutOfMemoryError:
                if device.type != "cuda":
                    raise
                torch.cuda.empty_cache()
                warnings.warn(
                    f"CUDA out of memory on a {block.w}×{block.h} px tile: this run "
                    f"continues in {OOM_PIECE_PX}-px pieces (use a smaller large_tile_px)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                forwards = block_forwards(OOM_PIECE_PX, 1)  # for the later blocks too
                block_steps_done[0] = 0
                out = predict_batch(
                    members, arrays[0][None], tile_px=(block.h, block.w), tta=plan.tta,
                    device=device, amp=config.amp, class_index=plan.class_index,
                    forwards=forwards, need=need,
                )[0]  # fmt: skip
            size = grid.tile_px
            pairs = []
            for index in block.tiles.tolist():
                x, y = grid.origins[index]
                y0, x0 = int(y) - block.y, int(x) - block.x
                pairs.append((index, out[:, y0 : y0 + size, x0 : x0 + size]))
            return pairs

        # Store writes (compression + I/O) run on their own thread, in order, so the
        # model is not held up by them; errors surface at the next batch.
        writer = ThreadPoolExecutor(1, thread_name_prefix="histo-write")
        writes: deque[Future[None]] = deque()

        def check_writes(wait: bool) -> None:
            while writes and (wait or writes[0].done()):
                writes.popleft().result()

        def progress(tiles: int, finished: list) -> Progress:
            elapsed = time.monotonic() - start
            rate = tiles / elapsed if elapsed > 0 else 0.0
            return Progress(
                done=done_before + tiles,
                total=total,
                elapsed_s=elapsed,
                eta_s=(len(todo) - tiles) / rate if rate > 0 else None,
                batch_size=batch_size,
                cells=finished,
            )

        per_forward = batch_size if plan.blocks is None else 1
        ahead = config.prefetch_batches + 1 if plan.blocks is None else 2
        # A large tile takes seconds on a CPU: it runs on a thread of its own (at this
        # thread's torch thread count) while this generator reports its progress.
        model_thread = nullcontext()
        if plan.blocks is not None:
            model_thread = ThreadPoolExecutor(
                1, thread_name_prefix="histo-model", initializer=torch.set_num_threads,
                initargs=(torch.get_num_threads(),),
            )  # fmt: skip
        with (
            writer,
            ThreadPoolExecutor(
                config.read_threads or default_read_threads(device),
                thread_name_prefix="histo-read",
            ) as pool,
            model_thread as block_runner,
        ):

            def refill() -> None:
                while len(pending) < per_forward * ahead:
                    unit = next(queue, None)
                    if unit is None:
                        return
                    pending.append((unit, pool.submit(read, unit)))

            try:
                refill()
                while pending:
                    if cancel.is_set():
                        break
                    if plan.blocks is None:
                        per_forward = batch_size  # halved on CUDA out-of-memory
                    take = [pending.popleft() for _ in range(min(per_forward, len(pending)))]
                    refill()
                    units_now, arrays = [u for u, _ in take], [f.result() for _, f in take]
                    if block_runner is None:
                        pairs = predict(units_now, arrays)
                    else:
                        block = units_now[0]
                        need = block_need(block, grid)
                        centres = block_centres(block, grid, card.patch_px)
                        steps = _block_passes(need, centres, block, plan)
                        block_steps_done[0] = 0
                        masks = np.stack([need, centres])
                        future = block_runner.submit(predict, units_now, arrays, masks)
                        while True:
                            try:
                                pairs = future.result(timeout=BLOCK_PROGRESS_S)
                                break
                            except _BlockCancelled:
                                pairs = None
                                break
                            except FutureTimeout:
                                part = min(1.0, block_steps_done[0] / max(1, steps))
                                # Never the whole block before its cells are in.
                                partial = min(len(block.tiles) - 1, int(part * len(block.tiles)))
                                yield progress(tiles_run + partial, [])
                        if pairs is None:
                            break
                    finished = []
                    for index, out in pairs:
                        stitcher.add(index, out)
                    for row, col, values in stitcher.pop_final_cells():
                        if already_done[row, col]:
                            continue
                        cell = {name: values[k] for k, name in enumerate(RESULT_ARRAYS)}
                        writes.append(writer.submit(run_.write_cell, row, col, cell))
                        finished.append((row, col, cell))
                    check_writes(wait=False)
                    tiles_run += len(pairs)
                    if rss_cap is not None:
                        rss_cap.after_unit()
                    yield progress(tiles_run, finished)
            finally:
                abort.set()  # a block still on the model thread stops at its next piece
                for _, future in pending:
                    future.cancel()
                check_writes(wait=True)
                if cancel.is_set() or pending or tiles_run < len(todo):
                    run_.cancel()
    cancelled = tiles_run < len(todo)
    if not cancelled and plan.partial:
        run_.flush()  # part of the slide: resumable, finished by a later run
    if not cancelled and run_.done.all():
        run_.finish(_provenance(grid, total, tiles_run, device, precision, start))
    return result(tiles_run, cancelled)


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
    mpp: float | None = None,
) -> Generator[Progress, None, InferenceResult]:
    """Run the ensemble over the tissue of a slide (or a region), resumably.

    :func:`plan_inference` runs now (bad inputs raise at this call), and the
    returned generator is :func:`execute_inference` of that plan.

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
    mpp : float, optional
        µm per level-0 px, overriding the slide's own (a file without a
        plausible one).

    Yields
    ------
    Progress
        After every batch, with the cells that became final; large tiles also
        every 0.5 s while one is computed (no cells; `done` counts the part of
        its tiles done).

    Returns
    -------
    InferenceResult
    """
    plan = plan_inference(
        slide_path,
        members,
        region=region,
        within=within,
        centre=centre,
        config=config,
        out_dir=out_dir,
        mpp=mpp,
    )
    return execute_inference(plan, cancel)


def block_transform_masks(
    need: np.ndarray, centres: np.ndarray, block: Any, tta: Sequence[int]
) -> list[tuple[list[int], np.ndarray, np.ndarray]]:
    """The transform groups one forward of each member takes over `block`, as
    :func:`~napari_histo.inference.ensemble.ensemble_predict` groups them, each
    with its transforms' flipped `need` and lattice `centres` masks, ``(k, h, w)``:
    local members cut the pieces of the union of a group's `need` masks, the
    others run each transform's own lattice."""
    need_t, centres_t = torch.from_numpy(need), torch.from_numpy(centres)
    groups = transform_groups(tta, block.h == block.w, block.h * block.w <= BATCH_TRANSFORMS_MAX_PX)
    return [
        (
            group,
            torch.stack([apply_dihedral(need_t, t) for t in group]).numpy(),
            torch.stack([apply_dihedral(centres_t, t) for t in group]).numpy(),
        )
        for group in groups
    ]


def _block_passes(need: np.ndarray, centres: np.ndarray, block: Any, plan: InferencePlan) -> int:
    """Pieces and patch rows the members make over `block` (masks `need` and
    `centres`, :func:`block_transform_masks`): what its progress counts."""
    card = plan.members[0].card
    return sum(
        block_steps(needs, lattices, plan.member_margins, card.patch_px, plan.margin_px,
                    plan.sub_tile_px)
        for _, needs, lattices in block_transform_masks(need, centres, block, plan.tta)
    )  # fmt: skip


def _provenance(
    grid: TileGrid, total: int, tiles_run: int, device: torch.device, precision: str, start: float
) -> dict[str, Any]:
    return {
        "tiles_total": total,
        "tiles_run_last": tiles_run,
        "device": str(device),
        "precision": precision,  # part of the run's settings too, unless float32
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
