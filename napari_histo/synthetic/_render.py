"""Render any rectangle of a synthetic H&E slide from its :class:`SlideModel`.

Local objects (nuclei, glands) come from counter-based random streams keyed by
``(seed, cell_x, cell_y, slot)``, so a rectangle is rendered from the objects of every cell
that can reach it and nothing is cut at tile borders: the pixels of a rectangle do not
depend on how the slide is split into rectangles, nor on which process renders it.

Colour is built in optical density (Beer–Lambert): per-pixel haematoxylin and eosin
concentrations ``cH, cE`` give ``RGB = 255 * exp(-(glass + cH * h + cE * e + pen))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_histo.synthetic._layout import (
    BLUR_SIGMA_PX,
    EDGE_UM,
    RAGGED_UM,
    F,
    SlideModel,
    grid_range,
    hash_uniform,
    interp_points,
    interp_rect,
    wrap_take,
)

#: Nucleus classes stored in the truth.
CLASSES = {1: "normal", 2: "tumor", 3: "lymphocyte"}

NUC_CELL_UM = 32.0  # candidate cell side
GLAND_CELL_UM = 300.0  # gland cell side (at most one gland per cell)
K_SLOTS = 32  # candidate slots per nucleus cell and type (id space)
GLAND_SLOTS = 256  # nucleus ids reserved per gland
OVERLAP = 0.75  # hard-core factor: centres closer than OVERLAP * (r_i + r_j) conflict

# gland geometry (µm): lumen radius, epithelium thickness, max aspect, max perturbation
LUMEN_UM = (12.0, 38.0)
EPI_UM = (14.0, 20.0)
GLAND_ASPECT = 1.6
GLAND_PERT = 0.16
GLAND_MAX_UM = (LUMEN_UM[1] + EPI_UM[1]) * (1 + GLAND_PERT) * np.sqrt(GLAND_ASPECT)


@dataclass(frozen=True)
class NucleusType:
    """Parameters of one nucleus population (lengths in µm)."""

    cls: int
    grid: int  # candidates are stratified on a grid x grid lattice per cell
    mean: float  # mean candidates per cell at full density (<= grid**2)
    radius_um: tuple[float, float]  # equivalent radius range
    aspect: tuple[float, float]  # major/minor axis ratio range
    pert: float  # max boundary perturbation per harmonic
    h: tuple[float, float]  # haematoxylin concentration range
    chromatin: float  # chromatin texture amplitude
    halo: bool  # draw a cytoplasm halo


NORMAL = NucleusType(1, 3, 2.4, (2.5, 3.5), (1.0, 1.35), 0.02, (0.85, 1.05), 0.2, False)
LYMPH = NucleusType(3, 4, 15.0, (2.4, 3.1), (1.0, 1.12), 0.015, (1.55, 1.85), 0.08, False)
TUMOR = NucleusType(2, 3, 8.5, (4.5, 7.5), (1.0, 1.9), 0.07, (1.45, 1.85), 0.35, True)
TYPES = (NORMAL, LYMPH, TUMOR)
MAX_R_UM = TUMOR.radius_um[1] * np.sqrt(TUMOR.aspect[1]) * (1 + 4 * TUMOR.pert)
HALO = 2.3  # halo radius / nucleus radius


def render_rect(
    model: SlideModel, x0: int, y0: int, w: int, h: int, labels: bool = False
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Render the level-0 rectangle ``[x0, x0 + w) x [y0, y0 + h)``.

    Parameters
    ----------
    model : SlideModel
        The slide.
    x0, y0 : int
        Level-0 origin (px); may extend past the slide (content continues, glass).
    w, h : int
        Size (px).
    labels : bool
        Also return nucleus instance labels.

    Returns
    -------
    rgb : np.ndarray of uint8, shape (h, w, 3)
    lab : np.ndarray of uint32, shape (h, w), or None
        Nucleus ids (0 = background) where the nucleus is the top-most object.
    classes : np.ndarray of uint32, shape (n, 2)
        ``(id, class)`` of every nucleus drawn (empty when ``labels`` is False).
    """
    g, (_, ny, nx) = model.grid_px, model.fields.shape
    ylo, yhi = grid_range(g, y0, y0 + h, ny)
    xlo, xhi = grid_range(g, x0, x0 + w, nx)
    art = model.fields[[F["pen"], F["fold"], F["blur"]], ylo:yhi, xlo:xhi].max(axis=(1, 2))
    m = int(np.ceil(4 * BLUR_SIGMA_PX)) + 1 if art[2] > 0 else 0
    cH, cE, lab, classes = _concentrations(model, x0 - m, y0 - m, w + 2 * m, h + 2 * m, labels)
    if art[1] > 0:
        fold = interp_rect(
            model.fields, g, x0 - m + 0.5, y0 - m + 0.5, w + 2 * m, h + 2 * m, which=[F["fold"]]
        )[0]
        cH *= 1 + 0.9 * fold
        cE *= 1 + 0.9 * fold
    if m:
        blur = interp_rect(model.fields, g, x0 + 0.5, y0 + 0.5, w, h, which=[F["blur"]])[0]
        inner = (slice(m, m + h), slice(m, m + w))
        cH = _blend_blur(cH, blur, inner)
        cE = _blend_blur(cE, blur, inner)
        if lab is not None:
            lab = lab[inner]
    od = _glass_od(model, x0, y0, w, h)
    od = od + cH[None] * model.stain[0][:, None, None] + cE[None] * model.stain[1][:, None, None]
    if art[0] > 0:
        pen = interp_rect(model.fields, g, x0 + 0.5, y0 + 0.5, w, h, which=[F["pen"]])[0]
        od = od + pen[None] * model.pen_od[:, None, None]
    return _to_rgb(od), lab, classes


def glass_rgb(model: SlideModel, size: int) -> np.ndarray:
    """A ``size``² tile of bare glass at a tile-aligned origin (uint8, (size, size, 3))."""
    return _to_rgb(_glass_od(model, 0, 0, size, size))


def _glass_od(model: SlideModel, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    return model.glass_od[:, None, None] + wrap_take(model.glass_noise, y0, x0, h, w)[None]


def _to_rgb(od: np.ndarray) -> np.ndarray:
    """(3, h, w) optical density -> (h, w, 3) uint8."""
    return np.moveaxis(np.rint(255 * np.exp(-od)).astype(np.uint8), 0, -1)


def _blend_blur(c: np.ndarray, alpha: np.ndarray, inner: tuple[slice, slice]) -> np.ndarray:
    blurred = ndimage.gaussian_filter(c, BLUR_SIGMA_PX, truncate=4.0)[inner]
    c = c[inner]
    return c + alpha * (blurred - c)


def _concentrations(model: SlideModel, x0: int, y0: int, w: int, h: int, labels: bool):
    """Haematoxylin and eosin concentrations (and labels) of a rectangle."""
    g = model.grid_px
    fl = interp_rect(
        model.fields,
        g,
        x0 + 0.5,
        y0 + 0.5,
        w,
        h,
        which=[F["tissue_d"], F["eos"], F["w0"], F["w1"], F["w2"]],
    )
    fine = wrap_take(model.fine, y0, x0, h, w)
    a_t = np.clip((fl[0] + RAGGED_UM * 2 * (fine - 0.5)) / EDGE_UM + 0.5, 0, 1)
    lab = np.zeros((h, w), np.uint32) if labels else None
    if not a_t.any():
        z = np.zeros((h, w), np.float32)
        return z, z.copy(), lab, np.zeros((0, 2), np.uint32)
    tex = wrap_take(model.fibres, y0, x0, h, w)
    fib = fl[2] * tex[0] + fl[3] * tex[1] + fl[4] * tex[2]
    cE = a_t * fl[1] * (0.55 * (0.35 + 0.85 * fib) * (0.85 + 0.3 * fine))
    cH = a_t * (0.04 + 0.06 * fib)
    glands = _glands(model, x0, y0, x0 + w, y0 + h, margin=0)
    for k in range(len(glands["x"])):
        _draw_gland(cH, cE, x0, y0, glands, k, model)
    nuc = _nuclei(model, x0, y0, x0 + w, y0 + h)
    order = np.argsort(nuc["id"], kind="stable")
    for k in order[nuc["halo"][order]]:
        _draw_halo(cH, cE, x0, y0, nuc, k)
    drawn = []
    for k in order:
        if _draw_nucleus(cH, cE, lab, x0, y0, nuc, k, model.chromatin):
            drawn.append(k)
    classes = np.stack([nuc["id"][drawn], nuc["cls"][drawn]], 1).astype(np.uint32)
    return cH, cE, lab, classes if labels else np.zeros((0, 2), np.uint32)


# --------------------------------------------------------------------------- glands


def _glands(model: SlideModel, x0: int, y0: int, x1: int, y1: int, margin: float) -> dict:
    """Glands whose outer boundary (+ ``margin`` px) can reach ``[x0, x1) x [y0, y1)``."""
    cell = round(model.px(GLAND_CELL_UM))
    r_max = model.px(GLAND_MAX_UM)
    reach = r_max + margin
    ncx, ncy = -(-model.width // cell), -(-model.height // cell)
    cxs = np.arange(max(0, int((x0 - reach) // cell)), min(ncx, int((x1 + reach) // cell) + 1))
    cys = np.arange(max(0, int((y0 - reach) // cell)), min(ncy, int((y1 + reach) // cell) + 1))
    cy, cx = (a.ravel() for a in np.meshgrid(cys, cxs, indexing="ij"))

    def u(j: int) -> np.ndarray:
        return hash_uniform(model.seed, 1000 + j, cx, cy)

    span = max(cell - 2 * r_max, 1.0)
    x = cx * cell + r_max + u(1) * span
    y = cy * cell + r_max + u(2) * span
    lumen = model.px(LUMEN_UM[0]) + u(3) * model.px(LUMEN_UM[1] - LUMEN_UM[0])
    epi = model.px(EPI_UM[0]) + u(4) * model.px(EPI_UM[1] - EPI_UM[0])
    fv = interp_points(model.fields, model.grid_px, x, y)
    outer_um = model.um(lumen + epi) * (1 + GLAND_PERT) * np.sqrt(GLAND_ASPECT)
    ok = (
        (u(0) < 0.3 + 0.7 * fv[F["gland"]])
        & (fv[F["tissue_d"]] > outer_um + 15)
        & (fv[F["tumor_d"]] < -(outer_um + 15))
        & (fv[F["lym"]] < 0.3)
    )
    ok &= (np.abs(x - np.clip(x, x0, x1)) < reach) & (np.abs(y - np.clip(y, y0, y1)) < reach)
    keys = cy[ok] * ncx + cx[ok]
    n = int(ok.sum())
    amp = np.stack([hash_uniform(model.seed, 1010 + j, keys) for j in range(3)], 1)
    phase = np.stack([hash_uniform(model.seed, 1020 + j, keys) for j in range(3)], 1)
    return {
        "x": x[ok],
        "y": y[ok],
        "lumen": lumen[ok],
        "epi": epi[ok],
        "key": keys,
        "aspect": 1 + (GLAND_ASPECT - 1) * u(5)[ok],
        "theta": np.pi * u(6)[ok],
        "amp": amp * GLAND_PERT / 3 * np.array([1.6, 0.9, 0.5]),
        "phase": 2 * np.pi * phase,
        "n": n,
    }


def _gland_polar(gl: dict, k: int, px: np.ndarray, py: np.ndarray):
    """Normalised radius (px along the unperturbed circle) and angle of points in gland k."""
    dx, dy = px - gl["x"][k], py - gl["y"][k]
    c, s = np.cos(gl["theta"][k]), np.sin(gl["theta"][k])
    sa = np.sqrt(gl["aspect"][k])
    un, vn = (dx * c + dy * s) / sa, (dy * c - dx * s) * sa
    rho = np.hypot(un, vn)
    phi = np.arctan2(vn, un)
    pert = 1 + sum(gl["amp"][k, j] * np.cos((j + 2) * phi + gl["phase"][k, j]) for j in range(3))
    return rho, phi, pert


def _draw_gland(cH, cE, x0, y0, gl: dict, k: int, model: SlideModel) -> None:
    r = (gl["lumen"][k] + gl["epi"][k]) * (1 + GLAND_PERT) * np.sqrt(GLAND_ASPECT) + 2
    h, w = cH.shape
    bx0, bx1 = max(int(gl["x"][k] - r), x0), min(int(gl["x"][k] + r) + 1, x0 + w)
    by0, by1 = max(int(gl["y"][k] - r), y0), min(int(gl["y"][k] + r) + 1, y0 + h)
    if bx0 >= bx1 or by0 >= by1:
        return
    px = (np.arange(bx0, bx1, dtype=np.float32) + 0.5)[None, :]
    py = (np.arange(by0, by1, dtype=np.float32) + 0.5)[:, None]
    rho, phi, pert = _gland_polar(gl, k, px, py)
    r_l = gl["lumen"][k] * pert
    r_o = r_l + gl["epi"][k]
    a_o = np.clip(r_o - rho + 0.5, 0, 1)
    a_l = np.clip((r_l - rho) / 1.5 + 0.5, 0, 1)
    n_cells = _gland_cell_count(gl, k, model)
    membranes = 0.12 * np.abs(np.cos(0.5 * n_cells * phi)) ** 8
    apical = np.exp(-(((rho - r_l) / 2.5) ** 2))
    ring_e = 0.5 + 0.12 * membranes / 0.12 + 0.25 * apical
    ring_h = 0.1 + 0.05 * apical
    sl = (slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))
    cH[sl] += a_o * (ring_h - cH[sl])
    cE[sl] += a_o * (ring_e - cE[sl])
    fine = wrap_take(model.fine, by0, bx0, by1 - by0, bx1 - bx0)
    cH[sl] += a_l * (0.0 - cH[sl])
    cE[sl] += a_l * (0.08 * fine - cE[sl])


def _gland_cell_count(gl: dict, k: int, model: SlideModel) -> int:
    mid = gl["lumen"][k] + 0.55 * gl["epi"][k]
    return max(8, int(2 * np.pi * mid / model.px(6.5)))


def _gland_nuclei(model: SlideModel, gl: dict, id_base: int) -> dict:
    """Epithelial nuclei lining each gland, oriented radially."""
    parts = []
    for k in range(gl["n"]):
        n = _gland_cell_count(gl, k, model)
        slot = np.arange(n)
        key = int(gl["key"][k])

        def u(j: int, key=key, slot=slot) -> np.ndarray:
            return hash_uniform(model.seed, 1100 + j, key, slot)

        phi = 2 * np.pi * (slot + 0.5 + 0.25 * (u(0) - 0.5)) / n
        pert = 1 + sum(
            gl["amp"][k, j] * np.cos((j + 2) * phi + gl["phase"][k, j]) for j in range(3)
        )
        rho = gl["lumen"][k] * pert + (0.5 + 0.15 * u(1)) * gl["epi"][k]
        sa = np.sqrt(gl["aspect"][k])
        un, vn = rho * np.cos(phi) * sa, rho * np.sin(phi) / sa
        c, s = np.cos(gl["theta"][k]), np.sin(gl["theta"][k])
        keep = u(2) > 0.1
        r = model.px(2.6 + 0.5 * u(3))
        asp = 1.5 + 0.4 * u(4)
        parts.append(
            {
                "x": gl["x"][k] + un * c - vn * s,
                "y": gl["y"][k] + un * s + vn * c,
                "a": r * np.sqrt(asp),
                "b": r / np.sqrt(asp),
                "theta": np.arctan2(vn, un) + gl["theta"][k],
                "h0": 0.85 + 0.15 * u(5),
                "chrom": np.full(n, 0.25),
                "rim": np.zeros(n),
                "nucleoli": np.zeros(n, int),
                "cls": np.full(n, 1),
                "id": id_base + key * GLAND_SLOTS + slot + 1,
                "halo": np.zeros(n, bool),
                "amp": 0.02 * u(6)[:, None] * np.ones(4),
                "phase": 2 * np.pi * u(7)[:, None] * [1, 2, 3, 4],
                "pri": 2.0 + u(8),
            }
        )
        parts[-1] = {key_: v[keep] for key_, v in parts[-1].items()}
    return _concat(parts)


# --------------------------------------------------------------------------- nuclei


def _nuclei(model: SlideModel, x0: int, y0: int, x1: int, y1: int) -> dict:
    """All nuclei that can reach ``[x0, x1) x [y0, y1)``, after hard-core thinning."""
    r_max = model.px(MAX_R_UM) * HALO + 2
    conflict = 2 * OVERLAP * model.px(MAX_R_UM)
    margin = r_max + conflict
    cell = round(model.px(NUC_CELL_UM))
    ncx, ncy = -(-model.width // cell), -(-model.height // cell)
    cxs = np.arange(max(0, int((x0 - margin) // cell)), min(ncx, int((x1 + margin) // cell) + 1))
    cys = np.arange(max(0, int((y0 - margin) // cell)), min(ncy, int((y1 + margin) // cell) + 1))
    parts = [_candidates(model, t, tt, cxs, cys, cell, ncx) for t, tt in enumerate(TYPES)]
    gl = _glands(model, x0, y0, x1, y1, margin=margin)
    id_base = ncx * ncy * len(TYPES) * K_SLOTS
    parts.append(_gland_nuclei(model, gl, id_base))
    nuc = _concat(parts)
    if len(nuc["x"]) == 0:
        return nuc
    keep = np.ones(len(nuc["x"]), bool)
    r = 0.5 * (nuc["a"] + nuc["b"])
    for k in range(gl["n"]):  # no free nuclei inside glands
        rho, _, pert = _gland_polar(gl, k, nuc["x"], nuc["y"])
        keep &= (nuc["pri"] >= 2) | (rho > (gl["lumen"][k] * pert + gl["epi"][k]) + r)
    nuc = {k: v[keep] for k, v in nuc.items()}
    r = r[keep]
    pairs = cKDTree(np.stack([nuc["x"], nuc["y"]], 1)).query_pairs(conflict, output_type="ndarray")
    if len(pairs):
        i, j = pairs[:, 0], pairs[:, 1]
        d = np.hypot(nuc["x"][i] - nuc["x"][j], nuc["y"][i] - nuc["y"][j])
        hit = d < OVERLAP * (r[i] + r[j])
        i, j = i[hit], j[hit]
        loser = np.where(nuc["pri"][i] < nuc["pri"][j], i, j)
        keep = np.ones(len(nuc["x"]), bool)
        keep[loser] = False
        nuc = {k: v[keep] for k, v in nuc.items()}
    near = (np.abs(nuc["x"] - np.clip(nuc["x"], x0, x1)) < r_max) & (
        np.abs(nuc["y"] - np.clip(nuc["y"], y0, y1)) < r_max
    )
    return {k: v[near] for k, v in nuc.items()}


def _candidates(model, t: int, tt: NucleusType, cxs, cys, cell: int, ncx: int) -> dict:
    """Candidate nuclei of one type in the given cells, thinned by the local density."""
    slots = np.arange(tt.grid**2)
    cy, cx, slot = (a.ravel() for a in np.meshgrid(cys, cxs, slots, indexing="ij"))
    salt = 100 * (t + 1)

    def u(j: int) -> np.ndarray:
        return hash_uniform(model.seed, salt + j, cx, cy, slot)

    x = (cx + (slot % tt.grid + u(1)) / tt.grid) * cell
    y = (cy + (slot // tt.grid + u(2)) / tt.grid) * cell
    fv = interp_points(model.fields, model.grid_px, x, y)
    inside = fv[F["tissue_d"]] > 1.0
    tumor = fv[F["tumor_d"]] > 0
    if tt is NORMAL:
        density = inside * np.where(tumor, 0.3, 1.0 - 0.7 * fv[F["lym"]])
    elif tt is LYMPH:
        density = inside * ~tumor * (0.04 + 0.96 * fv[F["lym"]])
    else:
        density = tumor * (0.3 + 0.7 * fv[F["nest"]])
    ok = u(0) < tt.mean / tt.grid**2 * density
    cx, cy, slot, x, y = cx[ok], cy[ok], slot[ok], x[ok], y[ok]
    n = len(x)
    r = model.px(tt.radius_um[0] + (tt.radius_um[1] - tt.radius_um[0]) * u(3))
    asp = tt.aspect[0] + (tt.aspect[1] - tt.aspect[0]) * u(4) ** 1.5
    theta = np.pi * u(5)
    if tt is NORMAL:  # a share of spindle fibroblasts aligned with the collagen
        spindle = u(6) < 0.4
        w = fv[[F["w0"], F["w1"], F["w2"]]][:, ok]
        ang = np.arange(3)[:, None] * (2 * np.pi / 3)
        along = 0.5 * np.arctan2((w * np.sin(ang)).sum(0), (w * np.cos(ang)).sum(0))
        theta = np.where(spindle, along + 0.3 * (u(7) - 0.5), theta)
        asp = np.where(spindle, 2.6 + 1.4 * u(8), asp)
        r = np.where(spindle, r * 0.8, r)
    amp = tt.pert * np.stack([u(10 + j) for j in range(4)], 1) * [1.0, 0.8, 0.6, 0.45]
    nucleoli = (u(20) * 3).astype(int) if tt is TUMOR else np.zeros(n, int)
    return {
        "x": x,
        "y": y,
        "a": r * np.sqrt(asp),
        "b": r / np.sqrt(asp),
        "theta": theta,
        "h0": tt.h[0] + (tt.h[1] - tt.h[0]) * u(21),
        "chrom": np.full(n, tt.chromatin),
        "rim": np.full(n, 0.35 if tt is TUMOR else 0.0),
        "nucleoli": nucleoli,
        "cls": np.full(n, tt.cls),
        "halo": np.full(n, tt.halo),
        "id": 1 + ((cy * ncx + cx) * len(TYPES) + t) * K_SLOTS + slot,
        "amp": amp,
        "phase": 2 * np.pi * np.stack([u(30 + j) for j in range(4)], 1),
        "pri": u(40),
    }


def _concat(parts: list[dict]) -> dict:
    keys = (
        "x",
        "y",
        "a",
        "b",
        "theta",
        "h0",
        "chrom",
        "rim",
        "nucleoli",
        "cls",
        "halo",
        "id",
        "amp",
        "phase",
        "pri",
    )
    out = {}
    for k in keys:
        arrs = [p[k] for p in parts if k in p]
        if not arrs:
            shape = (0, 4) if k in ("amp", "phase") else (0,)
            out[k] = np.zeros(shape)
        else:
            out[k] = np.concatenate(arrs)
    out["id"] = out["id"].astype(np.int64)
    out["halo"] = out["halo"].astype(bool)
    return out


def _local_frame(nuc: dict, k: int, x0: int, y0: int, shape, scale: float):
    """Bounding box slices and rotated, axis-normalised coordinates around nucleus k."""
    h, w = shape
    cx, cy, a, b = nuc["x"][k], nuc["y"][k], nuc["a"][k], nuc["b"][k]
    r = a * scale * (1 + np.abs(nuc["amp"][k]).sum()) + 2
    bx0, bx1 = max(int(cx - r), x0), min(int(cx + r) + 1, x0 + w)
    by0, by1 = max(int(cy - r), y0), min(int(cy + r) + 1, y0 + h)
    if bx0 >= bx1 or by0 >= by1:
        return None
    dx = (np.arange(bx0, bx1) + 0.5 - cx)[None, :]
    dy = (np.arange(by0, by1) + 0.5 - cy)[:, None]
    c, s = np.cos(nuc["theta"][k]), np.sin(nuc["theta"][k])
    un = (dx * c + dy * s) / (a * scale)
    vn = (dy * c - dx * s) / (b * scale)
    sl = (slice(by0 - y0, by1 - y0), slice(bx0 - x0, bx1 - x0))
    return sl, un, vn, (bx0, by0, bx1, by1)


def _draw_halo(cH, cE, x0, y0, nuc: dict, k: int) -> None:
    fr = _local_frame(nuc, k, x0, y0, cH.shape, HALO)
    if fr is None:
        return
    sl, un, vn, _ = fr
    alpha = 0.8 * np.clip((1 - np.hypot(un, vn)) * nuc["b"][k] * HALO / 6 + 0.5, 0, 1)
    cH[sl] += alpha * (0.2 - cH[sl])
    cE[sl] += alpha * (0.5 - cE[sl])


def _draw_nucleus(cH, cE, lab, x0, y0, nuc: dict, k: int, chromatin: np.ndarray) -> bool:
    """Composite nucleus k; return whether it owns at least one labelled pixel."""
    fr = _local_frame(nuc, k, x0, y0, cH.shape, 1.0)
    if fr is None:
        return False
    sl, un, vn, (bx0, by0, bx1, by1) = fr
    rho = np.hypot(un, vn)
    phi = np.arctan2(vn, un)
    amp, ph = nuc["amp"][k], nuc["phase"][k]
    bound = 1 + amp[0] * np.cos(2 * phi + ph[0]) + amp[1] * np.cos(3 * phi + ph[1])
    bound += amp[2] * np.cos(4 * phi + ph[2]) + amp[3] * np.cos(5 * phi + ph[3])
    depth = (bound - rho) * nuc["b"][k]  # ~ px inside the boundary
    alpha = np.clip(depth / 1.2 + 0.5, 0, 1)
    q = chromatin.shape[0]
    tex = chromatin[(np.arange(by0, by1) % q)[:, None], (np.arange(bx0, bx1) % q)[None, :]]
    h0 = nuc["h0"][k]
    hval = h0 * (1 + nuc["chrom"][k] * 3 * (tex - 0.5))
    e = 0.12
    if nuc["rim"][k]:
        hval = hval * (0.9 + 0.1 * rho) + nuc["rim"][k] * h0 * np.exp(-((depth / 1.8) ** 2))
    for j in range(int(nuc["nucleoli"][k])):
        ang = 2 * np.pi * ((nuc["id"][k] * 0.618 + 0.37 * j) % 1)
        off = 0.35 * (j + 0.5)
        d2 = (un - off * np.cos(ang)) ** 2 + (vn - off * np.sin(ang)) ** 2
        spot = np.exp(-d2 * (nuc["b"][k] / 3.0) ** 2)
        hval = hval + 0.35 * spot
        e = e + 0.9 * spot
    cH[sl] += alpha * (hval - cH[sl])
    cE[sl] += alpha * (e - cE[sl])
    if lab is None:
        return True
    inside = alpha >= 0.5
    lab[sl][inside] = nuc["id"][k]
    return bool(inside.any())
