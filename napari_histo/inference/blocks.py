"""How each ensemble member runs inside one large tile (a *block*) of the engine.

A block is read once and every member computes its probabilities over the
block's interior (the block minus its margin ``M`` on each side):

* a **local** member (its card has a measured ``receptive_margin_px`` ``m``)
  runs on pieces of at most ``sub_tile_px + 2 m``, each shrunk to the pixels
  the block needs in it (:func:`local_pieces`), and keeps each piece's centre,
  which equals the result of an unbounded tile (within
  :data:`napari_histo.models.receptive.MARGIN_TOLERANCE`): no blending, each
  output pixel computed about once;
* any other member (image-level pooling, TorchScript with a fixed input) runs
  on its training patch, blended, on a lattice of stride
  :data:`POOLED_STRIDE_FRACTION` × patch anchored at the region's origin: the
  same patches whatever the blocks, so no seam where blocks meet. The patch
  engine runs it at half-patch stride; three-quarters runs 0.44x the patches,
  and the difference stays within what large tiles change anyway
  (docs/benchmarks.md).

Both are wrapped as callables that :func:`napari_histo.inference.ensemble.ensemble_predict`
treats like models (they return log-probabilities), so test-time augmentation
and the uncertainty maps work unchanged. The input carries two more channels, flipped and
rotated with the image by the augmentation: the pixels the block's grid tiles
need (1), and the 2 × 2 (odd patch: 1 × 1) centres of the lattice's patches
that lie inside the block (1). Pieces and patches that meet no needed pixel are
skipped, so glass inside a block's bounding box costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from napari_histo.tiling import blend_weights

__all__ = [
    "PATCH_STRIDE_FRACTION",
    "PIECE_ALIGN_PX",
    "POOLED_STRIDE_FRACTION",
    "block_steps",
    "computed_px",
    "large_tile_default",
    "lattice_centres",
    "local_pieces",
    "member_cores",
    "member_forwards",
    "patch_rows",
    "pieces",
    "sub_tile_default",
]

#: Blocks and local members' pieces start at multiples of this from the region
#: origin, so every piece sees the slide at the same phase of the models' strides.
PIECE_ALIGN_PX = 32
#: Large tiles' grid cells are this fraction of the patch (the patch engine's stride).
PATCH_STRIDE_FRACTION = 0.5
#: Inside blocks, members without a receptive margin run their patches at this
#: fraction of the patch as stride (25 % overlap): on the bench slide the run took
#: 15.1 s against 19.5 s at 0.5, Dice unchanged (docs/benchmarks.md).
POOLED_STRIDE_FRACTION = 0.75
_EPS = 1e-12


def large_tile_default(device: torch.device) -> int:
    """Largest block side (model px): 1536 on a CPU, 4096 elsewhere.

    On the 2-core CPU blocks of 1536, 2048 and 4096 px ran the bench slide in
    about the same time (local members run in 512-px pieces there anyway), and
    smaller blocks hold less: the peak RSS of a large-tile run follows its
    largest block (32k² mosaic slide: 0.90-0.98 GB above the loaded models with
    1536, 1.28 GB with 2048; an 8k² slide, whose blocks are smaller anyway,
    0.6-0.8 GB).
    """
    return 1536 if device.type == "cpu" else 4096


def sub_tile_default(device: torch.device) -> int | None:
    """Piece side for local members: 512 px on a CPU, None (the whole interior) elsewhere.

    Measured on the 2-core CPU (default ensemble, model px/s): the U-Nets ran
    2.4-2.6 MPx/s on 256-512 px inputs and 1.1-1.8 MPx/s on 1024-2048 px (their
    full-resolution activations outgrow the caches); a GPU keeps its speed. With
    pieces fitted to the tissue, cores of 384, 512 and 768 px took the same time
    on the bench slide (19.2-19.6 s; smaller cores repeat more margin, larger
    ones cover more glass).
    """
    return 512 if device.type == "cpu" else None


def member_cores(
    models: Sequence[Any], sub_tile_px: int | None, device: torch.device
) -> tuple[int | None, ...]:
    """Piece core (model px; None: the whole interior) of each member in a block.

    `sub_tile_px` when given, for every member. Else :func:`sub_tile_default`,
    except on a CPU for a model whose class sets ``cpu_piece_px``: DeepLabV3+
    works mostly at 1/16 resolution and kept 3.3-4.0 MPx/s from 256 to 1952 px
    inputs on the 2-core CPU, where the U-Nets fell from 3.1 to 1.4, so it runs
    on larger pieces, which repeat less of its wide margin (v2.1's weights with a
    256-px pooling window, margin 208 px, on the bench slide: 4.7 model px per
    output px in 512-px pieces, 3.0 in 1024-px pieces; docs/benchmarks.md).
    """
    if sub_tile_px is not None:
        return (sub_tile_px,) * len(models)
    default = sub_tile_default(device)
    if default is None:
        return (None,) * len(models)
    return tuple(getattr(m, "cpu_piece_px", default) for m in models)


def _per_member(cores: int | Sequence[int | None] | None, n: int) -> tuple[int | None, ...]:
    """`cores` as one core per member (a single value applies to all)."""
    if cores is None or isinstance(cores, int | np.integer):
        return (None if cores is None else int(cores),) * n
    cores = tuple(cores)
    if len(cores) != n:
        raise ValueError(f"{len(cores)} piece cores for {n} members")
    return cores


def pieces(length: int, margin: int, core: int) -> list[tuple[int, int]]:
    """``(start, size)`` of the cores cutting ``[margin, length - margin)`` in `core` steps.

    The last one is shorter when `core` does not divide the interior, so cores
    never overlap and each starts where the previous one ends.
    """
    end = length - margin
    return [(s, min(core, end - s)) for s in range(margin, end, core)]


def _span(flags: np.ndarray, start: int, size: int) -> tuple[int, int] | None:
    """The `PIECE_ALIGN_PX`-aligned ``(start, size)`` inside ``[start, start + size)``
    holding every True of ``flags[start : start + size]``, or None."""
    hits = np.flatnonzero(flags[start : start + size])
    if hits.size == 0:
        return None
    a = start + int(hits[0]) // PIECE_ALIGN_PX * PIECE_ALIGN_PX
    b = min(start + size, start + -(-(int(hits[-1]) + 1) // PIECE_ALIGN_PX) * PIECE_ALIGN_PX)
    return a, b - a


def local_pieces(need: Any, block_margin: int, core: int | None) -> list[tuple[int, int, int, int]]:
    """``(y, x, h, w)`` of the pieces' cores a local member computes in a block.

    The block's interior (the block minus `block_margin`) is cut in squares of
    side `core` (None: one square for the whole interior); each square shrinks to
    the box, aligned to :data:`PIECE_ALIGN_PX`, of the pixels in it that `need`
    (a ``(..., h, w)`` bool mask, numpy or torch) marks, and squares where it
    marks none are left out. Glass at a tissue edge costs nothing, and every
    piece starts at the same phase of the models' strides.
    """
    if isinstance(need, torch.Tensor):
        need = need.detach().cpu().numpy()
    need = np.asarray(need, bool)
    h, w = need.shape[-2:]
    need = need.reshape(-1, h, w).any(axis=0)
    side = core or max(h, w)
    out = []
    for y, ch in pieces(h, block_margin, side):
        band = need[y : y + ch]
        if not band.any():
            continue
        for x, cw in pieces(w, block_margin, side):
            square = band[:, x : x + cw]
            cols = _span(square.any(axis=0), 0, cw)
            if cols is None:
                continue
            rows = _span(square.any(axis=1), 0, ch)
            out.append((y + rows[0], x + cols[0], rows[1], cols[1]))
    return out


def _centre_offsets(patch: int) -> tuple[int, ...]:
    """Offsets from a patch's start of its centre pixels: two (even patch) or one."""
    c = patch // 2
    return (c - 1, c) if patch % 2 == 0 else (c,)


def lattice_centres(shape: tuple[int, int], offset: tuple[int, int], patch: int) -> np.ndarray:
    """Bool ``(h, w)`` mask of the centres of the pooled members' patches in a block.

    The patches start on the lattice of stride ``round(patch ×
    POOLED_STRIDE_FRACTION)`` anchored at the region's origin; `offset` is the
    block's ``(y, x)`` from that origin, and only patches wholly inside the block
    are marked. The centres (2 × 2 pixels for an even patch) map onto the
    centres of the same patches under any flip or rotation of the block.
    """
    h, w = shape
    stride = round(patch * POOLED_STRIDE_FRACTION)

    def starts(offset_px: int, length: int) -> np.ndarray:
        return np.arange((-offset_px) % stride, length - patch + 1, stride)

    ys, xs = starts(offset[0], h), starts(offset[1], w)
    mask = np.zeros((h, w), bool)
    for dy in _centre_offsets(patch):
        for dx in _centre_offsets(patch):
            mask[np.ix_(ys + dy, xs + dx)] = True
    return mask


def _starts_from_centres(hits: np.ndarray, patch: int) -> list[int]:
    """Patch starts along one axis from the indices holding lattice centres."""
    offsets = _centre_offsets(patch)
    return [int(i) - offsets[0] for i in hits[:: len(offsets)]]


def patch_rows(need: Any, centres: Any, patch: int) -> list[tuple[int, list[int]]]:
    """Where a non-local member runs in a block: per row of patches its top and the
    left edges of the patches that meet `need`, the patches being those whose
    centres `centres` marks (:func:`lattice_centres`; masks numpy or torch, possibly
    flipped or rotated with the block). One lattice: the lattices of several
    transforms are not merged (each runs its own, :func:`block_steps`)."""
    h, w = need.shape[-2:]
    if isinstance(centres, torch.Tensor):
        centres = centres.detach().cpu().numpy()
    centres = np.asarray(centres, bool).reshape(h, w)
    ys = _starts_from_centres(np.flatnonzero(centres.any(axis=1)), patch)
    xs = _starts_from_centres(np.flatnonzero(centres.any(axis=0)), patch)
    rows = []
    for y in ys:
        row = [x for x in xs if bool(need[..., y : y + patch, x : x + patch].any())]
        if row:
            rows.append((y, row))
    return rows


def _uniform(x: torch.Tensor, classes: int) -> torch.Tensor:
    b, _, h, w = x.shape
    return torch.full((b, classes, h, w), -math.log(classes), device=x.device)


def _local(
    model: Callable, margin: int, block_margin: int, core: int | None, on_step: Callable
) -> Callable:
    """Exact centres of pieces with `margin` of context, over the block's interior."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        x, need = x[:, :3], x[:, 3] > 0.5
        out = None
        # One piece per forward: on a CPU that is the fastest per pixel (a batch
        # of large pieces outgrows the caches); on a GPU there is one piece.
        for y, x0, h, w in local_pieces(need, block_margin, core):
            crop = x[..., y - margin : y + h + margin, x0 - margin : x0 + w + margin]
            logits = model(crop)[..., margin : margin + h, margin : margin + w].float()
            if out is None:  # log-probabilities; pixels no piece covers stay uniform
                out = _uniform(x, logits.shape[1])
            out[..., y : y + h, x0 : x0 + w] = torch.log_softmax(logits, 1)
            on_step()
        return out if out is not None else _uniform(x, 2)

    return forward


def _patch(model: Callable, patch: int, on_step: Callable, batch: int) -> Callable:
    """Blended patches on the lattice the block's fifth channel marks, `batch`
    patches per forward (a whole row of a large tile at once held several hundred
    MB of activations on a CPU)."""
    weight = torch.from_numpy(blend_weights(patch, 1 - POOLED_STRIDE_FRACTION))

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            # Transforms batched together (small blocks, TTA): each has its own
            # lattice in its flipped frame, so each runs its own patches.
            return torch.cat([forward(x[i : i + 1]) for i in range(x.shape[0])])
        x, need, centres = x[:, :3], x[:, 3] > 0.5, x[:, 4] > 0.5
        b, _, h, w = x.shape
        wt = weight.to(x.device)
        total = weights = None
        for y, row in patch_rows(need, centres, patch):
            for first in range(0, len(row), batch):
                part = row[first : first + batch]
                crops = [x[..., y : y + patch, s : s + patch] for s in part]
                probs = torch.softmax(model(torch.cat(crops)).float(), 1)
                if total is None:
                    total = torch.zeros((b, probs.shape[1], h, w), device=x.device)
                    weights = torch.zeros((h, w), device=x.device)
                for k, s in enumerate(part):
                    total[..., y : y + patch, s : s + patch] += probs[k * b : (k + 1) * b] * wt
                    weights[y : y + patch, s : s + patch] += wt
            on_step()
        if total is None:
            return _uniform(x, 2)
        # In place: a large tile's full-size temporaries are tens of MB each.
        uncovered = weights <= 0
        total.div_(weights.clamp_min_(_EPS)).masked_fill_(uncovered, 1.0 / total.shape[1])
        return total.clamp_min_(_EPS).log_()

    return forward


def member_forwards(
    models: Sequence[Callable],
    margins: Sequence[int | None],
    patch_px: int,
    block_margin: int,
    sub_tile_px: int | Sequence[int | None] | None,
    on_step: Callable[[], None] | None = None,
    patch_batch: int = 4,
) -> list[Callable]:
    """One callable per member computing its log-probabilities over a block's interior.

    `sub_tile_px` is the local members' piece core, one for all or one per
    member (:func:`member_cores`). `on_step` is called after each piece (local
    members) or row of patches (the others): :func:`block_steps` of them make
    one pass of every member. Members without a margin run `patch_batch`
    patches per forward.
    """
    step = on_step or (lambda: None)
    cores = _per_member(sub_tile_px, len(models))
    return [
        _patch(model, patch_px, step, patch_batch)
        if m is None
        else _local(model, m, block_margin, core, step)
        for model, m, core in zip(models, margins, cores, strict=True)
    ]


def _pieces_by_core(
    need: np.ndarray,
    margins: Sequence[int | None],
    cores: Sequence[int | None],
    block_margin: int,
) -> dict[int | None, list[tuple[int, int, int, int]]]:
    """The local members' pieces, found once per distinct core (members share them)."""
    local = {c for m, c in zip(margins, cores, strict=True) if m is not None}
    return {c: local_pieces(need, block_margin, c) for c in local}


def block_steps(
    need: np.ndarray,
    centres: np.ndarray,
    margins: Sequence[int | None],
    patch_px: int,
    block_margin: int,
    sub_tile_px: int | Sequence[int | None] | None,
) -> int:
    """Pieces and rows of patches one pass of every member makes over a block
    (masks `need` and `centres`, :func:`lattice_centres`).

    With ``(k, h, w)`` stacks (transforms run as one batch) local members cut the
    pieces of the union of the `need` masks once, and the others run the rows
    of each transform's own lattice.
    """
    cores = _per_member(sub_tile_px, len(margins))
    found = _pieces_by_core(need, margins, cores, block_margin)
    rows = 0
    if None in margins:
        needs = np.asarray(need, bool).reshape(-1, *np.shape(need)[-2:])
        lattices = np.asarray(centres, bool).reshape(needs.shape)
        rows = sum(len(patch_rows(n, c, patch_px)) for n, c in zip(needs, lattices, strict=True))
    return sum(rows if m is None else len(found[c]) for m, c in zip(margins, cores, strict=True))


def computed_px(
    need: np.ndarray,
    centres: np.ndarray,
    margins: Sequence[int | None],
    patch_px: int,
    block_margin: int,
    sub_tile_px: int | Sequence[int | None] | None,
) -> float:
    """Model pixels each member computes for a block (masks `need` and `centres`,
    :func:`lattice_centres`), mean over the members."""
    cores = _per_member(sub_tile_px, len(margins))
    found = _pieces_by_core(need, margins, cores, block_margin)
    patches = (
        sum(len(row) for _, row in patch_rows(need, centres, patch_px)) if None in margins else 0
    )
    total = 0.0
    for m, core in zip(margins, cores, strict=True):
        if m is None:
            total += patch_px**2 * patches
        else:
            total += sum((h + 2 * m) * (w + 2 * m) for _, _, h, w in found[core])
    return total / max(1, len(margins))
