"""QuPath-compatible GeoJSON annotation files: read every valid feature, write atomically."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo._atomic import atomic_write_text
from napari_histo.annotations.model import GRANULARITIES, KINDS, Annotation
from napari_histo.annotations.polygons import simple_polygons
from napari_histo.errors import AnnotationError
from napari_histo.io.annotations._common import (
    MAX_COORD_PX,
    AnnotationFile,
    PathLike,
    Skip,
    class_color,
    is_jsonable,
    nonfinite,
    read_limited,
)

__all__ = ["META_KEY", "geojson_text", "parse_geojson", "read_geojson", "write_geojson"]

#: Key under GeoJSON ``properties`` holding what QuPath has no field for.
META_KEY = "napari_histo"
_RESERVED = {"objectType", "classification", "color", META_KEY}


# -- GeoJSON writing ----------------------------------------------------------------
def _closed(ring: np.ndarray) -> list[list[float]]:
    pts = ring.tolist()
    pts.append(pts[0])
    return pts


def _feature(ann: Annotation) -> dict[str, Any]:
    if ann.kind == "point":
        pts = ann.coords.tolist()
        geometry = (
            {"type": "Point", "coordinates": pts[0]}
            if len(pts) == 1
            else {"type": "MultiPoint", "coordinates": pts}
        )
    else:
        rings = [_closed(ann.coords), *(_closed(h) for h in ann.holes)]
        geometry = {"type": "Polygon", "coordinates": rings}
    meta: dict[str, Any] = {
        "kind": ann.kind,
        "granularity": ann.granularity,
        "author": ann.author,
        "created": ann.created,
        "color": list(ann.color) if ann.color is not None else None,
    }
    if ann.ellipse is not None:
        meta["ellipse"] = list(ann.ellipse)
    props = {k: v for k, v in ann.properties.items() if k not in _RESERVED}
    props["objectType"] = ann.object_type
    props["classification"] = {"name": ann.label, "color": list(class_color(ann))}
    if ann.color is not None:
        props["color"] = list(ann.color)
    props[META_KEY] = meta
    return {"type": "Feature", "id": ann.id, "geometry": geometry, "properties": props}


def geojson_text(annotations: Iterable[Annotation]) -> str:
    """GeoJSON FeatureCollection text of `annotations` (see :func:`write_geojson`)."""
    doc = {"type": "FeatureCollection", "features": [_feature(a) for a in annotations]}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)


def write_geojson(path: PathLike, annotations: Iterable[Annotation], backups: int = 0) -> Path:
    """Write a QuPath-compatible GeoJSON FeatureCollection, atomically.

    Polygons (with holes), boxes and ellipses become ``Polygon`` features,
    points ``Point``/``MultiPoint``. ``properties`` carry QuPath's
    ``objectType`` and ``classification`` ({name, color [r, g, b]}) plus a
    ``napari_histo`` object (kind, granularity, exact ellipse, author, created)
    that lets :func:`read_geojson` restore our annotations exactly.

    Parameters
    ----------
    path : str or PathLike
        Destination (``.geojson``).
    annotations : iterable of Annotation
        Level-0 annotations.
    backups : int
        Previous versions to keep, see :func:`atomic_write_text`.
    """
    return atomic_write_text(path, geojson_text(annotations), backups=backups)


# -- GeoJSON reading ----------------------------------------------------------------


def _ring(obj: Any, what: str, min_points: int = 3) -> np.ndarray:
    if not isinstance(obj, list) or not obj:
        raise Skip(f"{what} must be a non-empty list of [x, y] positions")
    try:
        arr = np.array(obj)
    except (ValueError, TypeError, OverflowError):
        raise Skip(f"{what} must be a list of [x, y] number pairs") from None
    if arr.dtype.kind not in "iuf" or arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise Skip(f"{what} must be a list of [x, y] number pairs")
    arr = arr[:, :2].astype(np.float64)
    if not np.isfinite(arr).all():
        raise Skip(f"{what} has a NaN or infinite coordinate")
    if np.abs(arr).max() > MAX_COORD_PX:
        raise Skip(f"{what} has a coordinate beyond ±{MAX_COORD_PX:.0e} px")
    if len(arr) > 1 and np.array_equal(arr[0], arr[-1]) and min_points > 1:
        arr = arr[:-1]
    distinct = len(arr) if len(arr) < 2 else int(np.any(arr != np.roll(arr, 1, 0), axis=1).sum())
    if distinct < min_points:
        raise Skip(f"{what} has fewer than {min_points} distinct positions")
    return arr


def _rings(obj: Any, what: str) -> list[np.ndarray]:
    if not isinstance(obj, list) or not obj:
        raise Skip(f"{what} must be a non-empty list of rings")
    return [_ring(r, f"{what} ring {k}") for k, r in enumerate(obj)]


def _str(value: Any, default: str) -> str:
    return value if isinstance(value, str) else default


def _rgb(value: Any) -> tuple[int, int, int] | None:
    if (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)
    ):
        return (value[0], value[1], value[2])
    if isinstance(value, int) and not isinstance(value, bool):  # QuPath packed ARGB int
        return ((value >> 16) & 255, (value >> 8) & 255, value & 255)
    return None


def _parse_feature(feat: Any, warn: list[str]) -> list[Annotation]:
    if not isinstance(feat, dict):
        raise Skip(f"must be an object, got {type(feat).__name__}")
    if feat.get("type", "Feature") != "Feature":
        raise Skip(f"type must be 'Feature', got {feat.get('type')!r}")
    geom = feat.get("geometry")
    if not isinstance(geom, dict):
        raise Skip("has no geometry object")
    props = feat.get("properties")
    props = props if isinstance(props, dict) else {}
    meta = props.get(META_KEY)
    meta = meta if isinstance(meta, dict) else {}
    cls = props.get("classification")
    cls = cls if isinstance(cls, dict) else {}

    object_type = props.get("objectType", "annotation")
    if object_type not in ("annotation", "detection"):
        if object_type in ("cell", "tile"):
            object_type = "detection"
        else:
            warn.append(f"unknown objectType {object_type!r}, read as 'annotation'")
            object_type = "annotation"
    if META_KEY in props:
        color = _rgb(meta.get("color"))
    else:
        color = _rgb(props.get("color")) or _rgb(cls.get("color"))
    extra = {}
    for key, value in props.items():
        if key in _RESERVED:
            continue
        if is_jsonable(value):
            extra[key] = value
        else:
            warn.append(f"property {key!r} holds NaN/Infinity or is too deep; dropped")
    granularity = meta.get("granularity")
    fid = feat.get("id")
    common = {
        "label": _str(cls.get("name"), "") or _str(props.get("name"), "") or "unclassified",
        "author": _str(meta.get("author"), ""),
        "object_type": object_type,
        "color": color,
        "properties": extra,
    }
    if isinstance(meta.get("created"), str):
        common["created"] = meta["created"]

    gtype = geom.get("type")
    coords = geom.get("coordinates")
    kind = meta.get("kind") if meta.get("kind") in KINDS else None
    if gtype in ("Point", "MultiPoint"):
        pts = _ring([coords] if gtype == "Point" else coords, "coordinates", min_points=1)
        parts = [("point", pts, ())]
    elif gtype == "Polygon":
        rings = _rings(coords, "coordinates")
        parts = [(kind if kind in ("polygon", "bbox", "ellipse") else "polygon", rings[0],
                  tuple(rings[1:]))]  # fmt: skip
    elif gtype == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise Skip("MultiPolygon coordinates must be a non-empty list of polygons")
        parts = []
        for k, poly in enumerate(coords):
            rings = _rings(poly, f"polygon {k}")
            parts.append(("polygon", rings[0], tuple(rings[1:])))
    else:
        raise Skip(f"unsupported geometry type {gtype!r}")

    out = []
    for k, (kind_k, ring, holes) in enumerate(parts):
        fields = dict(common)
        if kind_k == "ellipse":
            ell = meta.get("ellipse")
            if (
                isinstance(ell, list) and len(ell) == 5
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ell)
                and all(math.isfinite(v) and abs(v) <= MAX_COORD_PX for v in ell)
                and ell[2] > 0 and ell[3] > 0
            ):  # fmt: skip
                fields["ellipse"] = tuple(float(v) for v in ell)
            else:
                warn.append("ellipse parameters missing or invalid; read as a polygon")
                kind_k = "polygon"
        if kind_k == "bbox" and len(ring) != 4:
            warn.append(f"bbox with {len(ring)} corners; read as a polygon")
            kind_k = "polygon"
        if kind_k != "polygon" and holes:
            warn.append(f"{kind_k} has holes; read as a polygon")
            fields.pop("ellipse", None)
            kind_k = "polygon"
        default_gran = {"bbox": "bbox", "ellipse": "ellipse"}.get(kind_k, "polygon")
        fields["granularity"] = granularity if granularity in GRANULARITIES else default_gran
        if isinstance(fid, str) and fid:
            fields["id"] = fid if k == 0 else str(uuid.uuid5(uuid.NAMESPACE_URL, f"{fid}/{k}"))
        try:
            out.append(Annotation(kind=kind_k, coords=ring, holes=holes, **fields))
        except ValueError as exc:
            raise Skip(str(exc)) from None
    return out


def _features(doc: Any, path: Path) -> list[Any]:
    if isinstance(doc, list):  # older QuPath: a bare array of features
        return doc
    if not isinstance(doc, dict):
        raise AnnotationError(
            f"{path}: top level must be a GeoJSON object, got {type(doc).__name__}"
        )
    if doc.get("type") == "Feature":
        return [doc]
    if doc.get("type") != "FeatureCollection":
        raise AnnotationError(
            f"{path}: top level must be a FeatureCollection or Feature, "
            f"got type {doc.get('type')!r}"
        )
    features = doc.get("features")
    if not isinstance(features, list):
        raise AnnotationError(f"{path}: 'features' must be a list")
    return features


def parse_geojson(text: str | bytes, path: PathLike = "<string>") -> AnnotationFile:
    """Parse GeoJSON text; see :func:`read_geojson`. `path` only names the source."""
    path = Path(path)
    try:
        doc = json.loads(text, parse_constant=nonfinite)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except RecursionError:
        raise AnnotationError(f"{path}: JSON nested too deeply") from None
    features = _features(doc, path)
    result = AnnotationFile()
    origin: list[int] = []  # feature index of each annotation
    if not features:
        result.problems.append("file: no features")
    for idx, feat in enumerate(features):
        warn: list[str] = []
        try:
            anns = _parse_feature(feat, warn)
            result.annotations.extend(anns)
            origin.extend([idx] * len(anns))
        except Skip as exc:
            result.problems.append(f"feature {idx}: skipped: {exc}")
            continue
        finally:
            result.problems.extend(f"feature {idx}: warning: {w}" for w in warn)
    polys = [k for k, a in enumerate(result.annotations) if a.kind in ("polygon", "bbox")]
    simple = simple_polygons([result.annotations[k].coords for k in polys])
    for k in np.asarray(polys, dtype=np.intp)[~simple]:
        result.problems.append(
            f"feature {origin[k]}: warning: polygon edges cross or touch (self-intersection); kept"
        )
    return result


def read_geojson(path: PathLike) -> AnnotationFile:
    """Read a GeoJSON (QuPath) annotation file, loading every valid feature.

    Accepts a FeatureCollection, a single Feature or a bare list of features
    (older QuPath). Supported geometries: Polygon (with holes), MultiPolygon
    (one annotation per polygon), Point, MultiPoint.

    Parameters
    ----------
    path : str or PathLike
        The file, at most :data:`MAX_FILE_BYTES`.

    Returns
    -------
    AnnotationFile
        Annotations plus one ``"feature <index>: ..."`` line per problem: bad
        coordinates (non-numbers, NaN/Infinity, beyond ±1e7 px, too few points),
        unsupported geometry, wrong types are skipped; self-intersecting polygons
        are kept with a warning.

    Raises
    ------
    AnnotationError
        If the file cannot be read, is too large, is not JSON, or is not a
        GeoJSON feature collection; the message names the file.
    """
    path = Path(path)
    return parse_geojson(read_limited(path), path)
