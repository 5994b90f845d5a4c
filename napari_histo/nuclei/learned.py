"""Learned nuclei backend: HoVer-Net-style maps and their post-processing.

Arrays in, arrays out; no Qt, no napari. The network
(:class:`napari_histo.models.hovernet.HoverNet`) predicts, at its own resolution
(the card's ``input_mpp``, 0.5 µm/px for the bundled model), the probability that a
pixel is nuclear and two maps, horizontal and vertical, holding each nuclear pixel's
offset from its nucleus's centroid normalised to [-1, 1] within the nucleus
(:func:`hv_targets`). The maps point away from each centroid, so their divergence
``∂h/∂x + ∂v/∂y`` is positive inside a nucleus (about 2/r per µm for radius r) and
strongly negative where two touching nuclei meet (the maps jump from +1 to −1).
HoVer-Net (Graham et al. 2019) thresholds the *magnitude* of the gradients; the
signed divergence separates touching nuclei better when the predicted maps are
smooth (on synthetic validation tiles: AJI 0.83 vs 0.69 for the same model).

:func:`hv_postprocess` turns maps into instances:

1. foreground = P(nucleus) > 0.5 within tissue (summed optical density above a
   floor), small holes filled;
2. divergence of the maps, Gaussian-derivative filters with σ in µm, in 1/µm;
3. markers = foreground where divergence > ``min_divergence_per_um``, opened,
   specks dropped;
4. watershed of the negated divergence from the markers within the foreground;
   foreground components that hold no marker become one nucleus each;
5. nuclei outside ``[min_area_um2, max_area_um2]`` dropped.

The model is read once per process (per card file) and shared by all threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.morphology import disk
from skimage.segmentation import relabel_sequential, watershed

from napari_histo.errors import WeightsError
from napari_histo.models import LoadedModel, ModelCard, default_models_dir, load_model
from napari_histo.nuclei._common import _check_number

__all__ = [
    "DEFAULT_CARD",
    "HVParams",
    "card_params",
    "check_learned_mpp",
    "divergence",
    "hv_postprocess",
    "hv_targets",
    "learned_model",
    "predict_maps",
    "segment_learned",
]

#: Card of the default nuclei model (v2.1: real MoNuSeg + synthetic, the v2 recipe run to
#: its end; v2.0 and v1 (synthetic only) stay in resources/models and load by card path).
DEFAULT_CARD = "hovernet-2.2.json"

#: Input resolutions accepted, as a factor of the model's own µm/px (it rescales).
MPP_FACTOR_RANGE = (0.25, 4.0)

#: Side (px at the model's resolution) above which the image is predicted in tiles,
#: and the margin (px) each tile reads beyond its core: 64 µm, the context beyond
#: which the default model's output no longer changes (measured: hovernet-2.0 tiles
#: with 44 µm of context agree with one call to AJI 0.96, with 64 µm exactly).
_TILE_PX = 1024
_MARGIN_PX = 128

_LOCK = threading.Lock()
_MODELS: dict[Path, LoadedModel] = {}


@dataclass(frozen=True)
class HVParams:
    """Post-processing of HV maps, in physical units.

    Attributes
    ----------
    fg_threshold : float
        Pixels with P(nucleus) above this are foreground.
    sigma_um : float
        Gaussian σ (µm) of the derivative filters.
    min_divergence_per_um : float
        Markers are foreground pixels whose map divergence (1/µm) exceeds this;
        inside a nucleus of radius r µm it is about 2/r (0.27 for the largest).
    marker_um : float
        Radius (µm) of the disk that opens the markers.
    min_marker_um2 : float
        Markers smaller than this (µm²) are dropped.
    """

    fg_threshold: float = 0.5
    sigma_um: float = 0.5
    min_divergence_per_um: float = 0.2
    marker_um: float = 0.5
    min_marker_um2: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.fg_threshold < 1:
            raise ValueError(f"`fg_threshold` must be in (0, 1), got {self.fg_threshold!r}")
        for name in ("sigma_um", "min_divergence_per_um", "marker_um", "min_marker_um2"):
            _check_number(name, getattr(self, name))


# -- targets ----------------------------------------------------------------------


def hv_targets(labels: np.ndarray) -> np.ndarray:
    """Horizontal and vertical centroid-offset maps of instance labels.

    Within each nucleus, ``h = x - cx`` divided by ``max(x - cx)`` where positive and
    by ``-min(x - cx)`` where negative (so it spans [-1, 1] even for off-centre
    centroids); ``v`` likewise for ``y``. Background is 0.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Instance labels, 0 = background.

    Returns
    -------
    ndarray of float32, shape (2, H, W)
        ``h`` then ``v``, in [-1, 1].

    Examples
    --------
    >>> lab = np.zeros((5, 7), np.uint32); lab[1:4, 1:6] = 1
    >>> hv_targets(lab)[0, 2].tolist()
    [0.0, -1.0, -0.5, 0.0, 0.5, 1.0, 0.0]
    """
    if not isinstance(labels, np.ndarray) or labels.ndim != 2:
        raise ValueError(f"`labels` must be a 2-D array, got {getattr(labels, 'shape', labels)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must have an integer dtype, got {labels.dtype}")
    out = np.zeros((2, *labels.shape), np.float32)
    for index, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        inside = labels[box] == index + 1
        yy, xx = np.nonzero(inside)
        for channel, coord in ((0, xx), (1, yy)):
            offset = coord - coord.mean()
            low, high = offset.min(), offset.max()
            if low < 0:
                offset[offset < 0] /= -low
            if high > 0:
                offset[offset > 0] /= high
            out[channel][box][inside] = offset
    return out


# -- post-processing ------------------------------------------------------------------


def divergence(hv: np.ndarray, mpp: float, sigma_um: float = 0.5) -> np.ndarray:
    """``∂h/∂x + ∂v/∂y`` of HV maps in 1/µm (Gaussian-derivative filters, σ in µm).

    Parameters
    ----------
    hv : ndarray of float, shape (2, H, W)
    mpp : float
        µm per pixel.
    sigma_um : float
        Gaussian σ (µm); below 0.3 px a 3×3 Sobel filter is used instead.

    Returns
    -------
    ndarray of float32, shape (H, W)
    """
    h, v = hv[0].astype(np.float32), hv[1].astype(np.float32)
    sigma_px = sigma_um / mpp
    if sigma_px >= 0.3:
        dh = ndi.gaussian_filter(h, sigma_px, order=(0, 1))
        dv = ndi.gaussian_filter(v, sigma_px, order=(1, 0))
    else:
        dh, dv = ndi.sobel(h, axis=1) / 8.0, ndi.sobel(v, axis=0) / 8.0
    return (dh + dv) / np.float32(mpp)


def hv_postprocess(
    prob: np.ndarray,
    hv: np.ndarray,
    mpp: float,
    *,
    min_area_um2: float = 8.0,
    max_area_um2: float = 400.0,
    params: HVParams | None = None,
    tissue: np.ndarray | None = None,
) -> np.ndarray:
    """Instance labels from nuclear-pixel probability and HV maps.

    Parameters
    ----------
    prob : ndarray of float, shape (H, W)
        P(nucleus) per pixel, in [0, 1].
    hv : ndarray of float, shape (2, H, W)
        Horizontal and vertical maps (see :func:`hv_targets`).
    mpp : float
        µm per pixel of the maps (> 0).
    min_area_um2, max_area_um2 : float
        Nuclei outside this area range (µm²) are dropped.
    params : HVParams, optional
        Thresholds and scales (defaults suit the bundled model).
    tissue : ndarray of bool, shape (H, W), optional
        Where nuclei may be (e.g. not glass).

    Returns
    -------
    ndarray of uint32, shape (H, W)
        Labels 1..n, 0 = background.
    """
    params = HVParams() if params is None else params
    if prob.ndim != 2 or hv.shape != (2, *prob.shape):
        raise ValueError(f"`hv` shape {hv.shape} must be (2, *prob.shape) with `prob` 2-D")
    fg = prob > params.fg_threshold
    if tissue is not None:
        fg &= tissue
    if not fg.any():
        return np.zeros(prob.shape, np.uint32)
    fg = ndi.binary_fill_holes(fg)
    div = divergence(hv, mpp, params.sigma_um)
    seeds = fg & (div > params.min_divergence_per_um)
    radius = round(params.marker_um / mpp)
    if radius >= 1:
        seeds = ndi.binary_opening(seeds, structure=disk(radius).astype(bool))
    markers, n = ndi.label(seeds)
    if n:
        small = np.bincount(markers.ravel(), minlength=n + 1) < params.min_marker_um2 / mpp**2
        small[0] = False
        markers[small[markers]] = 0
    labels = watershed(-div, markers, mask=fg)
    orphans, n_orphans = ndi.label(fg & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    areas = np.bincount(labels.ravel())
    keep = (areas >= min_area_um2 / mpp**2) & (areas <= max_area_um2 / mpp**2)
    keep[0] = False
    labels = np.where(keep[labels], labels, 0)
    return relabel_sequential(labels.astype(np.uint32))[0]


# -- model and inference -----------------------------------------------------------------


def learned_model(card_path: str | Path | None = None) -> LoadedModel:
    """The nuclei model of `card_path` (default: the bundled one), loaded once per process.

    Thread-safe: concurrent first calls load it once; later calls return the same
    :class:`~napari_histo.models.LoadedModel` (in eval mode, CPU).

    Raises
    ------
    WeightsError
        If the card or weights are missing, tampered with or not a nuclei model.
    """
    path = Path(default_models_dir() / DEFAULT_CARD if card_path is None else card_path)
    path = path.resolve()
    with _LOCK:
        loaded = _MODELS.get(path)
        if loaded is None:
            loaded = load_model(path)
            if loaded.card.task != "nuclei":
                raise WeightsError(
                    f"{path}: architecture {loaded.card.architecture!r} is a "
                    f"{loaded.card.task} model, not a nuclei model"
                )
            _MODELS[path] = loaded
    return loaded


def card_params(card: ModelCard) -> HVParams:
    """The post-processing a nuclei model's card chose (its ``postprocess``), else the defaults.

    Raises
    ------
    WeightsError
        If the card names a parameter HVParams does not have, or a value out of range.
    """
    if card.postprocess is None:
        return HVParams()
    try:
        return HVParams(**card.postprocess)
    except (TypeError, ValueError) as err:
        raise WeightsError(
            f"model card {card.name}-{card.version}: `postprocess` does not fit HVParams ({err})"
        ) from None


def check_learned_mpp(mpp: float, model_mpp: float) -> None:
    """Raise ValueError if `mpp` is too far from the model's `model_mpp` to rescale."""
    low, high = (model_mpp * f for f in MPP_FACTOR_RANGE)
    if not low <= mpp <= high:
        raise ValueError(
            f"`mpp` {mpp:g} µm/px is outside what the learned nuclei model supports "
            f"({low:g} to {high:g} µm/px; it runs at {model_mpp:g} µm/px)"
        )


def _forward_tiled(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, multiple: int
) -> torch.Tensor:
    """Model output for a (1, 3, h, w) batch in [0, 1], in tiles when large; (1, 4, h, w)."""
    h, w = x.shape[-2:]
    if max(h, w) <= _TILE_PX:
        ph, pw = -h % multiple, -w % multiple
        out = model(F.pad(x, (0, pw, 0, ph), value=1.0))
        return out[..., :h, :w]
    out = torch.empty((1, 4, h, w), dtype=x.dtype)
    core = _TILE_PX - 2 * _MARGIN_PX
    padded = F.pad(x, (_MARGIN_PX,) * 4, value=1.0)
    for y0 in range(0, h, core):
        for x0 in range(0, w, core):
            th, tw = min(core, h - y0), min(core, w - x0)
            tile = padded[..., y0 : y0 + th + 2 * _MARGIN_PX, x0 : x0 + tw + 2 * _MARGIN_PX]
            ph, pw = -tile.shape[-2] % multiple, -tile.shape[-1] % multiple
            pred = model(F.pad(tile, (0, pw, 0, ph), value=1.0))
            m = _MARGIN_PX
            out[..., y0 : y0 + th, x0 : x0 + tw] = pred[..., m : m + th, m : m + tw]
    return out


def predict_maps(rgb: np.ndarray, mpp: float, loaded: LoadedModel) -> tuple[np.ndarray, np.ndarray]:
    """Nuclear-pixel probability and HV maps of an RGB image, at the image's resolution.

    The image is rescaled to the model's µm/px (antialiased), predicted (in tiles
    with a context margin when large), and the maps are rescaled back bilinearly.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (H, W, 3)
    mpp : float
        µm per pixel of `rgb`.
    loaded : LoadedModel
        A nuclei model (:func:`learned_model`).

    Returns
    -------
    prob : ndarray of float32, shape (H, W)
    hv : ndarray of float32, shape (2, H, W)
    """
    card = loaded.card
    check_learned_mpp(mpp, card.input_mpp)
    h, w = rgb.shape[:2]
    # A writable C-contiguous array (a copy only when needed): torch warns on read-only ones.
    pixels = np.require(rgb, requirements=["C", "W"])
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div_(255.0)
    scale = mpp / card.input_mpp
    if abs(scale - 1) > 1e-3:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(card.normalisation["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(card.normalisation["std"]).view(1, 3, 1, 1)
    multiple = getattr(loaded.model, "size_multiple", 32)
    with torch.inference_mode():
        # Padding is glass: white, before normalisation.
        out = _forward_tiled(lambda t: loaded.model((t - mean) / std), x, multiple)
        maps = torch.cat([out[:, :2].softmax(dim=1)[:, 1:], out[:, 2:4].clamp(-1, 1)], dim=1)
        if maps.shape[-2:] != (h, w):
            maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
        maps = maps[0].numpy()
    return maps[0], maps[1:]


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    lut = -np.log10(np.maximum(np.arange(256), 1) / 255.0).astype(np.float32)
    return lut[rgb[..., 0]] + lut[rgb[..., 1]] + lut[rgb[..., 2]]


def segment_learned(
    rgb: np.ndarray,
    mpp: float,
    *,
    min_area_um2: float = 8.0,
    max_area_um2: float = 400.0,
    tissue_od: float = 0.15,
    params: HVParams | None = None,
    loaded: LoadedModel | None = None,
) -> np.ndarray:
    """Nuclei instance labels of an RGB image with the learned (HoVer-Net-style) model.

    Parameters
    ----------
    rgb : ndarray of uint8, shape (H, W, 3)
    mpp : float
        µm per pixel of `rgb`; within a factor 4 of the model's.
    min_area_um2, max_area_um2 : float
        Size limits (µm²).
    tissue_od : float
        Pixels whose summed RGB optical density is below this (glass) are never nuclear.
    params : HVParams, optional
        Post-processing parameters; default the model card's (:func:`card_params`).
    loaded : LoadedModel, optional
        Nuclei model; default the bundled one (:func:`learned_model`).

    Returns
    -------
    ndarray of uint32, shape (H, W)
    """
    loaded = learned_model() if loaded is None else loaded
    params = card_params(loaded.card) if params is None else params
    prob, hv = predict_maps(rgb, mpp, loaded)
    return hv_postprocess(
        prob,
        hv,
        mpp,
        min_area_um2=min_area_um2,
        max_area_um2=max_area_um2,
        params=params,
        tissue=_optical_density(rgb) > tissue_od,
    )
