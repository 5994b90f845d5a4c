"""napari reader contribution: any OpenSlide slide as one multiscale layer.

RGB for brightfield slides; the file's own dtype for greyscale / 16-bit TIFFs.
Also DICOM WSI: a ``.dcm`` file of a series, or a folder holding one series.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_histo.errors import SlideError
from napari_histo.io.dicom import folder_has_dicom, is_dicom_wsi
from napari_histo.io.native_tiff import data_contrast_limits, native_pyramid
from napari_histo.io.pyramid import open_pyramid
from napari_histo.io.slide import Slide
from napari_histo.io.windows import viewer_levels

__all__ = ["SLIDE_SUFFIXES", "napari_get_reader", "read_slides", "slide_layer_data"]

#: File suffixes offered to this reader (OpenSlide formats).
SLIDE_SUFFIXES = (
    ".svs",
    ".dcm",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".svslide",
    ".bif",
    ".vms",
    ".vmu",
)

LayerData = tuple[Any, dict[str, Any], str]


def _is_slide_candidate(path: str | os.PathLike[str]) -> bool:
    """Cheap check: a slide suffix; for DICOM, a WSI file or a folder holding one.

    DICOM checks read only file headers (the "DICM" magic and the SOP class).
    """
    if not isinstance(path, str | os.PathLike):
        return False
    p = Path(path)
    suffix = p.suffix.lower()
    if p.is_dir():
        return suffix != ".mrxs" and folder_has_dicom(p)
    if suffix == ".dcm":
        return is_dicom_wsi(p)
    return suffix in SLIDE_SUFFIXES


def napari_get_reader(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> Callable[..., list[LayerData]] | None:
    """Return :func:`read_slides` if every path is a slide OpenSlide opens, else None.

    A path may be a folder holding one DICOM WSI series.

    Follows napari's convention: a reader that cannot read a file returns None
    (so napari tries the next reader) instead of raising.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths or not all(_is_slide_candidate(p) for p in paths):
        return None
    for p in paths:
        try:
            Slide(p).close()
        except SlideError:
            return None
    return read_slides


def slide_layer_data(slide: Slide) -> LayerData:
    """Layer data tuple for `slide`: a lazy multiscale image in µm.

    8-bit RGB slides (brightfield) are OpenSlide's pixels with fixed 0–255
    contrast limits, so opening reads no pixels. TIFF slides that are not
    8-bit RGB (greyscale, 16-bit, fluorescence) are read in their own dtype
    (see :mod:`napari_histo.io.native_tiff`) and get contrast limits from the
    data. The scale is :attr:`Slide.mpp <napari_histo.io.slide.Slide.mpp>`:
    the saved choice beside the slide, else the file's plausible value (see the
    Slide docstring); ``metadata["mpp_source"]`` says which. Without one the
    layer is shown in pixels and one warning says so.
    """
    native = native_pyramid(slide)
    pyramid = native if native is not None else open_pyramid(slide)
    if pyramid.mpp is None:
        warnings.warn(
            f"{slide.path}: no microns-per-pixel metadata; showing the slide in pixels "
            "(set its µm/px in the Tumor inference dock, or `napari-histo info SLIDE --set-mpp F`)",
            UserWarning,
            stacklevel=2,
        )
    metadata = {
        "path": str(slide.path),
        "source": str(slide.source),
        "mpp": slide.mpp,
        "mpp_x": slide.mpp_x,
        "mpp_y": slide.mpp_y,
        "mpp_source": slide.mpp_source,
        "file_mpp": slide.file_mpp,
        "vendor": slide.vendor,
        "objective_power": slide.objective_power,
        "level_downsamples": pyramid.downsamples,
        "file_level_count": pyramid.file_level_count,
        "slide": slide,
    }
    unit = "micrometer" if pyramid.mpp is not None else "pixel"
    kwargs = {
        "name": slide.name,
        "rgb": pyramid.levels[0].ndim == 3,
        "multiscale": True,
        "scale": pyramid.scale_um,
        "units": (unit, unit),
        # Fixed limits: napari would otherwise read pixels to compute them.
        "contrast_limits": (0, 255),
        "metadata": metadata,
    }
    if native is not None:
        metadata["native_dtype"] = str(native.levels[0].dtype)
        kwargs["contrast_limits"] = data_contrast_limits(native)
        if not kwargs["rgb"]:
            kwargs["colormap"] = "gray"
    # The viewer reads each window of a file level at once (io.windows); native
    # (non-RGB) pyramids keep their dask levels.
    levels = list(pyramid.levels) if native is not None else viewer_levels(slide, pyramid)
    return levels, kwargs, "image"


def read_slides(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[LayerData]:
    """Open each slide in `path` as a layer data tuple.

    Raises
    ------
    SlideError
        If a file cannot be opened (napari shows the message).
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    return [slide_layer_data(Slide(p)) for p in paths]
