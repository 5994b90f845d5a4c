"""Tissue detection on low-resolution slide images.

Tissue is told from glass by colour saturation: stained tissue is pink or purple,
glass is grey-white. :func:`tissue_mask` thresholds the HSV saturation with Otsu's
method (guarded for images that are all glass or all tissue), drops bright
near-white pixels, ignores pen marker, and cleans the result with morphology whose
sizes are given in µm. :func:`slide_tissue_mask` reads a whole slide at a coarse
resolution, with bounded memory, and applies it.

Examples
--------
>>> import numpy as np
>>> rgb = np.full((64, 64, 3), 242, np.uint8)  # glass
>>> rgb[16:48, 16:48] = (200, 120, 170)  # a pink-purple blob of tissue
>>> mask = tissue_mask(rgb, mpp=8.0)
>>> mask.shape, mask.dtype, bool(mask[18:46, 18:46].all()), bool(mask[:14].any())
((64, 64), dtype('bool'), True, False)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage
from skimage import color, filters, morphology

from napari_histo.resample import block_mean_uint8

if TYPE_CHECKING:
    from napari_histo.io.slide import Slide

__all__ = ["pen_mask", "read_downsampled", "slide_tissue_mask", "tissue_mask"]

#: Resolution (µm/px) assumed for an image whose `mpp` is unknown, so that the µm
#: sizes below become pixel defaults suited to a thumbnail (closing radius 2 px, ...).
ASSUMED_MPP = 8.0

#: Downsample (relative to level 0) used by :func:`slide_tissue_mask` for slides
#: without mpp metadata.
NO_MPP_DOWNSAMPLE = 32.0

#: Largest mask :func:`slide_tissue_mask` builds (px); ~20 bytes per px are needed.
MAX_MASK_PX = 2**26

#: Bytes of level pixels :func:`slide_tissue_mask` reads at once.
READ_BYTES = 16 * 2**20  # RGBA read + block sums peak at ~4x this

# Pen marker rule (HSV, all in [0, 1]). H&E tissue has hues from purple (~0.69)
# through pink/red (~1.0, wrapping to ~0.05); ink has hues tissue never has.
_PEN_BLUE_HUE = (0.50, 0.69)  # cyan-blue to blue, 180°-248°
_PEN_GREEN_HUE = (0.17, 0.50)  # yellow-green to cyan, 61°-180°
_PEN_MIN_SATURATION = 0.04
_BLACK_MAX_VALUE = 0.25
_BLACK_MAX_SATURATION = 0.30
_GREY_MAX_VALUE = 0.60
_GREY_MAX_SATURATION = 0.12


def _check_rgb(rgb: object) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"`rgb` must be a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"`rgb` must have shape (H, W, 3), got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"`rgb` must be uint8, got dtype {rgb.dtype}")
    return rgb


def _check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__}")
    number = float(value)
    ok = number >= 0 if allow_zero else number > 0
    if not (math.isfinite(number) and ok):
        raise ValueError(
            f"`{name}` must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}"
        )
    return number


def pen_mask(hsv: np.ndarray) -> np.ndarray:
    """Pixels that look like pen marker rather than stain or glass.

    The rule: a pixel is pen when it is

    - blue (hue in [0.50, 0.69), i.e. 180°-248°) or green (hue in [0.17, 0.50),
      61°-180°) with saturation >= 0.04 (above glass noise) — hues H&E stain never
      takes: hematoxylin is purple (hue >= ~0.69), eosin pink to red; or
    - black: value < 0.25 with saturation < 0.30 — dark strokes without the
      colour of even the densest hematoxylin; or
    - dark grey: value < 0.60 with saturation < 0.12 — too dark for glass, too
      grey for stain: typically ink over tissue (green over pink mixes to grey).

    Pixels wrongly taken for pen cost little in :func:`tissue_mask`, which gives
    each pen pixel the label of the nearest pixel that is not pen.

    Parameters
    ----------
    hsv : ndarray of float, shape (H, W, 3)
        HSV in [0, 1], as :func:`skimage.color.rgb2hsv` returns.

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    inked = (hue >= _PEN_GREEN_HUE[0]) & (hue < _PEN_BLUE_HUE[1]) & (sat >= _PEN_MIN_SATURATION)
    black = (val < _BLACK_MAX_VALUE) & (sat < _BLACK_MAX_SATURATION)
    grey = (val < _GREY_MAX_VALUE) & (sat < _GREY_MAX_SATURATION)
    return inked | black | grey


def _radius_px(um: float, mpp: float) -> int:
    return round(um / mpp)


def _area_px(um2: float, mpp: float) -> int:
    return round(um2 / mpp**2)


def tissue_mask(
    rgb: np.ndarray,
    *,
    mpp: float | None = None,
    ignore_pen: bool = True,
    min_object_um2: float = 2_500.0,
    min_hole_um2: float = 4_000.0,
    closing_um: float = 16.0,
    opening_um: float = 8.0,
    min_saturation: float = 0.06,
    max_saturation: float = 0.12,
    white_level: float = 0.90,
) -> np.ndarray:
    """Boolean mask of tissue in a low-resolution RGB image of a slide.

    Steps: (1) with `ignore_pen`, find pen marker (:func:`pen_mask`); (2) threshold
    the HSV saturation of the other pixels with Otsu's method, the threshold clipped
    to ``[min_saturation, max_saturation]`` — so an image of bare glass (Otsu then
    splits noise) gives no tissue and an image of tissue only (Otsu then splits
    pink from purple) gives all tissue; (3) drop near-white pixels (mean of R, G, B
    >= ``white_level`` × 255), glass with a colour cast; (4) give each pen pixel
    (grown by one pixel, to take the pale rim of a stroke) the label of the nearest
    non-pen pixel, so ink on glass is glass and ink on tissue is tissue; (5) binary
    closing (disk of radius `closing_um`), then opening (disk of radius
    `opening_um`); (6) fill holes up to `min_hole_um2`; (7) remove objects smaller
    than `min_object_um2`.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (H, W, 3)
        RGB image of (part of) a slide, glass white.
    mpp : float, optional
        Resolution of `rgb` (µm/px). When None, :data:`ASSUMED_MPP` (8 µm/px) is
        used to turn the µm sizes into pixels, which suits a slide thumbnail.
    ignore_pen : bool
        Whether to exclude pen marker (blue, green, black ink) from the
        threshold and from the mask.
    min_object_um2 : float
        Tissue pieces smaller than this area (µm²) are removed.
    min_hole_um2 : float
        Holes in tissue up to this area (µm²) are filled.
    closing_um, opening_um : float
        Radii (µm) of the disks for the closing and the opening; 0 skips the step.
    min_saturation, max_saturation : float
        Bounds, in [0, 1], on the saturation threshold.
    white_level : float
        Pixels whose mean intensity is at least this fraction of 255 are glass.

    Returns
    -------
    ndarray of bool, shape (H, W)
        True where there is tissue.

    Raises
    ------
    TypeError, ValueError
        If `rgb` is not an (H, W, 3) uint8 array, or a size is negative or `mpp`
        is not > 0 (the message names the parameter and its value).
    """
    rgb = _check_rgb(rgb)
    mpp_px = ASSUMED_MPP if mpp is None else _check_positive("mpp", mpp)
    sizes = {
        "min_object_um2": min_object_um2,
        "min_hole_um2": min_hole_um2,
        "closing_um": closing_um,
        "opening_um": opening_um,
    }
    for name, value in sizes.items():
        _check_positive(name, value, allow_zero=True)
    for name, value in (
        ("min_saturation", min_saturation),
        ("max_saturation", max_saturation),
        ("white_level", white_level),
    ):
        if not 0 <= _check_positive(name, value, allow_zero=True) <= 1:
            raise ValueError(f"`{name}` must be in [0, 1], got {value!r}")
    if min_saturation > max_saturation:
        raise ValueError(
            f"`min_saturation` ({min_saturation}) must be <= `max_saturation` ({max_saturation})"
        )

    hsv = _rgb2hsv_float32(rgb)
    saturation = hsv[..., 1]
    pen = np.zeros(rgb.shape[:2], bool)
    if ignore_pen:
        # One pixel more on each side takes the pale, less saturated rim of a stroke.
        pen = ndimage.binary_dilation(pen_mask(hsv), np.ones((3, 3), bool))
    del hsv
    threshold = _saturation_threshold(saturation[~pen], min_saturation, max_saturation)
    bright = rgb.mean(axis=2, dtype=np.float32) >= white_level * 255
    mask = (saturation > threshold) & ~bright
    if pen.any() and not pen.all():
        # Pen pixels take the label of the nearest pixel that is not pen.
        rows, cols = ndimage.distance_transform_edt(
            pen, return_distances=False, return_indices=True
        )
        mask = mask[rows, cols]
    elif pen.all():
        mask[:] = False
    return _clean(mask, mpp_px, **sizes)


def _rgb2hsv_float32(rgb: np.ndarray, rows: int = 256) -> np.ndarray:
    """``skimage.color.rgb2hsv`` as float32, a strip of `rows` rows at a time.

    rgb2hsv works in float64 with several temporaries: on a whole 3125² mask
    image (a 100k² slide at 8 µm/px) that peaked near 1 GB; strips keep it to
    the float32 output plus a few MB.
    """
    out = np.empty(rgb.shape, np.float32)
    for start in range(0, rgb.shape[0], rows):
        out[start : start + rows] = color.rgb2hsv(rgb[start : start + rows])
    return out


def _saturation_threshold(values: np.ndarray, lo: float, hi: float) -> float:
    """Otsu's threshold on `values`, clipped to [lo, hi]; `lo` when undefined."""
    if values.size == 0 or np.ptp(values) == 0:
        return lo
    return float(np.clip(filters.threshold_otsu(values, nbins=256), lo, hi))


def _clean(
    mask: np.ndarray,
    mpp: float,
    *,
    min_object_um2: float,
    min_hole_um2: float,
    closing_um: float,
    opening_um: float,
) -> np.ndarray:
    """Closing, opening, hole filling and small-object removal, sizes in µm."""
    close_r = _radius_px(closing_um, mpp)
    if close_r > 0:
        # Pad with glass so that closing does not glue tissue to the image border.
        pad = close_r + 1
        padded = np.pad(mask, pad)
        mask = ndimage.binary_closing(padded, morphology.disk(close_r))[pad:-pad, pad:-pad]
    open_r = _radius_px(opening_um, mpp)
    if open_r > 0:
        mask = ndimage.binary_opening(mask, morphology.disk(open_r))
    hole_px = _area_px(min_hole_um2, mpp)
    if hole_px > 0:
        mask = morphology.remove_small_holes(mask, max_size=hole_px)
    object_px = _area_px(min_object_um2, mpp)
    if object_px > 0:
        mask = morphology.remove_small_objects(mask, max_size=object_px - 1)
    return mask


def slide_tissue_mask(
    slide: Slide,
    *,
    target_mpp: float = 8.0,
    ignore_pen: bool = True,
    progress: Callable[[int, int], None] | None = None,
    **kwargs,
) -> tuple[np.ndarray, float]:
    """Tissue mask of a whole slide at a coarse resolution.

    The slide is read from the coarsest pyramid level whose resolution is at
    least as fine as `target_mpp`, reduced by an integer block mean to the
    resolution closest to `target_mpp` that is not coarser, in bands of bounded
    size, so memory stays small even for 100k² px slides with few levels.

    Parameters
    ----------
    slide : napari_histo.io.slide.Slide
        The slide.
    target_mpp : float
        Wanted resolution of the mask (µm/px). Ignored for slides without mpp,
        which are read at downsample :data:`NO_MPP_DOWNSAMPLE` (32) with the
        pixel-based defaults of :func:`tissue_mask`.
    ignore_pen : bool
        Passed to :func:`tissue_mask`.
    progress : callable, optional
        ``progress(done, total)`` over the bands read (:func:`read_downsampled`).
    **kwargs
        Further keyword arguments of :func:`tissue_mask` (sizes, thresholds).

    Returns
    -------
    mask : ndarray of bool, shape (h, w)
        Tissue mask; pixel ``(i, j)`` covers level-0 pixels
        ``[j * d, (j + 1) * d) x [i * d, (i + 1) * d)``.
    downsample : float
        ``d``, the mask's downsample relative to level 0 (<= the target's).

    Raises
    ------
    ValueError
        If `target_mpp` is not > 0, or so fine that the mask would exceed
        :data:`MAX_MASK_PX` pixels.
    SlideError
        If the slide cannot be read.
    """
    target_mpp = _check_positive("target_mpp", target_mpp)
    mpp = slide.mpp
    wanted = NO_MPP_DOWNSAMPLE if mpp is None else max(1.0, target_mpp / mpp)
    rgb, downsample = read_downsampled(
        slide, wanted, what=f"`target_mpp` {target_mpp}", progress=progress
    )
    mask_mpp = None if mpp is None else mpp * downsample
    return tissue_mask(rgb, mpp=mask_mpp, ignore_pen=ignore_pen, **kwargs), downsample


def read_downsampled(
    slide: Slide,
    downsample: float,
    *,
    what: str = "`downsample`",
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, float]:
    """The whole slide as RGB at about `downsample`, never coarser.

    Reads the coarsest level whose downsample is <= `downsample` and reduces it
    by the largest integer factor ``k`` keeping ``level_downsample * k <=
    downsample``, averaging k×k blocks (partial blocks at the right and bottom
    edges are padded with white), in bands of at most :data:`READ_BYTES`.

    Parameters
    ----------
    slide : napari_histo.io.slide.Slide
        The slide.
    downsample : float
        Wanted downsample relative to level 0, > 0.
    what : str
        How the caller names the requested resolution in the error message.
    progress : callable, optional
        Called ``progress(done, total)`` after each band (a slide with no level
        near `downsample` is read whole, which takes a while).

    Returns
    -------
    rgb : ndarray of uint8, shape (h, w, 3)
    downsample : float
        The exact downsample of `rgb` relative to level 0.
    """
    downsample = _check_positive("downsample", downsample)
    level = slide.best_level_for_downsample(downsample)
    level_ds = slide.level_downsamples[level]
    k = max(1, math.floor(downsample / level_ds * (1 + 1e-9)))
    lvl_w, lvl_h = slide.level_dimensions[level]
    out_w, out_h = -(-lvl_w // k), -(-lvl_h // k)
    if out_w * out_h > MAX_MASK_PX:
        raise ValueError(
            f"{what} gives a {out_w} x {out_h} px image of {slide.path.name}, more than "
            f"{MAX_MASK_PX} px; use a coarser resolution"
        )
    out = np.empty((out_h, out_w, 3), np.uint8)
    band_rows = max(1, READ_BYTES // (3 * lvl_w * k)) * k  # level rows per band
    starts = range(0, lvl_h, band_rows)
    for done, lvl_y in enumerate(starts, 1):
        h = min(band_rows, lvl_h - lvl_y)
        band = slide.read_level_region(level, 0, lvl_y, lvl_w, h)
        out[lvl_y // k : lvl_y // k + -(-h // k)] = block_mean_uint8(band, k)
        if progress is not None:
            progress(done, len(starts))
    return out, level_ds * k
