"""Stain normalisation of H&E images: Macenko and Reinhard, vectorised numpy.

Both methods work in two steps: *fit* statistics of an image (the source, and
once for the reference, the target), then *apply* a per-pixel map from source
to target statistics. Fitting uses tissue pixels only, so the amount of glass
in a tile does not change the result; applying maps every pixel.

Macenko (Macenko et al., ISBI 2009)
    Optical density ``OD = -ln((I + 1) / Io)`` with ``Io = 240``; tissue pixels
    are those with OD ≥ ``beta`` (0.15) in all three channels. The two stain
    vectors (unit OD vectors, haematoxylin then eosin) are the directions at the
    ``alpha`` and ``100 - alpha`` percentiles (alpha = 1) of the angle of each
    pixel in the plane of the two main eigenvectors of the OD covariance.
    Concentrations come from least squares; the source's 99th-percentile
    concentrations are scaled to the target's, and ``Io * exp(-S_t C)`` is the
    output. Default target: the reference stain matrix and maximum
    concentrations of the original implementation (Macenko et al.; as used by
    ``torchstain`` and ``staintools``): :data:`MACENKO_REFERENCE`.
Reinhard (Reinhard et al., IEEE CG&A 2001, in CIELAB as is common for H&E)
    Per-channel mean and standard deviation of the tissue pixels in CIELAB
    (D65) are matched to the target's. Default target: :data:`REINHARD_REFERENCE`,
    the statistics of the Macenko reference rendering of CAMELYON16 tile 10670
    (CC0; see ``tests/data/real_tumor/PROVENANCE.txt``), so both defaults
    aim at the same look.

Images with too little tissue to fit (background-only tiles, glass) cannot be
normalised: :func:`normalise` returns them unchanged and warns with
:class:`StainWarning` saying why; :func:`fit` raises :class:`StainError`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MACENKO_REFERENCE",
    "METHODS",
    "REINHARD_REFERENCE",
    "SETTINGS",
    "MacenkoStains",
    "ReinhardStats",
    "StainError",
    "StainNormaliser",
    "StainWarning",
    "apply",
    "fit",
    "normalise",
    "resolve",
]

#: Stain normalisation methods.
METHODS = ("macenko", "reinhard")

#: Choices of a stain setting (CLI ``--stain``, the Tumor inference dock): the model
#: card's ``stain_normalisation``, none, or a method with its reference target.
SETTINGS = ("card", "none", "macenko", "reinhard")

#: Transmitted (background) light intensity of the Macenko OD transform.
IO = 240.0
#: OD below which a channel counts as transparent (Macenko tissue threshold).
BETA = 0.15
#: Angle percentile of the Macenko stain vectors.
ALPHA = 1.0
#: Fewest tissue pixels a fit needs (and at least :data:`MIN_TISSUE_FRACTION`).
MIN_TISSUE_PX = 64
#: Smallest fraction of the image that must be tissue for a fit.
MIN_TISSUE_FRACTION = 0.01
#: Pixels used for a fit at most (a fixed-stride subsample beyond this).
_FIT_PX = 262_144


class StainError(ValueError):
    """An image whose stains cannot be estimated (too little tissue, one stain only)."""


class StainWarning(UserWarning):
    """An image was left unchanged by stain normalisation; the message says why."""


@dataclass(frozen=True)
class MacenkoStains:
    """Macenko statistics of an image.

    Attributes
    ----------
    stain_matrix : tuple of 2 tuples of 3 floats
        Unit optical-density vectors (R, G, B) of haematoxylin, then eosin.
    max_concentrations : tuple of 2 floats
        99th percentile of each stain's concentration over tissue pixels
        (OD units per unit vector), > 0.
    """

    stain_matrix: tuple[tuple[float, float, float], tuple[float, float, float]]
    max_concentrations: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "stain_matrix": [list(row) for row in self.stain_matrix],
            "max_concentrations": list(self.max_concentrations),
        }


@dataclass(frozen=True)
class ReinhardStats:
    """Reinhard statistics of an image: CIELAB mean and std of the tissue pixels.

    Attributes
    ----------
    mean : tuple of 3 floats
        L* (0–100), a*, b* means.
    std : tuple of 3 floats
        Their standard deviations, > 0.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}


#: Reference stains of Macenko et al. (as in ``torchstain`` / ``staintools``).
MACENKO_REFERENCE = MacenkoStains(
    stain_matrix=((0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581)),
    max_concentrations=(1.9705, 1.0308),
)

#: CIELAB tissue statistics of CAMELYON16 tile 10670 rendered with MACENKO_REFERENCE.
REINHARD_REFERENCE = ReinhardStats(mean=(58.50, 24.29, -8.98), std=(13.10, 5.22, 5.60))

Stats = MacenkoStains | ReinhardStats


# --------------------------------------------------------------------------- checks


def _check_rgb(rgb: object, name: str = "rgb") -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f"`{name}` must be a numpy array, got {type(rgb).__name__}")
    if rgb.ndim < 2 or rgb.shape[-1] != 3 or rgb.size == 0:
        raise ValueError(f"`{name}` must be an (..., 3) RGB array, got shape {rgb.shape}")
    if rgb.dtype != np.uint8 and not np.issubdtype(rgb.dtype, np.floating):
        raise ValueError(f"`{name}` must be uint8 (or float 0–255), got {rgb.dtype}")
    return rgb


def _check_method(method: object) -> str:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {', '.join(METHODS)}, got {method!r}")
    return str(method)


# --------------------------------------------------------------------------- colour


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) float32 OD of (N, 3) RGB 0–255 (Io = 240; can be < 0 on bright glass)."""
    return -np.log((rgb.astype(np.float32) + 1.0) / IO)


_RGB2XYZ = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=np.float32,
)
_WHITE = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)  # D65


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) float32 CIELAB (D65) of (N, 3) sRGB 0–255."""
    c = rgb.astype(np.float32) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = (linear @ _RGB2XYZ.T) / _WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack(
        [116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])],
        axis=1,
    )


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """(N, 3) float32 sRGB 0–255 (unclipped) of (N, 3) CIELAB (D65)."""
    fy = (lab[:, 0] + 16.0) / 116.0
    f = np.stack([fy + lab[:, 1] / 500.0, fy, fy - lab[:, 2] / 200.0], axis=1)
    xyz = np.where(f > 0.206893, f**3, (f - 16.0 / 116.0) / 7.787) * _WHITE
    linear = np.clip(xyz @ np.linalg.inv(_RGB2XYZ).T.astype(np.float32), 0.0, None)
    c = np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return c * 255.0


# --------------------------------------------------------------------------- fitting


def _subsample(pixels: np.ndarray) -> np.ndarray:
    stride = max(1, pixels.shape[0] // _FIT_PX)
    return pixels[::stride]


def _need_tissue(count: int, total: int, what: str) -> None:
    need = max(MIN_TISSUE_PX, math.ceil(MIN_TISSUE_FRACTION * total))
    if count < need:
        raise StainError(
            f"too little tissue to fit {what} stains: {count} of {total} px "
            f"({100 * count / max(total, 1):.2f}%) are stained; need {need}"
        )


def fit_macenko(rgb: np.ndarray, *, beta: float = BETA, alpha: float = ALPHA) -> MacenkoStains:
    """Macenko stain vectors and maximum concentrations of an image.

    Parameters
    ----------
    rgb : ndarray of uint8 (or float 0–255), shape (..., 3)
        An image or a stack of images (fitted together).
    beta : float
        OD threshold (per channel) of tissue pixels.
    alpha : float
        Angle percentile, in (0, 50).

    Returns
    -------
    MacenkoStains

    Raises
    ------
    StainError
        Too little tissue (fewer than 1% of the pixels, or than 64), or the
        tissue shows one colour only (the two stain vectors coincide).
    """
    rgb = _check_rgb(rgb)
    pixels = rgb.reshape(-1, 3)
    od = _optical_density(_subsample(pixels))
    tissue = od[np.all(od >= beta, axis=1)]
    _need_tissue(len(tissue), len(od), "Macenko")
    cov = np.cov(tissue.astype(np.float64), rowvar=False)
    _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues
    plane = vectors[:, 1:3][:, ::-1].copy()  # two largest, largest first
    # Orient the plane so tissue lies at angles in (-pi/2, pi/2), away from the ±pi wrap.
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    projected = tissue @ plane
    angle = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(angle, [alpha, 100.0 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = []
    for v in (v1, v2):
        v = v if v.sum() >= 0 else -v  # a stain absorbs: positive OD
        v = np.clip(v, 1e-6, None)
        stains.append(v / np.linalg.norm(v))
    h, e = stains if stains[0][0] > stains[1][0] else stains[::-1]  # haematoxylin: more red OD
    if float(np.dot(h, e)) > 0.995:  # < ~5.7° apart
        raise StainError("the tissue shows one stain colour only; cannot separate H and E")
    matrix = np.stack([h, e])  # (2, 3)
    conc = tissue @ np.linalg.pinv(matrix)  # (N, 2)
    max_c = np.percentile(conc, 99, axis=0)
    if not np.all(np.isfinite(max_c)) or np.any(max_c <= 1e-3):
        raise StainError("stain concentrations are too low to fit; is this an H&E image?")
    return MacenkoStains(
        stain_matrix=(tuple(map(float, h)), tuple(map(float, e))),  # type: ignore[arg-type]
        max_concentrations=(float(max_c[0]), float(max_c[1])),
    )


def _reinhard_tissue(pixels: np.ndarray) -> np.ndarray:
    """Bool (N,): pixels absorbing in at least one channel (OD ≥ beta), not glass."""
    return np.any(_optical_density(pixels) >= BETA, axis=1)


def fit_reinhard(rgb: np.ndarray) -> ReinhardStats:
    """CIELAB mean and standard deviation of the tissue pixels of an image.

    Tissue pixels absorb in at least one channel (OD ≥ 0.15 at Io = 240, i.e.
    some channel below about 205).

    Raises
    ------
    StainError
        Too little tissue, or no colour variation.
    """
    rgb = _check_rgb(rgb)
    pixels = _subsample(rgb.reshape(-1, 3))
    tissue = pixels[_reinhard_tissue(pixels)]
    _need_tissue(len(tissue), len(pixels), "Reinhard")
    lab = _rgb_to_lab(tissue).astype(np.float64)
    mean, std = lab.mean(axis=0), lab.std(axis=0)
    if np.any(std < 1e-3):
        raise StainError("the tissue shows no colour variation; cannot match statistics")
    return ReinhardStats(
        mean=tuple(map(float, mean)),  # type: ignore[arg-type]
        std=tuple(map(float, std)),  # type: ignore[arg-type]
    )


def fit(rgb: np.ndarray, method: str) -> Stats:
    """:func:`fit_macenko` or :func:`fit_reinhard` by name."""
    return fit_macenko(rgb) if _check_method(method) == "macenko" else fit_reinhard(rgb)


# --------------------------------------------------------------------------- applying


def apply(rgb: np.ndarray, source: Stats, target: Stats) -> np.ndarray:
    """Map `rgb` from `source` to `target` statistics (same method).

    Parameters
    ----------
    rgb : ndarray of uint8 or float (0–255), shape (..., 3)
        Image(s); every pixel is mapped.
    source, target : MacenkoStains or ReinhardStats
        Statistics of `rgb` (from :func:`fit`) and of the look to reach.

    Returns
    -------
    ndarray, same shape
        uint8 for uint8 input, else float32 in [0, 255].
    """
    rgb = _check_rgb(rgb)
    if type(source) is not type(target) or not isinstance(source, MacenkoStains | ReinhardStats):
        raise TypeError(
            "`source` and `target` must both be MacenkoStains or both ReinhardStats, got "
            f"{type(source).__name__} and {type(target).__name__}"
        )
    pixels = rgb.reshape(-1, 3)
    if isinstance(source, MacenkoStains):
        s_src = np.asarray(source.stain_matrix, np.float32)
        s_tgt = np.asarray(target.stain_matrix, np.float32)
        scale = np.asarray(target.max_concentrations, np.float32) / np.asarray(
            source.max_concentrations, np.float32
        )
        # OD -> concentrations -> rescaled -> target OD, as one 3x3 map.
        transform = (np.linalg.pinv(s_src) * scale) @ s_tgt
        out = IO * np.exp(-(_optical_density(pixels) @ transform))
    else:
        lab = _rgb_to_lab(pixels)
        gain = np.asarray(target.std, np.float32) / np.asarray(source.std, np.float32)
        lab = (lab - np.asarray(source.mean, np.float32)) * gain + np.asarray(
            target.mean, np.float32
        )
        lab[:, 0] = np.clip(lab[:, 0], 0.0, 100.0)
        out = _lab_to_rgb(lab)
    out = np.clip(np.nan_to_num(out, nan=255.0), 0.0, 255.0).reshape(rgb.shape)
    if rgb.dtype == np.uint8:
        return (out + 0.5).astype(np.uint8)
    return out.astype(np.float32)


def normalise(rgb: np.ndarray, method: str = "macenko", target: Stats | None = None) -> np.ndarray:
    """Stain-normalise an image to `target` (fit on the image itself, then apply).

    Parameters
    ----------
    rgb : ndarray of uint8, shape (H, W, 3)
        The image (a tile, or a stack of tiles normalised together).
    method : {"macenko", "reinhard"}
    target : MacenkoStains or ReinhardStats, optional
        Default :data:`MACENKO_REFERENCE` or :data:`REINHARD_REFERENCE`.

    Returns
    -------
    ndarray of uint8, same shape
        Normalised; `rgb` itself (unchanged) with a :class:`StainWarning`
        when it has too little tissue to fit (e.g. a background-only tile).
    """
    return StainNormaliser(method, target).transform(rgb)


# --------------------------------------------------------------------------- normaliser


def _triple(value: object, name: str, positive: bool) -> tuple[float, ...]:
    ok = isinstance(value, list | tuple) and len(value) == 3
    ok = ok and all(
        isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and (v > 0 or not positive)
        for v in value  # type: ignore[union-attr]
    )
    if not ok:
        raise ValueError(
            f"`{name}` must be 3 finite numbers{' > 0' if positive else ''}, got {value!r}"
        )
    return tuple(float(v) for v in value)  # type: ignore[union-attr]


def stats_from_dict(method: str, data: object) -> Stats:
    """Statistics from their JSON form (``MacenkoStains.to_dict`` / ``ReinhardStats.to_dict``).

    Raises
    ------
    ValueError
        One line naming the bad key and value.
    """
    method = _check_method(method)
    keys = {"stain_matrix", "max_concentrations"} if method == "macenko" else {"mean", "std"}
    if not isinstance(data, Mapping) or set(data) != keys:
        raise ValueError(
            f"`target` of {method} must be an object with keys {sorted(keys)}, got {data!r}"
        )
    if method == "reinhard":
        return ReinhardStats(
            mean=_triple(data["mean"], "target.mean", False),  # type: ignore[arg-type]
            std=_triple(data["std"], "target.std", True),  # type: ignore[arg-type]
        )
    matrix, conc = data["stain_matrix"], data["max_concentrations"]
    if not isinstance(matrix, list | tuple) or len(matrix) != 2:
        raise ValueError(f"`target.stain_matrix` must be 2 rows of 3 numbers, got {matrix!r}")
    rows = [_triple(row, "target.stain_matrix row", True) for row in matrix]
    unit = [tuple(v / math.sqrt(sum(x * x for x in row)) for v in row) for row in rows]
    ok = isinstance(conc, list | tuple) and len(conc) == 2
    ok = ok and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in conc
    )
    if not ok:
        raise ValueError(f"`target.max_concentrations` must be 2 numbers > 0, got {conc!r}")
    return MacenkoStains(
        stain_matrix=(unit[0], unit[1]),  # type: ignore[arg-type]
        max_concentrations=(float(conc[0]), float(conc[1])),
    )


_SPEC_KEYS = {"method", "target"}


class StainNormaliser:
    """A method and a target: fit a source image (or slide) and map images to the target.

    Parameters
    ----------
    method : {"macenko", "reinhard"}
    target : MacenkoStains or ReinhardStats, optional
        Default: the method's reference (:data:`MACENKO_REFERENCE`,
        :data:`REINHARD_REFERENCE`).

    Examples
    --------
    >>> norm = StainNormaliser.from_spec({"method": "reinhard"})
    >>> norm.spec()["method"]
    'reinhard'
    """

    def __init__(self, method: str = "macenko", target: Stats | None = None) -> None:
        self.method = _check_method(method)
        default = MACENKO_REFERENCE if self.method == "macenko" else REINHARD_REFERENCE
        self.target = default if target is None else target
        if type(self.target) is not type(default):
            raise TypeError(
                f"`target` of {self.method} must be {type(default).__name__}, "
                f"got {type(self.target).__name__}"
            )

    @classmethod
    def from_spec(cls, spec: object) -> StainNormaliser | None:
        """From ``None`` (no normalisation) or ``{"method": ..., "target": {...} | None}``.

        This is the form of a model card's ``stain_normalisation`` field.

        Raises
        ------
        ValueError
            One line naming the bad key.
        """
        if spec is None:
            return None
        if not isinstance(spec, Mapping) or "method" not in spec or set(spec) - _SPEC_KEYS:
            raise ValueError(
                'stain normalisation must be null or {"method": "macenko"|"reinhard", '
                f'"target": {{...}} or null}}, got {spec!r}'
            )
        method = _check_method(spec["method"])
        target = spec.get("target")
        return cls(method, None if target is None else stats_from_dict(method, target))

    def spec(self) -> dict[str, Any]:
        """JSON form, read back by :meth:`from_spec`."""
        return {"method": self.method, "target": self.target.to_dict()}

    def fit(self, rgb: np.ndarray) -> Stats:
        """Source statistics of `rgb` (raises :class:`StainError` when it cannot)."""
        return fit(rgb, self.method)

    def fit_slide(self, slide: Any, max_px: int = 1024) -> Stats | None:
        """Source statistics of a whole slide, from its thumbnail (≤ `max_px` a side).

        One fit per slide keeps tiles consistent (no seams between tiles
        normalised differently). Returns None, with a :class:`StainWarning`,
        when the thumbnail has too little tissue.
        """
        key = _slide_key(slide, self.method, self.target, max_px)
        if key is not None and key in _SLIDE_FITS:
            return _SLIDE_FITS[key]
        try:
            stats: Stats | None = self.fit(slide.thumbnail(max_px))
        except StainError as err:
            warnings.warn(f"{slide.path}: not stain-normalised: {err}", StainWarning, stacklevel=2)
            stats = None
        if key is not None:
            if len(_SLIDE_FITS) >= 64:
                _SLIDE_FITS.clear()
            _SLIDE_FITS[key] = stats
        return stats

    def transform(self, rgb: np.ndarray, source: Stats | None = None) -> np.ndarray:
        """`rgb` mapped to the target; `source` defaults to a fit of `rgb` itself.

        Returns `rgb` unchanged, with a :class:`StainWarning` saying why, when
        `source` is None and `rgb` has too little tissue to fit.
        """
        if source is None:
            try:
                source = self.fit(rgb)
            except StainError as err:
                warnings.warn(f"image left unchanged: {err}", StainWarning, stacklevel=2)
                return rgb
        return apply(rgb, source, self.target)

    def __repr__(self) -> str:
        return f"StainNormaliser({self.method!r}, {self.target!r})"


_SLIDE_FITS: dict[tuple[Any, ...], Stats | None] = {}


def _slide_key(slide: Any, method: str, target: Stats, max_px: int) -> tuple[Any, ...] | None:
    try:
        stat = slide.path.stat()
    except (AttributeError, OSError):
        return None
    return (str(slide.path), stat.st_mtime_ns, stat.st_size, method, target, max_px)


def resolve(setting: object, cards: Sequence[Any]) -> StainNormaliser | None:
    """The normaliser a stain `setting` asks for, given the ensemble members' cards.

    Parameters
    ----------
    setting : {"card", "none", "macenko", "reinhard"}, None or StainNormaliser
        ``"card"``: the cards' ``stain_normalisation`` (all members must agree);
        ``"none"`` / None: no normalisation; a method name: that method with its
        reference target.
    cards : sequence of ModelCard

    Raises
    ------
    ValueError
        Unknown setting, or members whose cards disagree.
    """
    if setting is None or isinstance(setting, StainNormaliser):
        return setting
    if setting not in SETTINGS:
        raise ValueError(f"stain setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if setting == "none":
        return None
    if setting != "card":
        return StainNormaliser(str(setting))
    specs = [getattr(card, "stain_normalisation", None) for card in cards]
    if any(spec != specs[0] for spec in specs[1:]):
        methods = ", ".join(
            f"{c.name} {c.version}: {(spec or {}).get('method', 'none')}"
            for c, spec in zip(cards, specs, strict=True)
        )
        raise ValueError(f"ensemble members disagree on stain normalisation ({methods})")
    return StainNormaliser.from_spec(specs[0]) if specs else None
