"""Planning an inference run: configuration, input checks, tissue, grid and store run.

:func:`plan_inference` does everything that can fail on bad input before any
thread starts or any tile is read, and returns an :class:`InferencePlan`: a
plain record that :func:`napari_histo.inference.engine.execute_inference`
carries out (in this process, the viewer's worker or on a cluster).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_histo.errors import HistoError
from napari_histo.frames import check_region_l0
from napari_histo.inference.blocks import (
    PATCH_STRIDE_FRACTION,
    PIECE_ALIGN_PX,
    POOLED_STRIDE_FRACTION,
    computed_px,
    large_tile_default,
    lattice_centres,
    member_cores,
)
from napari_histo.inference.ensemble import tta_transforms
from napari_histo.io.slide import Slide
from napari_histo.io.store import (
    ResultGeometry,
    ResultRun,
    ResultStore,
    default_store_path,
    slide_identity,
)
from napari_histo.models import LoadedModel
from napari_histo.stain import resolve as resolve_stain
from napari_histo.tiling import TileGrid, make_grid, order_centre_out
from napari_histo.tissue import slide_tissue_mask

__all__ = [
    "Block",
    "EngineConfig",
    "InferencePlan",
    "autocast",
    "autocast_dtype",
    "cpu_has_native_bfloat16",
    "plan_blocks",
    "plan_inference",
    "precision_name",
    "select_device",
]

TILINGS = ("auto", "large", "patch")
#: Large tiles start at multiples of this (and of half the patch) from the region
#: origin, so every block sees the slide at the same phase of the models' strides.
BLOCK_ALIGN_PX = PIECE_ALIGN_PX


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
        Mixed precision (:func:`autocast_dtype`): float16 on CUDA, bfloat16 on
        a CPU with bfloat16 in hardware; False computes in float32. Part of
        the run's settings when not float32 (a run never mixes precisions).
    prefetch_batches : int
        Batches read ahead of the model.
    stain : {"card", "none", "macenko", "reinhard"}
        Stain normalisation, fitted once per slide on its thumbnail (see
        :func:`napari_histo.stain.resolve`); "card" follows the model cards.
    tiling : {"auto", "large", "patch"}
        "large": slides are read in large tiles (blocks of grid tiles, at most
        `large_tile_px` a side) and each member computes the block's interior
        (see :mod:`napari_histo.inference.blocks`): members with a measured
        receptive margin (card ``receptive_margin_px``) compute each output pixel
        about once, exactly; the others their blended patches. "patch": tiles of
        the card's patch, blended over `overlap` (the default here and in the
        viewer, whose viewport runs want their first cells at once). "auto":
        large when a member has a margin (``napari-histo infer`` and cohort
        runs: 1.5-1.8x faster than patches on a 2-core CPU, docs/benchmarks.md).
    large_tile_px : int or None
        Largest side (model px) of a block: the reading unit, and the largest
        input a local member sees on a GPU. Memory grows with its square. None:
        :func:`~napari_histo.inference.blocks.large_tile_default` (1536 on a CPU,
        4096 elsewhere).
    sub_tile_px : int or None
        Core side of the pieces local members run on inside a block (plus their
        margin); None: 512 on a CPU (measured fastest there) except for members
        that keep their speed on large inputs (DeepLabV3+), the whole block on a
        GPU (:func:`~napari_histo.inference.blocks.member_cores`).
    """

    tta: int = 1
    overlap: float = 0.5
    batch_size: int | None = None
    read_threads: int | None = None
    device: str = "auto"
    amp: bool = True
    prefetch_batches: int = 3
    stain: str = "card"
    tiling: str = "patch"
    large_tile_px: int | None = None
    sub_tile_px: int | None = None

    def __post_init__(self) -> None:
        tta_transforms(self.tta)  # validates
        resolve_stain(self.stain, ())  # validates
        if not 0 <= self.overlap < 1:
            raise ValueError(f"`overlap` must be in [0, 1), got {self.overlap!r}")
        if self.tiling not in TILINGS:
            raise ValueError(f"`tiling` must be one of {', '.join(TILINGS)}, got {self.tiling!r}")
        for name, minimum, multiple, optional in (
            ("batch_size", 1, 1, True),
            ("read_threads", 1, 1, True),
            ("prefetch_batches", 1, 1, False),
            ("large_tile_px", 512, 1, True),
            ("sub_tile_px", 64, 32, True),
        ):
            value = getattr(self, name)
            if optional and value is None:
                continue
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < minimum
                or (value % multiple)
            ):
                what = (
                    f"an int >= {minimum}"
                    if multiple == 1
                    else f"a multiple of {multiple} >= {minimum}"
                )
                raise ValueError(f"`{name}` must be {what}, got {value!r}")


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


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU does bfloat16 arithmetic in hardware (AVX512-BF16 or AMX).

    oneDNN runs bfloat16 on any AVX512 CPU, but without these instructions it
    emulates it, no faster than float32.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except (RuntimeError, OSError):  # no CPU information on this platform
        return False


def autocast_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """The dtype the members' forwards autocast to on `device` with `amp`.

    float16 on CUDA; bfloat16 on a CPU that has it in hardware
    (:func:`cpu_has_native_bfloat16`; the speed and the differences from float32
    are measured in docs/benchmarks.md); float32 elsewhere.

    Parameters
    ----------
    device : torch.device
        Where the forwards run.
    amp : bool, default True
        Mixed precision where it pays; False: float32.

    Returns
    -------
    torch.dtype or None
        None for float32 (no autocast).
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bfloat16():
        return torch.bfloat16
    return None


def precision_name(device: torch.device, amp: bool = True) -> str:
    """What the forwards compute in: "float32", "bfloat16" or "float16" (:func:`autocast_dtype`)."""
    return str(autocast_dtype(device, amp) or torch.float32).removeprefix("torch.")


def autocast(device: torch.device, amp: bool = True) -> contextlib.AbstractContextManager:
    """Context for the members' forwards on `device`: :func:`autocast_dtype`.

    For float32 it switches autocast off (an enclosing autocast of the caller's
    thread does not apply) where torch has autocast for the device, and does
    nothing elsewhere. Autocast is per thread: enter it on the thread that runs
    the forwards.
    """
    dtype = autocast_dtype(device, amp)
    if dtype is not None:
        return torch.autocast(device_type=device.type, dtype=dtype)
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


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


@dataclass(frozen=True)
class Block:
    """One large tile: a model-px rectangle run at once, and the grid tiles cut from it."""

    x: int
    y: int
    w: int
    h: int
    tiles: np.ndarray  # grid tile indices inside it (each at least the margin from its edge)


def block_need(block: Block, grid: TileGrid) -> np.ndarray:
    """Bool ``(h, w)`` mask of the block's pixels that its grid tiles cover."""
    need = np.zeros((block.h, block.w), bool)
    size = grid.tile_px
    for x, y in grid.origins[block.tiles]:
        need[y - block.y : y - block.y + size, x - block.x : x - block.x + size] = True
    return need


def block_centres(block: Block, grid: TileGrid, patch_px: int) -> np.ndarray:
    """Bool ``(h, w)`` mask of the centres of the patches a member without a receptive
    margin computes in the block (:func:`~napari_histo.inference.blocks.lattice_centres`,
    anchored at the grid region's origin)."""
    rx, ry = grid.region[:2]
    return lattice_centres((block.h, block.w), (block.y - ry, block.x - rx), patch_px)


def plan_blocks(
    grid: TileGrid, todo: np.ndarray, margin_px: int, max_px: int, align: int = BLOCK_ALIGN_PX
) -> tuple[Block, ...]:
    """Group the grid tiles `todo` into large tiles of side at most about `max_px`.

    Each block covers its tiles plus `margin_px` on every side, starts at a
    multiple of `align` from the region origin and has a side that is a
    multiple of it. Blocks are split evenly along each axis; they come in
    the order of their first tile in `todo` (so a centre-out order is kept).
    """
    size = grid.tile_px
    rx, ry, rw, rh = grid.region
    per_block = max(1, (max_px - 2 * margin_px) // size)  # tiles along one side

    def even(n_tiles: int) -> int:
        return -(-n_tiles // -(-n_tiles // per_block))

    kx, ky = even(-(-rw // size)) * size, even(-(-rh // size)) * size
    groups: dict[tuple[int, int], list[int]] = {}
    for index in np.asarray(todo, np.int64).tolist():
        x, y = grid.origins[index]
        groups.setdefault((int(x - rx) // kx, int(y - ry) // ky), []).append(index)
    blocks = []
    for tiles in groups.values():
        xs, ys = grid.origins[tiles, 0], grid.origins[tiles, 1]
        x0 = rx + (int(xs.min()) - margin_px - rx) // align * align
        y0 = ry + (int(ys.min()) - margin_px - ry) // align * align
        x1, y1 = int(xs.max()) + size + margin_px, int(ys.max()) + size + margin_px
        w, h = -(-(x1 - x0) // align) * align, -(-(y1 - y0) // align) * align
        blocks.append(Block(x0, y0, w, h, np.asarray(tiles, np.int64)))
    return tuple(blocks)


def _member_margins(members: Sequence[LoadedModel], tiling: str) -> tuple[int | None, ...] | None:
    """Each member's receptive margin (None: not local) when large tiles are used, else None."""
    if tiling == "patch":
        return None
    margins = tuple(
        None if m.card.format == "torchscript" else m.card.receptive_margin_px for m in members
    )
    if all(v is None for v in margins):
        if tiling == "large":
            raise HistoError(
                f"{members[0].card_path.name}: no member has a measured `receptive_margin_px`, "
                "so large tiles gain nothing; use tiling 'patch' or 'auto'"
            )
        return None
    return margins


@dataclass(frozen=True)
class InferencePlan:
    """A checked, prepared run: what to compute and where it goes (no threads, no open file).

    Made by :func:`plan_inference` (which validates the inputs, finds the
    tissue, lays out the grid and creates or resumes the store run) and
    carried out by :func:`execute_inference`.
    """

    slide_path: Path
    members: tuple[LoadedModel, ...]
    config: EngineConfig
    device: torch.device
    tta: tuple[int, ...]
    class_index: int
    stain: Any  # a napari_histo.stain normaliser, or None
    stain_source: Any  # its fit on this slide, or None
    grid: TileGrid
    geometry: ResultGeometry
    run: ResultRun
    todo: np.ndarray  # tile indices to compute, in order
    partial: bool  # only the cells meeting `within`
    started: float  # time.monotonic() when planning began
    member_margins: tuple[int | None, ...] | None = None  # large tiles: per member
    margin_px: int | None = None  # large tiles: the blocks' margin
    sub_tile_px: tuple[int | None, ...] | None = None  # large tiles: piece core per member
    blocks: tuple[Block, ...] | None = None  # large tiles (None: patch tiles)
    mpp: float | None = None  # the caller's µm/px for a slide without a plausible one

    @property
    def computed_px(self) -> float:
        """Model pixels each member will compute (mean over members, per transform)."""
        if self.blocks is None:
            return float(len(self.todo) * self.grid.tile_px**2)
        patch = self.members[0].card.patch_px
        return sum(
            computed_px(block_need(b, self.grid), block_centres(b, self.grid, patch),
                        self.member_margins, patch, self.margin_px, self.sub_tile_px)
            for b in self.blocks
        )  # fmt: skip

    @property
    def total(self) -> int:
        """Tiles of the whole grid (tissue only)."""
        return len(self.grid.origins)


def plan_inference(
    slide_path: str | Path,
    members: Sequence[LoadedModel],
    *,
    region: Sequence[int] | None = None,
    within: Sequence[int] | None = None,
    centre: tuple[float, float] | None = None,
    config: EngineConfig | None = None,
    out_dir: str | Path | None = None,
    mpp: float | None = None,
    tissue_progress: Callable[[int, int], None] | None = None,
) -> InferencePlan:
    """Check the inputs and prepare a run (tissue, grid, store); raises here, not later.

    Arguments as in :func:`infer_slide`; `mpp` (µm per level-0 px) overrides
    the slide's own, e.g. for a file without a plausible one. `tissue_progress`
    is called ``(done, total)`` while the tissue is found (seconds to minutes on
    a large slide without a coarse level).

    Raises
    ------
    ValueError, RegionError
        For no members, a bad device or a region outside the slide.
    HistoError
        For members that disagree, an unreadable slide or store.
    """
    started = time.monotonic()
    config = config or EngineConfig()
    lead = _check_members(members)
    card = lead.card
    device = select_device(config.device)
    class_index = card.classes.index("tumor") if "tumor" in card.classes else len(card.classes) - 1
    tta = tta_transforms(config.tta)
    stain = resolve_stain(config.stain, [m.card for m in members])
    margins = _member_margins(members, config.tiling)
    # Large tiles: grid tiles (cells) of half the patch, no overlap: the blocks need
    # no blending, and the cells follow the tissue as finely as the patch engine's.
    overlap = 0.0 if margins is not None else config.overlap
    if margins is not None:
        half = round(card.patch_px * PATCH_STRIDE_FRACTION)
        align = math.lcm(BLOCK_ALIGN_PX, half)
        widest = max(card.patch_px if m is None else m for m in margins)
        margin = -(-widest // BLOCK_ALIGN_PX) * BLOCK_ALIGN_PX

    with Slide(slide_path, mpp=mpp) as slide:
        stain_source = stain.fit_slide(slide) if stain is not None else None
        slide_mpp = slide.require_mpp()
        width, height = slide.dimensions
        region_l0 = _check_region(region, width, height, slide.path)
        within_l0 = (
            None if within is None else _check_region(within, width, height, slide.path, "within")
        )
        tissue, tissue_downsample = slide_tissue_mask(slide, progress=tissue_progress)
        grid = make_grid(
            region_l0,
            slide_mpp=slide_mpp,
            model_mpp=card.input_mpp,
            tile_px=card.patch_px if margins is None else half,
            overlap=overlap,
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
            "overlap": overlap,
            "model_mpp": card.input_mpp,
            "tile_px": card.patch_px,
            "region_l0": list(region_l0),
            "class": card.classes[class_index],
        }
        if stain_source is not None:  # only then, so earlier runs still resume
            settings["stain"] = {**stain.spec(), "source": stain_source.to_dict()}
        precision = precision_name(device, config.amp)
        if precision != "float32":  # likewise; one run never mixes precisions
            settings["precision"] = precision
        if margins is not None:  # likewise
            settings["tiling"] = {"kind": "large", "margins": list(margins)}
            if None in margins:  # a run at the earlier half-patch stride does not resume
                settings["tiling"]["pooled_stride"] = POOLED_STRIDE_FRACTION
        store = ResultStore(
            default_store_path(slide.path, out_dir),
            slide_identity(slide.path, slide.dimensions, slide_mpp),
        )
        resolved_path = slide.path
    run_ = store.create_or_resume(settings, geometry)
    covered = grid.covered_cells()
    if not run_.done[~covered].all():
        run_.mark_done(~covered)
    wanted = ~run_.done
    if within_l0 is not None:
        wanted &= _cells_meeting(grid, within_l0)
    todo = grid.tiles_touching(wanted)
    if centre is not None and len(todo):
        order = order_centre_out(grid, (float(centre[0]), float(centre[1])))
        todo = order[np.isin(order, todo)]
    if len(grid.origins) == 0:
        warnings.warn(
            f"{resolved_path}: no tissue found in the region; the result is empty",
            UserWarning,
            stacklevel=2,
        )
    return InferencePlan(
        slide_path=resolved_path,
        members=tuple(members),
        config=config,
        device=device,
        tta=tuple(tta),
        class_index=class_index,
        stain=stain,
        stain_source=stain_source,
        grid=grid,
        geometry=geometry,
        run=run_,
        todo=np.asarray(todo, dtype=np.int64),
        partial=within_l0 is not None,
        started=started,
        mpp=mpp,
        member_margins=margins,
        margin_px=None if margins is None else margin,
        sub_tile_px=member_cores([m.model for m in members], config.sub_tile_px, device),
        blocks=None
        if margins is None
        else plan_blocks(
            grid, todo, margin, config.large_tile_px or large_tile_default(device), align
        ),
    )
