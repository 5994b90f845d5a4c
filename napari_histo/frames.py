"""Coordinate frames: the one place that converts level-0 px, model px, µm and napari world.

Frames
------
level 0 (``l0_``)
    Slide pixels ``(x, y)`` at full resolution, as OpenSlide speaks them. Pixel
    ``u`` covers ``[u, u + 1)``; its centre is ``u + 0.5``.
model px
    Pixels of an array resampled by ``downsample`` level-0 px per px (a model's
    input, a result store, a label crop). Pixel ``j`` of an array whose top-left
    corner sits at level-0 ``o`` has its centre at ``o + (j + 0.5) · downsample``.
napari world
    ``(row, col)`` in µm. napari-histo's slide layers carry ``scale = mpp`` and
    no translate, so level-0 pixel centre ``u + 0.5`` is shown at world
    ``u · mpp``: ``world = (l0 - 0.5) · mpp`` and ``l0 = world / mpp + 0.5``.

``mpp`` is level-0 µm per px: a number or a ``(mpp_y, mpp_x)`` pair
(:func:`mpp_pair`); napari layers carry it in their metadata (:func:`layer_mpp`).
A value a person or a file gives is checked against :data:`MPP_RANGE`
(:func:`check_mpp`); a layer placed at one mpp follows a new one through
:func:`rescale_world`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from napari_histo.errors import RegionError

__all__ = [
    "MPP_RANGE",
    "Pair",
    "check_mpp",
    "check_region_l0",
    "data_to_world",
    "drawn_region_l0",
    "grid_transform",
    "l0_to_world",
    "layer_l0_transform",
    "layer_mpp",
    "model_downsample",
    "mpp_pair",
    "overlay_transform",
    "plausible_mpp",
    "rescale_world",
    "visible_region_l0",
    "world_to_l0",
]

Pair = tuple[float, float]

#: µm per level-0 px a microscope slide can have; values outside (TIFF resolution
#: defaults such as 72 dpi = 352.8 µm/px, garbage tags) are treated as missing.
MPP_RANGE = (0.05, 50.0)


class _Placed(Protocol):  # ResultGeometry, CropGeometry
    origin_l0: tuple[float, float]
    downsample: float


# -- mpp -----------------------------------------------------------------------------
def mpp_pair(mpp: Any, name: str = "mpp") -> Pair:
    """``(mpp_y, mpp_x)`` from a number or a ``(y, x)`` pair, both > 0.

    Examples
    --------
    >>> mpp_pair(0.5), mpp_pair((0.25, 0.5))
    ((0.5, 0.5), (0.25, 0.5))
    """
    if np.ndim(mpp) == 0:
        pair: tuple[Any, ...] = (mpp, mpp)
    else:
        pair = tuple(mpp)
        if len(pair) != 2:
            raise ValueError(f"`{name}` must be a number or a (y, x) pair, got {mpp!r}")
    try:
        mpp_y, mpp_x = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number or a (y, x) pair, got {mpp!r}") from None
    if not (mpp_y > 0 and mpp_x > 0 and math.isfinite(mpp_y) and math.isfinite(mpp_x)):
        raise ValueError(f"`{name}` must be > 0, got {mpp!r}")
    return mpp_y, mpp_x


def plausible_mpp(value: float) -> bool:
    """Whether `value` µm/px lies in :data:`MPP_RANGE` (inclusive)."""
    return MPP_RANGE[0] <= value <= MPP_RANGE[1]


def check_mpp(value: Any, name: str = "mpp") -> float:
    """`value` (a number or text such as ``"0.25"``) as µm/px inside :data:`MPP_RANGE`.

    Raises
    ------
    ValueError
        One line naming `name`, the range and the offending value.

    Examples
    --------
    >>> check_mpp(" 0.25 ")
    0.25
    >>> check_mpp("72")
    Traceback (most recent call last):
    ...
    ValueError: `mpp` must be a number in 0.05–50 µm/px, got '72'
    """
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (math.isfinite(number) and plausible_mpp(number)):
        raise ValueError(
            f"`{name}` must be a number in {MPP_RANGE[0]:g}–{MPP_RANGE[1]:g} µm/px, got {value!r}"
        )
    return number


def layer_mpp(metadata: Mapping[str, Any] | None, default: Pair | None = None) -> Pair:
    """``(mpp_y, mpp_x)`` of a napari layer from its metadata.

    ``metadata["mpp_y"]`` and ``["mpp_x"]`` when both are set (the slide
    reader writes them), else ``metadata["mpp"]`` (a number or a pair).

    Raises
    ------
    ValueError
        If the metadata has no mpp and `default` is None.
    """
    meta = metadata or {}
    if meta.get("mpp_y") and meta.get("mpp_x"):
        return mpp_pair((meta["mpp_y"], meta["mpp_x"]))
    if meta.get("mpp") is not None:
        return mpp_pair(meta["mpp"])
    if default is None:
        raise ValueError("layer metadata has no `mpp` (µm per level-0 px)")
    return default


def rescale_world(
    scale: Sequence[float], translate: Sequence[float], old_mpp: Any, new_mpp: Any
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A layer's ``(scale, translate)`` after its slide's µm/px changes from `old_mpp` to `new_mpp`.

    World coordinates are level-0 px times mpp (see the module docstring), so
    every layer placed on the slide follows by multiplying the last two axes of
    its scale and translate by ``new / old``; its data (and the data-frame mpp
    it was made with) stay as they are. Leading axes are left unchanged.

    Examples
    --------
    >>> rescale_world((2.0, 2.0), (0.875, 0.875), 0.25, 0.5)
    ((4.0, 4.0), (1.75, 1.75))
    """
    old_y, old_x = mpp_pair(old_mpp, "old_mpp")
    new_y, new_x = mpp_pair(new_mpp, "new_mpp")
    ratio = (new_y / old_y, new_x / old_x)

    def follow(values: Sequence[float]) -> tuple[float, ...]:
        lead = [float(v) for v in values[:-2]]
        return (*lead, *(float(v) * r for v, r in zip(values[-2:], ratio, strict=True)))

    new_scale, new_translate = follow(scale), follow(translate)
    return new_scale, new_translate


def model_downsample(model_mpp: float, slide_mpp: float) -> float:
    """Level-0 px per model px: ``model_mpp / slide_mpp``."""
    return float(model_mpp) / float(slide_mpp)


# -- level 0 <-> napari world ---------------------------------------------------------
def l0_to_world(xy: Any, mpp: Any) -> np.ndarray:
    """Level-0 ``(x, y)`` rows → napari world ``(row, col)`` µm rows.

    Examples
    --------
    >>> l0_to_world([[10.5, 20.5]], 0.5).tolist()
    [[10.0, 5.0]]
    """
    mpp_y, mpp_x = mpp_pair(mpp)
    xy = np.asarray(xy, dtype=np.float64)
    return np.column_stack([(xy[:, 1] - 0.5) * mpp_y, (xy[:, 0] - 0.5) * mpp_x])


def world_to_l0(rc: Any, mpp: Any) -> np.ndarray:
    """napari world ``(row, col)`` µm rows → level-0 ``(x, y)`` rows (inverse of l0_to_world)."""
    mpp_y, mpp_x = mpp_pair(mpp)
    rc = np.asarray(rc, dtype=np.float64).reshape(-1, np.shape(rc)[-1])[:, -2:]
    return np.column_stack([rc[:, 1] / mpp_x + 0.5, rc[:, 0] / mpp_y + 0.5])


# -- arrays placed on the slide (model px) <-> napari layers ---------------------------
def grid_transform(origin_l0: Sequence[float], downsample: float, mpp: Any) -> tuple[Pair, Pair]:
    """napari ``(scale, translate)`` in µm that puts an array on the slide layer.

    The array's top-left corner is at level-0 `origin_l0` ``(x, y)``, one array
    pixel is `downsample` level-0 px. Pixel ``j``'s centre is level-0
    ``o + (j + 0.5)·d``, world ``(o + (j + 0.5)·d - 0.5)·mpp``; napari puts it at
    ``translate + j·scale``, hence ``scale = d·mpp``, ``translate = (o + (d - 1)/2)·mpp``.

    Examples
    --------
    >>> grid_transform((0, 0), 8.0, 0.25)
    ((2.0, 2.0), (0.875, 0.875))
    """
    mpp_y, mpp_x = mpp_pair(mpp)
    d = float(downsample)
    ox, oy = (float(v) for v in origin_l0)
    scale = (d * mpp_y, d * mpp_x)
    translate = ((oy + (d - 1) / 2) * mpp_y, (ox + (d - 1) / 2) * mpp_x)
    return scale, translate


def overlay_transform(geometry: _Placed, mpp: Any) -> tuple[Pair, Pair]:
    """:func:`grid_transform` of anything with ``origin_l0`` and ``downsample`` (a result store)."""
    return grid_transform(geometry.origin_l0, geometry.downsample, mpp)


def layer_l0_transform(
    scale: Sequence[float], translate: Sequence[float], mpp: Any
) -> tuple[Pair, float]:
    """Level-0 ``(origin, downsample)`` of an image/labels layer (inverse of grid_transform).

    Returns the level-0 ``(x, y)`` of data pixel (0, 0)'s top-left corner and the
    level-0 px per data px (from the column axis).
    """
    mpp_y, mpp_x = mpp_pair(mpp)
    sy, sx = (float(v) for v in scale[-2:])
    ty, tx = (float(v) for v in translate[-2:])
    origin = ((tx - sx / 2) / mpp_x + 0.5, (ty - sy / 2) / mpp_y + 0.5)
    return origin, sx / mpp_x


# -- what the view shows ---------------------------------------------------------------
def _clip_region(
    x0: float, y0: float, x1: float, y1: float, slide_dims: Sequence[int]
) -> tuple[int, int, int, int] | None:
    width, height = (int(v) for v in slide_dims)
    ix0, iy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
    ix1, iy1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    return ix0, iy0, ix1 - ix0, iy1 - iy0


def visible_region_l0(
    camera_center_um: Sequence[float],
    zoom: float,
    canvas_size_px: Sequence[int],
    mpp: Any,
    slide_dims: Sequence[int],
    *,
    margin: float = 0.0,
) -> tuple[int, int, int, int] | None:
    """The level-0 rectangle a 2-D napari view shows, clipped to the slide.

    Parameters
    ----------
    camera_center_um : sequence of float
        ``viewer.scene.camera.center``: world ``(y, x)`` in µm (the last two
        entries are used, so a 3-tuple works).
    zoom : float
        ``viewer.scene.camera.zoom``: screen px per µm.
    canvas_size_px : (int, int)
        ``viewer.canvas.size``: ``(height, width)`` in screen px.
    mpp : float or (float, float)
        Level-0 µm per px, ``(mpp_y, mpp_x)``.
    slide_dims : (int, int)
        Level-0 ``(width, height)`` in px.
    margin : float
        Extra fraction of the view added on every side (prefetch ring).

    Returns
    -------
    (x, y, w, h) or None
        Level-0 px, ``w, h >= 1``; None when the view does not meet the slide.

    Examples
    --------
    >>> visible_region_l0((500.0, 500.0), 1.0, (100, 200), 0.5, (4000, 4000))
    (800, 900, 401, 201)
    """
    if not zoom > 0:
        raise ValueError(f"`zoom` must be > 0, got {zoom!r}")
    height_px, width_px = (float(v) for v in canvas_size_px)
    cy, cx = (float(v) for v in camera_center_um[-2:])
    half_h = height_px / 2 / zoom * (1 + 2 * margin)
    half_w = width_px / 2 / zoom * (1 + 2 * margin)
    (x0, y0), (x1, y1) = world_to_l0([[cy - half_h, cx - half_w], [cy + half_h, cx + half_w]], mpp)
    return _clip_region(x0, y0, x1, y1, slide_dims)


def drawn_region_l0(
    corners_world: Any, mpp: Any, slide_dims: Sequence[int]
) -> tuple[int, int, int, int] | None:
    """Level-0 ``(x, y, w, h)`` bounding a shape's world ``(y, x)`` µm vertices, clipped.

    None when the shape misses the slide.
    """
    l0 = world_to_l0(np.asarray(corners_world, float).reshape(-1, 2), mpp)
    return _clip_region(l0[:, 0].min(), l0[:, 1].min(), l0[:, 0].max(), l0[:, 1].max(), slide_dims)


def data_to_world(data: Any, scale: Sequence[float], translate: Sequence[float]) -> np.ndarray:
    """A layer's data ``(row, col)`` rows → napari world rows (its last two axes)."""
    data = np.asarray(data, dtype=np.float64)[:, -2:]
    return data * np.asarray(scale[-2:], float) + np.asarray(translate[-2:], float)


def check_region_l0(
    region: Any, slide_dims: Sequence[int], *, name: str = "region_l0", path: Any = None
) -> tuple[int, int, int, int]:
    """`region` as level-0 ints ``(x, y, w, h)`` inside a slide of `slide_dims` ``(width, height)``.

    Raises
    ------
    RegionError
        One line naming the slide (`path`, when given), the parameter and the region:
        not four integers, ``w`` or ``h`` not > 0, or not inside the slide.
    """
    prefix = f"{path}: " if path is not None else ""
    ok = isinstance(region, Sequence | np.ndarray) and len(region) == 4
    if not ok or not all(isinstance(v, int | np.integer) for v in region):
        raise RegionError(f"{prefix}`{name}` must be 4 integers (x, y, w, h), got {region!r}")
    x, y, w, h = (int(v) for v in region)
    width, height = (int(v) for v in slide_dims)
    if w <= 0 or h <= 0:
        raise RegionError(f"{prefix}`{name}` {(x, y, w, h)} must have w, h > 0")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise RegionError(
            f"{prefix}`{name}` x={x},y={y},w={w},h={h} lies outside the slide "
            f"({width} x {height} px)"
        )
    return x, y, w, h
