"""Global layout of a synthetic slide: smooth low-resolution fields and per-seed textures.

Everything that is not a local object (nucleus, gland) lives here as a field sampled on a
coarse grid: grid point ``(i, j)`` sits at the level-0 continuous coordinate
``(x, y) = (j * grid_px, i * grid_px)`` (pixel ``x`` has its centre at ``x + 0.5``).
Fields are bilinearly interpolated at full resolution by :func:`interp_rect` (whole
rectangles) and :func:`interp_points` (object centres), so the low-resolution truth masks
and the rendered pixels come from the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Names of the stacked fields, in order. Distances are signed, in µm, positive inside.
FIELDS = (
    "tissue_d",  # signed distance to the tissue border (µm)
    "tumor_d",  # signed distance to the tumour border (µm); <= tissue_d everywhere
    "lym",  # lymphoid aggregate intensity, 0..1
    "nest",  # tumour nest / septum modulation, 0..1
    "gland",  # gland probability in normal tissue, 0..1
    "eos",  # eosin intensity multiplier, ~0.7..1.3
    "w0",  # fibre orientation weights for textures at 0°, 60°, 120° (sum to 1)
    "w1",
    "w2",
    "pen",  # pen-mark opacity, 0..1
    "fold",  # tissue-fold opacity, 0..1
    "blur",  # out-of-focus opacity, 0..1
)
F = {name: k for k, name in enumerate(FIELDS)}

ARTEFACTS = ("pen", "fold", "blur")

#: Reference stain optical-density vectors (Macenko et al. 2009 reference H&E).
H_REF = np.array([0.5626, 0.7201, 0.4062])
E_REF = np.array([0.2159, 0.8012, 0.5581])

#: Edge softness of tissue borders and the amplitude of their fine raggedness (µm).
EDGE_UM = 2.5
RAGGED_UM = 4.0
#: Blur sigma (level-0 px) of the out-of-focus artefact.
BLUR_SIGMA_PX = 3.0

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class SlideModel:
    """Everything a worker needs to render any rectangle of one synthetic slide.

    Attributes
    ----------
    seed : int
        Seed of every random choice.
    width, height : int
        Level-0 size (px).
    mpp : float
        Level-0 resolution (µm per px).
    tile_px : int
        TIFF tile size (px); the glass noise repeats with this period.
    grid_px : int
        Spacing of the coarse field grid (level-0 px).
    fields : np.ndarray of float32, shape (len(FIELDS), ny, nx)
        The stacked coarse fields, see :data:`FIELDS`.
    stain : np.ndarray of float32, shape (2, 3)
        Haematoxylin and eosin optical-density vectors (per unit concentration).
    pen_od : np.ndarray of float32, shape (3,)
        Optical density of the pen ink at full opacity.
    glass_od : np.ndarray of float32, shape (3,)
        Optical density of bare glass.
    fibres : np.ndarray of float32, shape (3, P, P)
        Periodic collagen textures at 0°, 60° and 120°, values 0..1.
    fine : np.ndarray of float32, shape (P, P)
        Periodic fine noise, values 0..1 (tissue-border raggedness, stroma mottling).
    chromatin : np.ndarray of float32, shape (Q, Q)
        Periodic chromatin texture, values 0..1.
    glass_noise : np.ndarray of float32, shape (tile_px, tile_px)
        Periodic optical-density noise of glass (so all glass tiles are identical).
    artefacts : tuple of str
        Artefacts present on this slide.
    """

    seed: int
    width: int
    height: int
    mpp: float
    tile_px: int
    grid_px: int
    fields: np.ndarray
    stain: np.ndarray
    pen_od: np.ndarray
    glass_od: np.ndarray
    fibres: np.ndarray
    fine: np.ndarray
    chromatin: np.ndarray
    glass_noise: np.ndarray
    artefacts: tuple[str, ...]

    def um(self, px: float) -> float:
        """Convert a level-0 length from px to µm."""
        return px * self.mpp

    def px(self, um: float) -> float:
        """Convert a length from µm to level-0 px."""
        return um / self.mpp


# --------------------------------------------------------------------------- hashing


def hash_uniform(seed: int, salt: int, *keys: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from a counter-based hash of integer keys.

    Parameters
    ----------
    seed, salt : int
        Slide seed and a constant naming the random stream.
    *keys : array_like of int
        Broadcastable non-negative integer keys (cell indices, slot numbers...).

    Returns
    -------
    np.ndarray of float64
        One value per broadcast element; identical for identical inputs on any machine.
    """
    with np.errstate(over="ignore"):
        h = np.full((), (seed * 0x632BE59BD9B4E019 + salt * 0x8CB92BA72F3D8DD7) % 2**64, np.uint64)
        h = _splitmix(h)
        for k in keys:
            h = _splitmix(h ^ (np.asarray(k).astype(np.uint64) * _GOLD))
        return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _splitmix(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.uint64) + _GOLD
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


# --------------------------------------------------------------------------- interpolation


def _axis_weights(start: float, n: int, step: float, grid_px: int, size: int):
    """Grid indices and weights to interpolate ``n`` samples at ``start + k*step`` (px)."""
    g = (start + np.arange(n) * step) / grid_px
    i0 = np.clip(np.floor(g).astype(np.intp), 0, size - 2)
    f = np.clip(g - i0, 0.0, 1.0).astype(np.float32)
    return i0, f


def interp_rect(
    fields: np.ndarray,
    grid_px: int,
    x0: float,
    y0: float,
    w: int,
    h: int,
    step: float = 1.0,
    which: Sequence[int] | None = None,
) -> np.ndarray:
    """Bilinearly interpolate coarse fields on a regular sample grid.

    Parameters
    ----------
    fields : np.ndarray, shape (n, ny, nx)
        Coarse fields, grid point ``(i, j)`` at level-0 ``(x, y) = (j, i) * grid_px``.
    grid_px : int
        Grid spacing (level-0 px).
    x0, y0 : float
        Level-0 coordinate (px) of the first sample (use ``x + 0.5`` for pixel centres).
    w, h : int
        Number of samples along x and y.
    step : float
        Sample spacing (level-0 px).
    which : sequence of int, optional
        Indices of the fields to interpolate (default: all).

    Returns
    -------
    np.ndarray of float32, shape (len(which), h, w)
    """
    _, ny, nx = fields.shape
    iy, fy = _axis_weights(y0, h, step, grid_px, ny)
    ix, fx = _axis_weights(x0, w, step, grid_px, nx)
    ylo, xlo = iy.min(), ix.min()
    sub = fields[:, ylo : iy.max() + 2, xlo : ix.max() + 2]
    if which is not None:
        sub = sub[list(which)]
    iy, ix = iy - ylo, ix - xlo
    rows = sub[:, iy, :] * (1 - fy)[None, :, None] + sub[:, iy + 1, :] * fy[None, :, None]
    return rows[:, :, ix] * (1 - fx) + rows[:, :, ix + 1] * fx


def interp_points(fields: np.ndarray, grid_px: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinearly interpolate coarse fields at level-0 points ``(x, y)`` (px).

    Returns
    -------
    np.ndarray of float32, shape (n, len(x))
    """
    _, ny, nx = fields.shape
    gx = np.asarray(x, dtype=np.float64) / grid_px
    gy = np.asarray(y, dtype=np.float64) / grid_px
    ix = np.clip(np.floor(gx).astype(np.intp), 0, nx - 2)
    iy = np.clip(np.floor(gy).astype(np.intp), 0, ny - 2)
    fx = np.clip(gx - ix, 0, 1).astype(np.float32)
    fy = np.clip(gy - iy, 0, 1).astype(np.float32)
    top = fields[:, iy, ix] * (1 - fx) + fields[:, iy, ix + 1] * fx
    bot = fields[:, iy + 1, ix] * (1 - fx) + fields[:, iy + 1, ix + 1] * fx
    return top * (1 - fy) + bot * fy


def grid_range(grid_px: int, x0: int, x1: int, size: int) -> tuple[int, int]:
    """Grid indices ``[lo, hi)`` whose values can influence pixels ``[x0, x1)``."""
    lo = max(0, int(np.floor((x0 + 0.5) / grid_px)))
    hi = min(size, int(np.floor((x1 - 0.5) / grid_px)) + 2)
    return lo, hi


# --------------------------------------------------------------------------- building


def grid_px_for(width: int, height: int) -> int:
    """Coarse-grid spacing: the smallest power of two >= 16 with <= 2048 grid cells a side."""
    g = 16
    while max(width, height) / g > 2048:
        g *= 2
    return g


def build_model(
    seed: int, width: int, height: int, mpp: float, tile_px: int, artefacts: Sequence[str] | bool
) -> SlideModel:
    """Draw the global layout, stains and textures of one slide.

    Parameters
    ----------
    seed : int
        Seed.
    width, height : int
        Level-0 size (px).
    mpp : float
        Level-0 resolution (µm/px).
    tile_px : int
        TIFF tile size (px).
    artefacts : bool or sequence of str
        ``True``: the seed picks a non-empty subset of :data:`ARTEFACTS`; ``False``: none;
        a sequence: exactly these.

    Returns
    -------
    SlideModel
    """
    rng = np.random.default_rng([seed, 0x5EED])
    g = grid_px_for(width, height)
    ny, nx = height // g + 2, width // g + 2
    cell_um = g * mpp
    size_um = min(width, height) * mpp
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32) * np.float32(cell_um)

    def noise(sigma_um: float) -> np.ndarray:
        return _smooth_noise(rng, (ny, nx), sigma_um / cell_um)

    def sdist(mask: np.ndarray) -> np.ndarray:
        d = np.where(
            mask,
            ndimage.distance_transform_edt(mask) - 0.5,
            -(ndimage.distance_transform_edt(~mask) - 0.5),
        )
        return ndimage.gaussian_filter(d * cell_um, 1.0).astype(np.float32)

    # tissue: a few elliptical islands with noisy borders, kept off the slide edge
    blobs = np.full((ny, nx), -1.0, np.float32)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0.25, 0.75) * width * mpp, rng.uniform(0.25, 0.75) * height * mpp
        a, b = rng.uniform(0.15, 0.32, 2) * size_um
        t = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        blobs = np.maximum(blobs, 1 - np.sqrt((u / a) ** 2 + (v / b) ** 2))
    f = blobs + 0.35 * noise(0.08 * size_um) + 0.12 * noise(0.02 * size_um) + 0.05 * noise(40)
    edge = np.minimum(np.minimum(xx, width * mpp - xx), np.minimum(yy, height * mpp - yy))
    f -= 3 * np.clip(1 - edge / (0.06 * size_um), 0, 1)
    tissue = f > np.quantile(f, 1 - rng.uniform(0.25, 0.38))
    tissue_d = sdist(tissue)

    # tumour: irregular blobs covering 20-40 % of the tissue
    t = noise(0.12 * size_um) + 0.5 * noise(0.03 * size_um) + 0.25 * noise(80)
    tumor = tissue & (t > np.quantile(t[tissue], 1 - rng.uniform(0.22, 0.38)))
    tumor_d = np.minimum(sdist(tumor), tissue_d)

    n = noise(150)
    normal = tissue & ~tumor
    q = np.quantile(n[normal], 0.92) if normal.any() else 1.0
    lym = np.clip((n - q) / 0.5, 0, 1) * (tumor_d < -30)
    nest = np.clip((noise(30) + 0.7) / 0.9, 0, 1)
    gland = np.clip((noise(250) + 1.0) / 1.5, 0, 1)
    eos = np.clip(1 + 0.1 * noise(150) + 0.07 * noise(0.15 * size_um), 0.75, 1.25)
    theta = np.pi * (rng.random() + 0.3 * noise(400) + 0.08 * noise(100))
    w = np.stack([np.maximum(0, np.cos(2 * (theta - k * np.pi / 3))) ** 2 for k in range(3)])
    w /= w.sum(0)

    arng = np.random.default_rng([seed, 0xA27E])  # own stream: artefacts change nothing else
    chosen = _choose_artefacts(arng, artefacts)
    art = {name: np.zeros((ny, nx), np.float32) for name in ARTEFACTS}
    for name in ARTEFACTS:
        field = _artefact_field(arng, name, tissue, xx, yy, size_um, cell_um)
        if name in chosen:
            art[name] = field

    fields = np.stack(
        [tissue_d, tumor_d, lym, nest, gland, eos, *w, art["pen"], art["fold"], art["blur"]]
    ).astype(np.float32)

    hv = _perturb_vector(rng, H_REF, 0.05) * rng.uniform(0.85, 1.15)
    ev = _perturb_vector(rng, E_REF, 0.05) * rng.uniform(0.8, 1.2)
    pen_od = (
        np.array([0.95, 0.45, 0.12]) if rng.random() < 0.5 else np.array([0.85, 0.15, 0.6])
    ) * rng.uniform(0.6, 0.9)
    glass = rng.uniform(238, 248) + rng.uniform(-3, 3, 3)
    trng = np.random.default_rng([seed, 0x7E87])
    return SlideModel(
        seed=seed,
        width=width,
        height=height,
        mpp=mpp,
        tile_px=tile_px,
        grid_px=g,
        fields=fields,
        stain=np.stack([hv, ev]).astype(np.float32),
        pen_od=pen_od.astype(np.float32),
        glass_od=(-np.log(np.clip(glass, 1, 254) / 255)).astype(np.float32),
        fibres=np.stack([_fibre_texture(trng, 512, k * np.pi / 3) for k in range(3)]),
        fine=_periodic_noise(trng, 512, 5.0),
        chromatin=_periodic_noise(trng, 256, 1.6),
        glass_noise=(_periodic_noise(trng, tile_px, 1.0) - 0.5) * np.float32(0.02),
        artefacts=tuple(chosen),
    )


def _choose_artefacts(rng: np.random.Generator, artefacts: Sequence[str] | bool) -> list[str]:
    picks = rng.random(len(ARTEFACTS))
    if artefacts is True:
        chosen = [a for a, p in zip(ARTEFACTS, picks, strict=True) if p < 0.6]
        return chosen or [ARTEFACTS[int(np.argmin(picks))]]
    if artefacts is False:
        return []
    return [a for a in ARTEFACTS if a in artefacts]


def _artefact_field(
    rng: np.random.Generator,
    name: str,
    tissue: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    size_um: float,
    cell_um: float,
) -> np.ndarray:
    """Opacity field (0..1) of one artefact on the coarse grid."""
    iy, ix = np.nonzero(tissue)
    k = int(rng.integers(len(iy))) if len(iy) else 0
    py, px = (yy[iy[k], ix[k]], xx[iy[k], ix[k]]) if len(iy) else (yy.mean(), xx.mean())
    if name == "blur":
        r = float(np.clip(0.07 * size_um, 80, 2500))
        d = np.hypot(xx - px, yy - py) / r
        return np.clip((1 - d) / 0.25, 0, 1).astype(np.float32)
    ang = rng.uniform(0, np.pi)
    direction = np.array([np.cos(ang), np.sin(ang)])
    if name == "pen":
        length, half_w = 0.5 * size_um, float(np.clip(0.02 * size_um, 60, 900))
        shift = rng.uniform(0.2, 0.45) * length  # push one end out onto the glass
    else:
        length, half_w = 0.35 * size_um, float(np.clip(0.008 * size_um, 25, 300))
        shift = 0.0
    s = np.linspace(-0.5, 0.5, 400)[:, None]
    bend = rng.uniform(-0.15, 0.15) * length * (1 - 4 * s**2)
    normal = np.array([-direction[1], direction[0]])
    pts = np.array([px, py]) + (s * length + shift) * direction + bend * normal
    marks = np.ones(tissue.shape, bool)
    j = np.clip(np.round(pts / cell_um).astype(int), 0, [tissue.shape[1] - 1, tissue.shape[0] - 1])
    marks[j[:, 1], j[:, 0]] = False
    dist = ndimage.distance_transform_edt(marks) * cell_um
    alpha = np.clip((half_w - dist) / max(cell_um, 0.15 * half_w), 0, 1)
    if name == "pen":
        streak = 0.8 + 0.2 * np.tanh(_smooth_noise(rng, tissue.shape, 0.2 * half_w / cell_um))
        alpha = alpha * streak
    return alpha.astype(np.float32)


def _perturb_vector(rng: np.random.Generator, v: np.ndarray, amount: float) -> np.ndarray:
    p = np.clip(v + rng.normal(0, amount, 3), 0.02, None)
    return p / np.linalg.norm(p)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise with ``sigma`` in grid cells."""
    if sigma <= 6:
        a = ndimage.gaussian_filter(rng.standard_normal(shape), max(sigma, 0.5), mode="wrap")
    else:
        f = sigma / 4
        small = (int(np.ceil(shape[0] / f)) + 4, int(np.ceil(shape[1] / f)) + 4)
        a = ndimage.gaussian_filter(rng.standard_normal(small), 4.0, mode="wrap")
        a = ndimage.zoom(a, f, order=3)[: shape[0], : shape[1]]
    return ((a - a.mean()) / (a.std() + 1e-12)).astype(np.float32)


def _periodic_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Periodic noise tile, values 0..1 (roughly normal around 0.5, std ~0.17)."""
    a = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    a = (a - a.mean()) / (a.std() + 1e-12)
    return np.clip(0.5 + a / 6, 0, 1).astype(np.float32)


def _fibre_texture(rng: np.random.Generator, size: int, angle: float) -> np.ndarray:
    """Periodic wavy collagen texture: noise filtered long along ``angle``, thin across it."""
    k = np.fft.fftfreq(size)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    k_par = kx * np.cos(angle) + ky * np.sin(angle)
    k_perp = -kx * np.sin(angle) + ky * np.cos(angle)
    filt = np.exp(-2 * np.pi**2 * ((16 * k_par) ** 2 + (1.8 * k_perp) ** 2))
    a = np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * filt).real
    # wave the fibres with a smooth periodic displacement across their direction
    warp = ndimage.gaussian_filter(rng.standard_normal((size, size)), 24, mode="wrap")
    warp *= 9 / warp.std()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    coords = [yy + warp * np.cos(angle), xx - warp * np.sin(angle)]
    a = ndimage.map_coordinates(a, coords, order=1, mode="grid-wrap")
    a = (a - a.mean()) / a.std()
    return (0.5 + 0.5 * np.tanh(0.8 * a)).astype(np.float32)


def wrap_take(tex: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Read rows ``y0..y0+h`` and columns ``x0..x0+w`` of a periodic texture."""
    py, px = tex.shape[-2:]
    r = np.roll(tex, (-(y0 % py), -(x0 % px)), axis=(-2, -1))
    reps = (-(-h // py), -(-w // px))
    if reps != (1, 1):
        r = np.tile(r, (1,) * (tex.ndim - 2) + reps)
    return r[..., :h, :w]
