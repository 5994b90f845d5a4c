"""Native-dtype levels of TIFF slides that are not 8-bit RGB (greyscale, 16-bit, fluorescence).

OpenSlide delivers every slide as 8-bit RGBA. For a 16-bit single-channel
TIFF it keeps only the high byte, so 12-bit fluorescence data (0–4095) comes
back as 0–15: a black screen at napari's 0–255 limits, and posterised even
when stretched. For display, such files are read here with tifffile instead,
level by level in their own dtype and channels, and their contrast limits
come from the data (robust percentiles of the coarsest level).

Only the napari layer uses these levels; :class:`~napari_histo.io.slide.Slide`
(and so tissue detection and inference) still reads OpenSlide's 8-bit RGB.
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import tifffile

from napari_histo.io.pyramid import MAX_TOP_PX, Pyramid
from napari_histo.io.slide import Slide
from napari_histo.io.tiff_tiles import TIFF_ERRORS, open_tiff

__all__ = ["data_contrast_limits", "native_pyramid", "reads_natively"]

#: Percentiles of the coarsest level that become the contrast limits.
LIMIT_PERCENTILES = (0.5, 99.5)

#: Longer side (px) of the sample of the coarsest level used for the limits.
LIMIT_SAMPLE_PX = 1024


def reads_natively(page: tifffile.TiffPage) -> bool:
    """Whether `page` is shown from its own values rather than OpenSlide's 8-bit RGB.

    True for single-channel min-is-black pages (8 or 16 bit, greyscale or
    fluorescence) and for RGB with more than 8 bits per sample. 8-bit RGB,
    palette, min-is-white and CMYK pages stay with OpenSlide, which renders
    them as they are meant to look.
    """
    photometric = page.photometric
    if photometric == tifffile.PHOTOMETRIC.MINISBLACK:
        return page.samplesperpixel == 1
    return photometric == tifffile.PHOTOMETRIC.RGB and page.bitspersample > 8


def _level_pages(tif: tifffile.TiffFile, slide: Slide) -> list[int] | None:
    """Index of the page backing each file level (matched by size), or None."""
    indices = []
    for width, height in slide.level_dimensions:
        matches = [
            i
            for i, page in enumerate(tif.pages)
            if page.imagewidth == width and page.imagelength == height and page.imagedepth == 1
        ]
        if not matches:
            return None
        indices.append(matches[0])
    return indices


def _page_array(slide: Slide, index: int) -> da.Array | None:
    """Lazy ``(H, W)`` or ``(H, W, 3)`` array of page `index`; None for other layouts."""
    import zarr

    store = tifffile.imread(slide.path, aszarr=True, key=index)
    array = da.from_zarr(zarr.open(store, mode="r"))
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return array[..., :3]
    store.close()
    return None


def _halve(level: da.Array) -> da.Array:
    """Lazy 2× area-averaged downsample in the level's own dtype (odd edge dropped)."""
    axes = {0: 2, 1: 2}
    smaller = da.coarsen(np.mean, level, axes, trim_excess=True, dtype=np.float64)
    return smaller.astype(level.dtype)


def native_pyramid(slide: Slide, *, max_top_px: int = MAX_TOP_PX) -> Pyramid | None:
    """Levels of `slide` in the file's own dtype when it is a TIFF that is not 8-bit RGB.

    Parameters
    ----------
    slide : Slide
        Open slide.
    max_top_px : int
        Add 2× synthetic levels until the smallest level's longer side is at most this.

    Returns
    -------
    Pyramid or None
        ``(H, W)`` (single channel) or ``(H, W, 3)`` levels of the file's dtype,
        largest first; None when the slide is not a TIFF, its level 0 is not
        read natively (see :func:`reads_natively`; use
        :func:`~napari_histo.io.pyramid.open_pyramid`), or has a layout this
        module does not read (planar multi-channel, z-stacks).
    """
    if not slide.path.is_file():
        return None
    try:
        with open_tiff(slide.path) as tif:
            if not tif.pages or not isinstance(tif.pages[0], tifffile.TiffPage):
                return None
            pages = _level_pages(tif, slide)
            if pages is None or not reads_natively(tif.pages[pages[0]]):
                return None
    except TIFF_ERRORS:
        return None
    levels = []
    for index in pages:
        array = _page_array(slide, index)
        if array is None:
            return None
        levels.append(array)
    downsamples = list(slide.level_downsamples)
    while max(levels[-1].shape[:2]) > max_top_px:
        levels.append(_halve(levels[-1]))
        downsamples.append(downsamples[-1] * 2)
    mpp = (slide.mpp_y, slide.mpp_x) if slide.mpp_x is not None else None
    return Pyramid(
        levels=tuple(levels),
        downsamples=tuple(downsamples),
        file_level_count=slide.level_count,
        mpp=mpp,
        chunk_px=tuple(tuple(int(c[0]) for c in level.chunks[:2]) for level in levels),
    )


def data_contrast_limits(pyramid: Pyramid) -> tuple[float, float]:
    """Contrast limits from the data: robust percentiles of the coarsest level.

    Reads one sample of the smallest level (at most about 1024 px on its longer
    side), so it is cheap for gigapixel slides.

    Returns
    -------
    tuple of float
        ``(low, high)`` with ``high > low``.
    """
    top = pyramid.levels[-1]
    step = max(1, math.ceil(max(top.shape[:2]) / LIMIT_SAMPLE_PX))
    sample = np.asarray(top[::step, ::step].compute())
    low, high = (float(v) for v in np.percentile(sample, LIMIT_PERCENTILES))
    if not high > low:
        high = low + 1.0
    return low, high
