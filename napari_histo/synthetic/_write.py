"""Public entry point: validate arguments, write the slide and its truth atomically."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_histo.synthetic._layout import ARTEFACTS, F, SlideModel, build_model
from napari_histo.synthetic._svs import Job, write_pyramid
from napari_histo.synthetic._truth import TruthWriter, truth_downsample_for, truth_path_for

MIN_SIZE, MAX_SIZE = 1024, 131072
AUTO_ALL_MAX_PX = 16384  # nuclei_regions="auto": label the whole slide up to this size
AUTO_REGION_PX = 2048


@dataclass(frozen=True)
class SyntheticSlide:
    """A synthetic slide written by :func:`write_synthetic_slide`.

    Attributes
    ----------
    path : Path
        The ``.svs`` file.
    truth_path : Path
        The ground-truth zarr group beside it (see :func:`read_truth`).
    width, height : int
        Level-0 size (px).
    seed : int
        Seed it was generated from.
    mpp : float
        Level-0 resolution (µm/px).
    truth_downsample : int
        Downsample of the tissue/tumour masks relative to level 0.
    """

    path: Path
    truth_path: Path
    width: int
    height: int
    seed: int
    mpp: float
    truth_downsample: int


def write_synthetic_slide(
    path: str | os.PathLike[str],
    size: int | tuple[int, int] = 8192,
    seed: int = 0,
    *,
    tile_px: int = 256,
    mpp: float = 0.25,
    jpeg_quality: int = 85,
    artefacts: bool | Sequence[str] = True,
    nuclei_regions: str | Sequence[tuple[int, int, int, int]] | None = "auto",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SyntheticSlide:
    """Write a deterministic procedural H&E-like whole-slide image and its ground truth.

    Parameters
    ----------
    path : str or PathLike
        The ``.svs`` to write (Aperio-style pyramidal TIFF, JPEG tiles, 40x).
        The truth goes to :func:`truth_path_for` ``(path)``. Both are written under
        temporary names in the same directory and renamed when complete.
    size : int or (int, int)
        Level-0 width = height (px), or ``(width, height)``; 1024 to 131072.
    seed : int
        Seed (>= 0). Same seed and arguments give the same pixels, whatever ``workers``.
    tile_px : int
        TIFF tile size (px): a multiple of 16 from 64 to 1024.
    mpp : float
        Level-0 resolution (µm/px), 0.1 to 1.0. Objects keep their size in µm.
    jpeg_quality : int
        JPEG quality, 1 to 100.
    artefacts : bool or sequence of {"pen", "fold", "blur"}
        ``True``: the seed picks a non-empty subset; ``False``: none; or exactly these.
    nuclei_regions : "auto", "all", None or sequence of (x, y, w, h)
        Where nucleus labels are stored (level-0 px). ``"auto"``: the whole slide up to
        16384 px a side, else four 2048² regions (two in tumour, two in normal tissue).
    workers : int, optional
        Rendering processes (default: the CPU count); 1 renders in this process.
    progress : callable, optional
        Called as ``progress(done, total)`` (tiles, all levels) as tile rows are written.

    Returns
    -------
    SyntheticSlide

    Raises
    ------
    TypeError, ValueError
        For an argument of the wrong type or out of range (the message names it).
    OSError
        If the output cannot be written (the message names the path). Nothing is left
        under the final names.
    """
    path = _check_path(path)
    width, height = _check_size(size)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    tile_px = _check_int("tile_px", tile_px, 64, 1024)
    if tile_px % 16:
        raise ValueError(f"`tile_px` must be a multiple of 16, got {tile_px}")
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float)):
        raise TypeError(f"`mpp` must be a float, got {type(mpp).__name__}")
    if not 0.1 <= mpp <= 1.0:
        raise ValueError(f"`mpp` must be in [0.1, 1.0] µm/px, got {mpp}")
    jpeg_quality = _check_int("jpeg_quality", jpeg_quality, 1, 100)
    chosen = _check_artefacts(artefacts)
    if workers is None:
        workers = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else (os.cpu_count() or 1)
        )
    else:
        workers = _check_int("workers", workers, 1, 1024)
    if progress is not None and not callable(progress):
        raise TypeError(f"`progress` must be callable or None, got {type(progress).__name__}")

    model = build_model(seed, width, height, float(mpp), tile_px, chosen)
    regions = _resolve_regions(nuclei_regions, model)
    truth_path = truth_path_for(path)
    tag = uuid.uuid4().hex[:8]
    tmp_svs = path.with_name(f".{path.name}.{tag}.tmp")
    tmp_truth = truth_path.with_name(f".{truth_path.name}.{tag}.tmp")
    try:
        try:
            tmp_svs.touch(exist_ok=False)
        except OSError as exc:
            raise type(exc)(
                exc.errno, f"cannot write synthetic slide ({exc.strerror})", str(path)
            ) from exc
        truth = TruthWriter(
            tmp_truth, model, regions, {"jpeg_quality": jpeg_quality, "tile_px": tile_px}
        )
        write_pyramid(
            tmp_svs,
            Job(model, tile_px, jpeg_quality),
            truth,
            workers,
            progress,
            label_text=f"SYNTH {seed} {width}x{height} napari histo",
        )
        truth.close()
        _replace_dir(tmp_truth, truth_path)
        os.replace(tmp_svs, path)
    finally:
        tmp_svs.unlink(missing_ok=True)
        shutil.rmtree(tmp_truth, ignore_errors=True)
    return SyntheticSlide(
        path=path,
        truth_path=truth_path,
        width=width,
        height=height,
        seed=seed,
        mpp=float(mpp),
        truth_downsample=truth_downsample_for(width, height),
    )


def _replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing an old ``dst`` without a gap in between."""
    if dst.exists() or dst.is_symlink():
        trash = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(dst, trash)
        os.replace(src, dst)
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)
    else:
        os.replace(src, dst)


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or PathLike, got {type(path).__name__}")
    return Path(path).absolute()


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"`{name}` must be in [{lo}, {hi}], got {value}")
    return int(value)


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, tuple | list) and len(size) == 2:
        w, h = size
    elif isinstance(size, tuple | list):
        raise ValueError(f"`size` must be an int or a (width, height) pair, got {size!r}")
    else:
        w = h = size
    for v in (w, h):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"`size` must be an int or (int, int), got {size!r}")
        if v < MIN_SIZE:
            raise ValueError(f"`size` must be >= {MIN_SIZE} px, got {size!r}")
        if v > MAX_SIZE:
            raise ValueError(f"`size` must be <= {MAX_SIZE} px, got {size!r}")
    return int(w), int(h)


def _check_artefacts(artefacts) -> bool | tuple[str, ...]:
    if isinstance(artefacts, bool):
        return artefacts
    if isinstance(artefacts, str):
        artefacts = (artefacts,)
    if not isinstance(artefacts, Sequence | set | frozenset):
        raise TypeError(f"`artefacts` must be a bool or a sequence of names, got {artefacts!r}")
    for a in artefacts:
        if a not in ARTEFACTS:
            raise ValueError(f"`artefacts` names must be in {ARTEFACTS}, got {a!r}")
    return tuple(artefacts)


def _resolve_regions(regions, model: SlideModel) -> list[tuple[int, int, int, int]]:
    w, h = model.width, model.height
    if regions is None:
        return []
    if isinstance(regions, str):
        if regions == "all" or (regions == "auto" and max(w, h) <= AUTO_ALL_MAX_PX):
            return [(0, 0, w, h)]
        if regions == "auto":
            return auto_regions(model)
        raise ValueError(
            f"`nuclei_regions` must be 'auto', 'all', None or (x, y, w, h) "
            f"rectangles, got {regions!r}"
        )
    out = []
    for r in regions:
        if len(r) != 4 or not all(isinstance(v, (int, np.integer)) for v in r):
            raise TypeError(f"`nuclei_regions` entries must be (x, y, w, h) ints, got {r!r}")
        x, y, rw, rh = (int(v) for v in r)
        if rw < 1 or rh < 1 or x < 0 or y < 0 or x + rw > w or y + rh > h:
            raise ValueError(f"`nuclei_regions` entry {r!r} must lie inside the {w}x{h} slide")
        out.append((x, y, rw, rh))
    return out


def auto_regions(model: SlideModel, n: int = 4) -> list[tuple[int, int, int, int]]:
    """``n`` 2048² regions snapped to 1024 px: half deep in tumour, half in normal tissue."""
    rng = np.random.default_rng([model.seed, 0x4E6])
    g, s = model.grid_px, AUTO_REGION_PX
    td, tu = model.fields[F["tissue_d"]], model.fields[F["tumor_d"]]
    out: list[tuple[int, int, int, int]] = []
    for want in [tu > 150, (td > 250) & (tu < -300)] * (n // 2):
        iy, ix = np.nonzero(want) if want.any() else np.nonzero(td > 0)
        for _ in range(20):
            k = int(rng.integers(len(iy))) if len(iy) else 0
            cy, cx = (
                (iy[k], ix[k]) if len(iy) else (model.height // (2 * g), model.width // (2 * g))
            )
            x = int(np.clip(round((cx * g - s / 2) / 1024) * 1024, 0, model.width - s))
            y = int(np.clip(round((cy * g - s / 2) / 1024) * 1024, 0, model.height - s))
            if all(abs(x - o[0]) >= s or abs(y - o[1]) >= s for o in out):
                out.append((x, y, s, s))
                break
    return out
