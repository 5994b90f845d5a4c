"""Annotation data model and granularity conversions (no Qt, no napari).

Every coordinate here is a level-0 pixel position ``(x, y)``, like OpenSlide:
``x`` grows to the right, ``y`` grows downwards, and pixel ``(c, r)`` of level 0
covers ``[c, c + 1) × [r, r + 1)``. A mask drawn at ``downsample`` d with its
top-left corner at level-0 ``origin`` (ox, oy) has pixel ``(r, c)`` covering
``[ox + c·d, ox + (c + 1)·d) × [oy + r·d, oy + (r + 1)·d)``.

Granularities follow the ccRCC granularity study: a *pixel* mask is the
source of truth when there is one; *bbox* and *ellipse* annotations are derived
from it (:func:`mask_to_bbox`, :func:`mask_to_ellipse`) or drawn directly;
*polygon* is a vector outline (:func:`mask_to_polygons`). Any of them goes back
to a label mask at any resolution with :func:`rasterize`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import draw, measure

from napari_histo.annotations.polygons import as_xy

__all__ = [
    "DEFAULT_CLASSES",
    "GRANULARITIES",
    "IGNORE_INDEX",
    "KINDS",
    "OBJECT_TYPES",
    "Annotation",
    "AnnotationClass",
    "class_index",
    "ellipse_polygon",
    "mask_to_bbox",
    "mask_to_ellipse",
    "mask_to_polygons",
    "rasterize",
]

KINDS = ("polygon", "bbox", "ellipse", "point")
GRANULARITIES = ("bbox", "ellipse", "pixel", "polygon")
OBJECT_TYPES = ("annotation", "detection")
#: Label value that :func:`rasterize` gives the ``ignore`` class.
IGNORE_INDEX = 255


@dataclass(frozen=True)
class AnnotationClass:
    """A class name with its display colour (r, g, b), each 0-255."""

    name: str
    color: tuple[int, int, int]


DEFAULT_CLASSES = (
    AnnotationClass("tumor", (200, 0, 0)),
    AnnotationClass("non-tumor", (0, 160, 0)),
    AnnotationClass("ignore", (128, 128, 128)),
)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, eq=False)
class Annotation:
    """One annotation in level-0 pixel coordinates.

    Parameters
    ----------
    kind : {"polygon", "bbox", "ellipse", "point"}
        Geometry. A bbox is its 4 axis-aligned corners, an ellipse its outline
        polygon plus exact `ellipse` parameters, a point one or more vertices.
    coords : (N, 2) array of float64, level-0 px
        Exterior ring (x, y), not closed (the first vertex is not repeated).
    holes : tuple of (M, 2) arrays of float64, level-0 px
        Interior rings (polygons only), not closed.
    label : str
        Class name, e.g. "tumor".
    granularity : {"bbox", "ellipse", "pixel", "polygon"}
        How precise the annotator (or the derivation) was.
    ellipse : (cx, cy, semi_major, semi_minor, angle_rad) or None
        Exact ellipse for ``kind="ellipse"``: centre and semi-axes in level-0 px,
        angle of the semi-major axis from +x towards +y (clockwise on screen).
    author, created : str
        Who made it and when (ISO 8601).
    id : str
        UUID.
    object_type : {"annotation", "detection"}
        QuPath object type.
    color : (r, g, b) or None
        Own colour; None means "the class colour".
    properties : dict
        Other JSON-able properties, kept through file round trips.

    Annotations are immutable: use :meth:`replace` to get a changed copy.
    Equality is identity; compare geometry with ``np.allclose``.
    """

    kind: str
    coords: np.ndarray
    holes: tuple[np.ndarray, ...] = ()
    label: str = "tumor"
    granularity: str = "polygon"
    ellipse: tuple[float, float, float, float, float] | None = None
    author: str = ""
    created: str = field(default_factory=_now_iso)
    id: str = field(default_factory=_new_id)
    object_type: str = "annotation"
    color: tuple[int, int, int] | None = None
    properties: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"`kind` must be one of {KINDS}, got {self.kind!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"`granularity` must be one of {GRANULARITIES}, got {self.granularity!r}"
            )
        if self.object_type not in OBJECT_TYPES:
            raise ValueError(
                f"`object_type` must be one of {OBJECT_TYPES}, got {self.object_type!r}"
            )
        set_ = object.__setattr__
        set_(self, "coords", as_xy(self.coords, "coords", 1 if self.kind == "point" else 3))
        holes = tuple(as_xy(h, "holes", 3) for h in self.holes)
        if holes and self.kind != "polygon":
            raise ValueError(f"only polygons have holes, got kind {self.kind!r}")
        set_(self, "holes", holes)
        if self.kind == "ellipse":
            if self.ellipse is None or len(self.ellipse) != 5:
                raise ValueError("`ellipse` must be (cx, cy, semi_major, semi_minor, angle_rad)")
            ell = tuple(float(v) for v in self.ellipse)
            if not all(math.isfinite(v) for v in ell) or ell[2] <= 0 or ell[3] <= 0:
                raise ValueError(f"`ellipse` must be finite with positive axes, got {ell}")
            set_(self, "ellipse", ell)
        elif self.ellipse is not None:
            raise ValueError(f"`ellipse` is only for kind 'ellipse', got kind {self.kind!r}")
        if self.kind == "bbox" and self.coords.shape[0] != 4:
            raise ValueError(f"a bbox has 4 corners, got {self.coords.shape[0]}")
        if self.color is not None:
            color = tuple(int(c) for c in self.color)
            if len(color) != 3 or not all(0 <= c <= 255 for c in color):
                raise ValueError(f"`color` must be (r, g, b) in 0-255, got {self.color!r}")
            set_(self, "color", color)

    # -- constructors -------------------------------------------------------------
    @classmethod
    def from_bbox(cls, x0: float, y0: float, x1: float, y1: float, **fields: Any) -> Annotation:
        """Axis-aligned box from level-0 corners; `fields` as for :class:`Annotation`."""
        x0, x1 = sorted((float(x0), float(x1)))
        y0, y1 = sorted((float(y0), float(y1)))
        coords = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        fields.setdefault("granularity", "bbox")
        return cls(kind="bbox", coords=coords, **fields)

    @classmethod
    def from_ellipse(
        cls, cx: float, cy: float, a: float, b: float, angle: float = 0.0, n: int = 64,
        **fields: Any,
    ) -> Annotation:  # fmt: skip
        """Ellipse of semi-axes `a` ≥ `b` (level-0 px) at `angle` rad; outline of `n` vertices."""
        if a < b:
            a, b, angle = b, a, angle + math.pi / 2
        angle = _wrap_half_pi(angle)
        fields.setdefault("granularity", "ellipse")
        return cls(
            kind="ellipse",
            coords=ellipse_polygon(cx, cy, a, b, angle, n),
            ellipse=(cx, cy, a, b, angle),
            **fields,
        )

    def replace(self, **changes: Any) -> Annotation:
        """A copy with `changes` applied (same id unless given)."""
        return replace(self, **changes)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the exterior ring, level-0 px."""
        lo, hi = self.coords.min(axis=0), self.coords.max(axis=0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def _wrap_half_pi(angle: float) -> float:
    """Axis angle in (-π/2, π/2]."""
    angle = math.fmod(float(angle), math.pi)
    if angle <= -math.pi / 2:
        angle += math.pi
    elif angle > math.pi / 2:
        angle -= math.pi
    return angle


def ellipse_polygon(
    cx: float, cy: float, a: float, b: float, angle: float = 0.0, n: int = 64
) -> np.ndarray:
    """Outline of an ellipse, `n` vertices, not closed.

    Parameters
    ----------
    cx, cy : float
        Centre, level-0 px.
    a, b : float
        Semi-axes along and across `angle`, level-0 px.
    angle : float
        Rotation of the `a` axis from +x towards +y, radians.
    n : int
        Number of vertices (≥ 3).

    Returns
    -------
    (n, 2) ndarray of float64
        Vertices (x, y), first at ``centre + a·(cos angle, sin angle)``.

    Examples
    --------
    >>> ellipse_polygon(10, 20, 3, 1, 0, n=4).round(6).tolist()
    [[13.0, 20.0], [10.0, 21.0], [7.0, 20.0], [10.0, 19.0]]
    """
    if n < 3:
        raise ValueError(f"`n` must be >= 3, got {n}")
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = a * np.cos(t), b * np.sin(t)
    return np.column_stack([cx + u * ca - v * sa, cy + u * sa + v * ca])


# -- mask → vector ------------------------------------------------------------------
def _check_mask(mask: Any, downsample: float) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"`mask` must be 2-D (rows, cols), got shape {mask.shape}")
    if not downsample > 0:
        raise ValueError(f"`downsample` must be > 0, got {downsample}")
    return mask.astype(bool, copy=False)


def _components(mask: np.ndarray, per_component: bool) -> list[tuple[tuple[slice, slice], Any]]:
    """(slices, boolean sub-mask) of each 8-connected component (or of the whole mask)."""
    if not per_component:
        if not mask.any():
            return []
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        return [(sl, mask[sl])]
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return [(sl, labels[sl] == i) for i, sl in enumerate(ndimage.find_objects(labels), 1) if sl]


def mask_to_bbox(
    mask: Any,
    downsample: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    *,
    per_component: bool = True,
    **fields: Any,
) -> list[Annotation]:
    """Bounding boxes of the foreground of a mask.

    Parameters
    ----------
    mask : (rows, cols) array, bool-like
        Foreground mask at `downsample`.
    downsample : float
        Level-0 px per mask pixel.
    origin : (x, y) float
        Level-0 position of the mask's top-left corner.
    per_component : bool
        One box per 8-connected component (default) or one for the whole mask.
    **fields
        Passed to :class:`Annotation` (label, author, ...).

    Returns
    -------
    list of Annotation
        ``kind="bbox"``, ``granularity="bbox"``; boxes enclose whole pixels.

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[1:3, 2:5] = True
    >>> mask_to_bbox(m, downsample=2)[0].bounds
    (4.0, 2.0, 10.0, 6.0)
    """
    mask = _check_mask(mask, downsample)
    ox, oy = origin
    out = []
    for (rs, cs), _ in _components(mask, per_component):
        fields_ = {"granularity": "bbox", **fields}
        out.append(
            Annotation.from_bbox(
                ox + cs.start * downsample,
                oy + rs.start * downsample,
                ox + cs.stop * downsample,
                oy + rs.stop * downsample,
                **fields_,
            )
        )
    return out


def mask_to_ellipse(
    mask: Any,
    downsample: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    *,
    per_component: bool = True,
    n: int = 64,
    **fields: Any,
) -> list[Annotation]:
    """Moment-based ellipse of each component of a mask.

    The ellipse has the component's centroid and second moments: with the
    pixel-area covariance Σ (pixel-centre covariance + 1/12 per axis), the
    semi-axes are ``2·sqrt(eig(Σ))`` and the angle is that of the major
    eigenvector, so a rasterised ellipse comes back with its own axes. OpenCV's
    ``fitEllipse`` returns the same ellipse as ``((cx, cy), (2a, 2b), degrees)``.

    Parameters
    ----------
    mask : (rows, cols) array, bool-like
        Foreground mask at `downsample`.
    downsample : float
        Level-0 px per mask pixel.
    origin : (x, y) float
        Level-0 position of the mask's top-left corner.
    per_component : bool
        One ellipse per 8-connected component (default) or one for the whole mask.
    n : int
        Vertices of the outline polygon.
    **fields
        Passed to :class:`Annotation`.

    Returns
    -------
    list of Annotation
        ``kind="ellipse"``, ``granularity="ellipse"``, level-0 ``ellipse`` parameters.
    """
    mask = _check_mask(mask, downsample)
    ox, oy = origin
    out = []
    for (rs, cs), sub in _components(mask, per_component):
        rr, cc = np.nonzero(sub)
        xy = np.column_stack([cc + cs.start + 0.5, rr + rs.start + 0.5]).astype(np.float64)
        centre = xy.mean(axis=0)
        cov = np.cov(xy, rowvar=False, bias=True) + np.eye(2) / 12.0
        evals, evecs = np.linalg.eigh(cov)
        b, a = 2.0 * np.sqrt(np.maximum(evals, 0.0)) * downsample
        angle = math.atan2(evecs[1, 1], evecs[0, 1])
        cx, cy = ox + centre[0] * downsample, oy + centre[1] * downsample
        out.append(
            Annotation.from_ellipse(
                cx, cy, float(a), float(b), angle, n, **{"granularity": "ellipse", **fields}
            )
        )
    return out


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def mask_to_polygons(
    mask: Any,
    downsample: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    *,
    tolerance: float = 0.5,
    **fields: Any,
) -> list[Annotation]:
    """Outline each 8-connected component of a mask as a polygon with holes.

    Contours (:func:`skimage.measure.find_contours` at 0.5, foreground
    8-connected) run between foreground and background pixel centres, then are
    simplified with :func:`skimage.measure.approximate_polygon`.

    Parameters
    ----------
    mask : (rows, cols) array, bool-like
        Foreground mask at `downsample`.
    downsample : float
        Level-0 px per mask pixel.
    origin : (x, y) float
        Level-0 position of the mask's top-left corner.
    tolerance : float
        Largest simplification error, mask pixels (0 keeps every contour vertex).
    **fields
        Passed to :class:`Annotation`.

    Returns
    -------
    list of Annotation
        ``kind="polygon"``, ``granularity="pixel"`` (they outline a pixel mask),
        in raster order of the components' top-left pixels.
    """
    mask = _check_mask(mask, downsample)
    ox, oy = origin
    out = []
    for (rs, cs), sub in _components(mask, True):
        padded = np.pad(sub, 1).astype(np.float32)
        rings = []
        for contour in measure.find_contours(padded, 0.5, fully_connected="high"):
            if tolerance > 0:
                contour = measure.approximate_polygon(contour, tolerance)
            ring = contour[:-1] if np.array_equal(contour[0], contour[-1]) else contour
            if len(ring) < 3:
                continue
            # padded index → level-0: -1 for the pad, +0.5 from centre to edge frame
            x = ox + (ring[:, 1] - 0.5 + cs.start) * downsample
            y = oy + (ring[:, 0] - 0.5 + rs.start) * downsample
            rings.append(np.column_stack([x, y]))
        if not rings:
            continue
        areas = [abs(_ring_area(r)) for r in rings]
        outer = int(np.argmax(areas))
        holes = tuple(r for i, r in enumerate(rings) if i != outer)
        out.append(
            Annotation(
                kind="polygon",
                coords=rings[outer],
                holes=holes,
                **{"granularity": "pixel", **fields},
            )
        )
    return out


# -- vector → mask ------------------------------------------------------------------
def class_index(
    classes: Sequence[AnnotationClass | str] | Mapping[str, int] = DEFAULT_CLASSES,
) -> dict[str, int]:
    """Class name → label value: 1, 2, ... in order, ``"ignore"`` → 255.

    Examples
    --------
    >>> class_index()
    {'tumor': 1, 'non-tumor': 2, 'ignore': 255}
    """
    if isinstance(classes, Mapping):
        index = {str(k): int(v) for k, v in classes.items()}
    else:
        names = [c.name if isinstance(c, AnnotationClass) else str(c) for c in classes]
        index, value = {}, 1
        for name in names:
            if name == "ignore":
                index[name] = IGNORE_INDEX
            else:
                index[name], value = value, value + 1
    bad = {k: v for k, v in index.items() if not 0 <= v <= 255}
    if bad:
        raise ValueError(f"class label values must be in 0-255, got {bad}")
    return index


def _ellipse_vertices(a_px: float) -> int:
    """Vertices keeping an inscribed polygon within 0.05 px of an ellipse of semi-axis a_px."""
    return int(min(4096, max(32, math.ceil(math.pi * math.sqrt(10.0 * max(a_px, 0.0))))))


def rasterize(
    annotations: Sequence[Annotation],
    shape: tuple[int, int],
    downsample: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    classes: Sequence[AnnotationClass | str] | Mapping[str, int] = DEFAULT_CLASSES,
) -> np.ndarray:
    """Draw annotations into a label mask at any resolution.

    A pixel is inside when its centre is (:func:`skimage.draw.polygon`); holes
    are cut out; ellipses are drawn from their exact parameters; points are
    skipped. Later annotations are drawn over earlier ones.

    Parameters
    ----------
    annotations : sequence of Annotation
        Level-0 annotations.
    shape : (rows, cols)
        Output shape in mask pixels.
    downsample : float
        Level-0 px per mask pixel (e.g. target µm/px ÷ slide µm/px).
    origin : (x, y) float
        Level-0 position of the mask's top-left corner.
    classes : sequence of AnnotationClass or str, or mapping name → value
        Label values (see :func:`class_index`); 0 is background.

    Returns
    -------
    (rows, cols) ndarray of uint8
        Label mask.

    Raises
    ------
    ValueError
        If an annotation's label is not in `classes`.
    """
    if not downsample > 0:
        raise ValueError(f"`downsample` must be > 0, got {downsample}")
    rows, cols = (int(s) for s in shape)
    index = class_index(classes)
    out = np.zeros((rows, cols), dtype=np.uint8)
    ox, oy = origin

    def to_rc(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (xy[:, 1] - oy) / downsample - 0.5, (xy[:, 0] - ox) / downsample - 0.5

    for i, ann in enumerate(annotations):
        if ann.kind == "point":
            continue
        if ann.label not in index:
            raise ValueError(
                f"annotation {i} ({ann.id}): label {ann.label!r} is not in `classes` "
                f"{sorted(index)}"
            )
        if ann.kind == "ellipse" and ann.ellipse is not None:
            cx, cy, a, b, angle = ann.ellipse
            ring = ellipse_polygon(cx, cy, a, b, angle, _ellipse_vertices(a / downsample))
        else:
            ring = ann.coords
        r, c = to_rc(ring)
        rr, cc = draw.polygon(r, c, (rows, cols))
        if rr.size == 0:
            continue
        if ann.holes:
            r0, c0 = rr.min(), cc.min()
            inside = np.zeros((rr.max() - r0 + 1, cc.max() - c0 + 1), dtype=bool)
            inside[rr - r0, cc - c0] = True
            for hole in ann.holes:
                hr, hc = to_rc(hole)
                hrr, hcc = draw.polygon(hr - r0, hc - c0, inside.shape)
                inside[hrr, hcc] = False
            lr, lc = np.nonzero(inside)
            rr, cc = lr + r0, lc + c0
        out[rr, cc] = index[ann.label]
    return out
