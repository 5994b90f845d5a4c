"""Annotations ↔ napari layer data, in bulk (no Qt, no napari import).

Coordinate planes: level 0 and napari world as in :mod:`napari_histo.frames`
(the only place the conversions are written down), and
``crop``
    A label crop ``(rows, cols)`` at `downsample` d whose top-left corner is
    level-0 `origin` ``(ox, oy)``: crop pixel ``(r, c)`` covers level-0
    ``[ox + c·d, ox + (c + 1)·d) × [oy + r·d, oy + (r + 1)·d)``.

Shapes layers built here hold world µm with ``scale = 1``; their data are
plain dicts of keyword arguments for ``viewer.add_shapes`` (one call for any
number of shapes: bulk construction), so the GUI, the writer, the tests and the
benchmark share them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import points_in_poly

from napari_histo._atomic import atomic_write_text
from napari_histo.annotations.model import (
    DEFAULT_CLASSES,
    Annotation,
    AnnotationClass,
    class_index,
    mask_to_polygons,
    rasterize,
)
from napari_histo.errors import AnnotationError
from napari_histo.frames import Pair, grid_transform, l0_to_world, mpp_pair, world_to_l0

__all__ = [
    "FEATURE_COLUMNS",
    "CropGeometry",
    "annotations_to_shapes",
    "classes_path",
    "crop_for_region",
    "crop_to_annotations",
    "label_colors",
    "load_classes",
    "rasterize_crop",
    "save_classes",
    "shapes_to_annotations",
]

#: Feature columns of an annotation Shapes layer.
FEATURE_COLUMNS = ("id", "label", "granularity", "author", "created")
#: Largest side of a pixel-annotation crop, crop pixels.
MAX_CROP_PX = 2048
_FACE_ALPHA = 0.3
_ELLIPSE_MATCH_PX = 1e-6


# -- classes -----------------------------------------------------------------------------
def classes_path(annotation_path: str | os.PathLike[str]) -> Path:
    """Where the class list of an annotation file lives: ``<file>`` → ``<stem>.classes.json``.

    ``slide.svs.annotations.geojson`` → ``slide.svs.annotations.classes.json``.
    """
    path = Path(annotation_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}.classes.json")


def save_classes(path: str | os.PathLike[str], classes: Sequence[AnnotationClass]) -> Path:
    """Write `classes` as JSON ``{"classes": [{"name", "color"}, ...]}``, atomically."""
    doc = {"classes": [{"name": c.name, "color": list(c.color)} for c in classes]}
    return atomic_write_text(path, json.dumps(doc, indent=1))


def load_classes(path: str | os.PathLike[str]) -> list[AnnotationClass]:
    """Read a class list written by :func:`save_classes`; the defaults come first.

    Raises
    ------
    AnnotationError
        If the file exists but is not a valid class list (the message names it).
    """
    path = Path(path)
    out = {c.name: c for c in DEFAULT_CLASSES}
    if not path.exists():
        return list(out.values())
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        for item in doc["classes"]:
            name, color = str(item["name"]), tuple(int(v) for v in item["color"])
            if not name or len(color) != 3 or not all(0 <= v <= 255 for v in color):
                raise ValueError(f"bad class {item!r}")
            out[name] = AnnotationClass(name, color)  # type: ignore[arg-type]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: unreadable class list ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(f"{path}: not a class list ({exc})") from None
    return list(out.values())


def _rgba(color: Sequence[int], alpha: float = 1.0) -> np.ndarray:
    return np.array([*(v / 255.0 for v in color), alpha], dtype=np.float32)


def label_colors(classes: Sequence[AnnotationClass]) -> dict[int | None, np.ndarray]:
    """Label value → RGBA for a crop Labels layer (0 and unknown values transparent)."""
    index = class_index(classes)
    colors: dict[int | None, np.ndarray] = {None: np.zeros(4, np.float32)}
    colors[0] = np.zeros(4, np.float32)
    for c in classes:
        colors[index[c.name]] = _rgba(c.color, 0.6)
    return colors


# -- Shapes ------------------------------------------------------------------------------
def _shape_of(ann: Annotation, mpp: float | Sequence[float]) -> tuple[np.ndarray, str]:
    if ann.kind == "ellipse" and ann.ellipse is not None:
        cx, cy, a, b, angle = ann.ellipse
        u = np.array([math.cos(angle), math.sin(angle)]) * a
        v = np.array([-math.sin(angle), math.cos(angle)]) * b
        c = np.array([cx, cy])
        corners = np.array([c - u - v, c + u - v, c + u + v, c - u + v])
        return l0_to_world(corners, mpp), "ellipse"
    if ann.kind == "bbox":
        return l0_to_world(ann.coords, mpp), "rectangle"
    if ann.kind == "point":
        return l0_to_world(ann.coords[:1], mpp), "point"
    return l0_to_world(ann.coords, mpp), "polygon"


def annotations_to_shapes(
    annotations: Sequence[Annotation],
    mpp: float | Sequence[float],
    classes: Sequence[AnnotationClass] = DEFAULT_CLASSES,
) -> dict[str, Any]:
    """Keyword arguments for one ``viewer.add_shapes`` call showing `annotations`.

    Parameters
    ----------
    annotations : sequence of Annotation
        Level-0 annotations; points are left out (Shapes have no point type).
    mpp : float or (mpp_y, mpp_x)
        Level-0 µm per px of the slide.
    classes : sequence of AnnotationClass
        Colours of the class labels (unknown labels are grey).

    Returns
    -------
    dict
        ``data`` (list of (N, 2) world µm arrays, (row, col)), ``shape_type``,
        ``features`` (dict of columns :data:`FEATURE_COLUMNS`), ``face_color``
        and ``edge_color`` ((n, 4) RGBA arrays; left out when there are no shapes).
    """
    colors = {c.name: c.color for c in classes}
    data, types = [], []
    cols: dict[str, list[str]] = {k: [] for k in FEATURE_COLUMNS}
    rgb = []
    for ann in annotations:
        if ann.kind == "point":
            continue
        verts, kind = _shape_of(ann, mpp)
        data.append(verts)
        types.append(kind)
        cols["id"].append(ann.id)
        cols["label"].append(ann.label)
        cols["granularity"].append(ann.granularity)
        cols["author"].append(ann.author)
        cols["created"].append(ann.created)
        rgb.append(ann.color or colors.get(ann.label, (128, 128, 128)))
    rgb_arr = np.asarray(rgb, dtype=np.float32).reshape(-1, 3) / 255.0
    edge = np.column_stack([rgb_arr, np.ones(len(rgb_arr), np.float32)])
    face = np.column_stack([rgb_arr, np.full(len(rgb_arr), _FACE_ALPHA, np.float32)])
    out = {
        "data": data,
        "shape_type": types,
        "features": {k: np.array(v, dtype=object) for k, v in cols.items()},
    }
    if data:  # napari rejects empty colour arrays
        out.update(face_color=face, edge_color=edge)
    return out


def _ellipse_from_corners(l0: np.ndarray) -> tuple[float, float, float, float, float]:
    centre = l0.mean(axis=0)
    s1, s2 = l0[1] - l0[0], l0[2] - l0[1]
    a, b = float(np.hypot(*s1)) / 2, float(np.hypot(*s2)) / 2
    angle = math.atan2(s1[1], s1[0])
    return float(centre[0]), float(centre[1]), a, b, angle


def _holes_inside(holes: tuple[np.ndarray, ...], ring: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(h for h in holes if points_in_poly(h, ring).all())


def shapes_to_annotations(
    data: Sequence[Any],
    shape_types: Sequence[str],
    features: Mapping[str, Sequence[Any]] | None,
    mpp: float | Sequence[float],
    *,
    default_label: str = "tumor",
    default_author: str = "",
    previous: Mapping[str, Annotation] | None = None,
) -> list[Annotation]:
    """Annotations of a Shapes layer's data (the inverse of :func:`annotations_to_shapes`).

    Parameters
    ----------
    data : sequence of (N, 2) arrays
        World µm vertices ``(row, col)`` (``layer.data`` of a layer with scale 1).
    shape_types : sequence of str
        ``layer.shape_type``: rectangle → bbox, ellipse → ellipse, polygon/path
        → polygon (a closed path loses its repeated vertex; lines and shapes of
        fewer than 3 vertices are skipped).
    features : mapping of columns or None
        ``id``, ``label``, ``granularity``, ``author``, ``created``; missing or
        empty values get `default_label`, the shape type's granularity,
        `default_author`, a new id and the current time.
    mpp : float or (mpp_y, mpp_x)
        Level-0 µm per px.
    previous : mapping id → Annotation, optional
        Annotations the layer was built from. A shape whose vertices did not
        move returns its previous annotation unchanged (exact round trip, holes
        and extra properties kept); a moved one keeps holes that are still inside.

    Returns
    -------
    list of Annotation
        In layer order.
    """
    n = len(data)
    if len(shape_types) != n:
        raise ValueError(f"`shape_types` has {len(shape_types)} entries for {n} shapes")
    feats = {k: list(features[k]) for k in FEATURE_COLUMNS if features and k in features}
    previous = previous or {}
    unmoved_um = 0.01 * min(mpp_pair(mpp))

    def col(name: str, i: int) -> str:
        values = feats.get(name)
        if values is None or i >= len(values):
            return ""
        value = values[i]
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        return "" if missing else str(value)

    out = []
    for i, (verts, stype) in enumerate(zip(data, shape_types, strict=True)):
        verts = np.asarray(verts, dtype=np.float64)
        if stype == "path":  # an outline: a polygon, closed or not
            if len(verts) > 3 and np.allclose(verts[0], verts[-1], rtol=0, atol=1e-9):
                verts = verts[:-1]
            stype = "polygon"
        if stype == "line" or len(verts) < 3:
            continue
        ann_id = col("id", i)
        prev = previous.get(ann_id) if ann_id else None
        if prev is not None:
            old, old_type = _shape_of(prev, mpp)
            # napari keeps vertices as float32: "unmoved" allows its rounding (< 0.02 px)
            if (
                old_type == stype
                and old.shape == verts[:, -2:].shape
                and np.allclose(old, verts[:, -2:], rtol=4e-7, atol=unmoved_um)
            ):
                label, author = col("label", i) or prev.label, col("author", i) or prev.author
                gran = col("granularity", i) or prev.granularity
                if (label, author, gran) == (prev.label, prev.author, prev.granularity):
                    out.append(prev)
                else:
                    out.append(prev.replace(label=label, author=author, granularity=gran))
                continue
        l0 = world_to_l0(verts, mpp)
        fields: dict[str, Any] = {
            "label": col("label", i) or default_label,
            "author": col("author", i) or default_author,
        }
        if ann_id:
            fields["id"] = ann_id
        if col("created", i):
            fields["created"] = col("created", i)
        gran = col("granularity", i)
        if prev is not None:
            fields.update(
                object_type=prev.object_type, color=prev.color, properties=dict(prev.properties)
            )
        if stype == "rectangle":
            x0, y0 = l0.min(axis=0)
            x1, y1 = l0.max(axis=0)
            if _is_axis_aligned(l0):
                ann = Annotation.from_bbox(x0, y0, x1, y1, granularity=gran or "bbox", **fields)
            else:  # rotated rectangle: keep its corners
                ann = Annotation("polygon", l0, granularity=gran or "bbox", **fields)
        elif stype == "ellipse":
            ann = Annotation.from_ellipse(
                *_ellipse_from_corners(l0), granularity=gran or "ellipse", **fields
            )
        else:
            holes = _holes_inside(prev.holes, l0) if prev is not None else ()
            ann = Annotation("polygon", l0, holes=holes, granularity=gran or "polygon", **fields)
        out.append(ann)
    return out


def _is_axis_aligned(corners: np.ndarray) -> bool:
    xs, ys = np.unique(np.round(corners[:, 0], 6)), np.unique(np.round(corners[:, 1], 6))
    return len(corners) == 4 and len(xs) <= 2 and len(ys) <= 2


# -- pixel crops -------------------------------------------------------------------------
@dataclass(frozen=True)
class CropGeometry:
    """A label crop on the slide.

    Attributes
    ----------
    origin_l0 : (x, y) float
        Level-0 position of the crop's top-left corner.
    downsample : float
        Level-0 px per crop px.
    shape : (rows, cols)
        Crop size in crop px.
    """

    origin_l0: tuple[float, float]
    downsample: float
    shape: tuple[int, int]

    def layer_transform(self, mpp: float | Sequence[float]) -> tuple[Pair, Pair]:
        """napari ``(scale, translate)`` in µm that puts the crop on the slide layer.

        Crop pixel ``j``'s centre is level-0 ``o + (j + 0.5)·d``, world
        ``(o + (j + 0.5)·d - 0.5)·mpp``; napari puts it at ``translate + j·scale``.
        """
        return grid_transform(self.origin_l0, self.downsample, mpp)

    @property
    def bounds_l0(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) covered, level-0 px."""
        ox, oy = self.origin_l0
        rows, cols = self.shape
        return ox, oy, ox + cols * self.downsample, oy + rows * self.downsample


def crop_for_region(
    region_l0: Sequence[int], max_px: int = MAX_CROP_PX, min_downsample: float = 1.0
) -> CropGeometry:
    """Crop covering level-0 ``(x, y, w, h)`` at the smallest integer downsample ≤ `max_px`."""
    x, y, w, h = (int(v) for v in region_l0)
    if w < 1 or h < 1:
        raise ValueError(f"`region_l0` must have w, h >= 1, got {tuple(region_l0)}")
    d = max(float(min_downsample), float(math.ceil(max(w, h) / max_px)))
    return CropGeometry((float(x), float(y)), d, (math.ceil(h / d), math.ceil(w / d)))


def rasterize_crop(
    annotations: Sequence[Annotation],
    crop: CropGeometry,
    classes: Sequence[AnnotationClass] = DEFAULT_CLASSES,
) -> np.ndarray:
    """Label crop (uint8, :func:`class_index` values) with `annotations` drawn in it."""
    known = {c.name for c in classes}
    anns = [a for a in annotations if a.label in known]
    return rasterize(anns, crop.shape, crop.downsample, crop.origin_l0, classes)


def crop_to_annotations(
    labels: Any,
    crop: CropGeometry,
    classes: Sequence[AnnotationClass] = DEFAULT_CLASSES,
    **fields: Any,
) -> list[Annotation]:
    """Pixel annotations (polygons with holes) of every class value in a label crop.

    Parameters
    ----------
    labels : (rows, cols) int array
        Label crop; values from :func:`class_index` of `classes`, 0 = nothing.
    crop : CropGeometry
        Where the crop is.
    classes : sequence of AnnotationClass
        Value → class name; values of no class raise.
    **fields
        Passed to each :class:`Annotation` (author, ...); granularity is "pixel".
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(crop.shape):
        raise ValueError(f"`labels` shape {labels.shape} must equal crop shape {crop.shape}")
    names = {v: k for k, v in class_index(classes).items()}
    out: list[Annotation] = []
    for value in np.unique(labels):
        if value == 0:
            continue
        if int(value) not in names:
            raise ValueError(f"label value {int(value)} is no class of {sorted(names.values())}")
        out.extend(
            mask_to_polygons(
                labels == value, crop.downsample, crop.origin_l0,
                **{"granularity": "pixel", **fields, "label": names[int(value)]},
            )
        )  # fmt: skip
    return out
