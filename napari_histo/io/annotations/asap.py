"""ASAP XML annotations (ASAP_Annotations / Annotations / Annotation, AnnotationGroups).

ASAP has no holes or ellipses: holes are written as separate ``Polygon``
entries with ``HoleOf="<id>"``, and extra attributes (Id, Kind, Ellipse, …)
make the round trip through our own files exact.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo._atomic import atomic_write_text
from napari_histo.annotations.model import GRANULARITIES, KINDS, Annotation
from napari_histo.errors import AnnotationError
from napari_histo.io.annotations._common import (
    CLASS_COLORS,
    GRAY,
    MAX_COORD_PX,
    AnnotationFile,
    PathLike,
    Skip,
    class_color,
    is_jsonable,
    nonfinite,
    read_limited,
)

__all__ = ["asap_xml_text", "read_asap_xml", "write_asap_xml"]


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02X}{:02X}{:02X}".format(*rgb)


def _from_hex(text: str | None) -> tuple[int, int, int] | None:
    if not text or len(text) != 7 or text[0] != "#":
        return None
    try:
        v = int(text[1:], 16)
    except ValueError:
        return None
    return ((v >> 16) & 255, (v >> 8) & 255, v & 255)


def asap_xml_text(annotations: Iterable[Annotation]) -> str:
    """ASAP XML text of `annotations` (see :func:`write_asap_xml`)."""
    root = ET.Element("ASAP_Annotations")
    group = ET.SubElement(root, "Annotations")
    labels: dict[str, tuple[int, int, int]] = {}

    def add(ann: Annotation, name: str, asap_type: str, ring: np.ndarray, **extra: str) -> None:
        el = ET.SubElement(
            group, "Annotation", Name=name, Type=asap_type, PartOfGroup=ann.label,
            Color=_hex(class_color(ann)), **extra,
        )  # fmt: skip
        coords = ET.SubElement(el, "Coordinates")
        for k, (x, y) in enumerate(ring.tolist()):
            ET.SubElement(coords, "Coordinate", Order=str(k), X=repr(x), Y=repr(y))

    for ann in annotations:
        labels.setdefault(ann.label, CLASS_COLORS.get(ann.label, GRAY))
        asap_type = {"bbox": "Rectangle", "point": "Dot" if len(ann.coords) == 1 else "PointSet"}
        meta = {
            "Id": ann.id,
            "Kind": ann.kind,
            "Granularity": ann.granularity,
            "Author": ann.author,
            "Created": ann.created,
            "ObjectType": ann.object_type,
            "HasColor": "true" if ann.color is not None else "false",
        }
        if ann.ellipse is not None:
            meta["Ellipse"] = " ".join(repr(v) for v in ann.ellipse)
        if ann.properties:
            meta["Properties"] = json.dumps(ann.properties, allow_nan=False)
        name = ann.properties.get("name")
        name = name if isinstance(name, str) and name else ann.id
        add(ann, name, asap_type.get(ann.kind, "Polygon"), ann.coords, **meta)
        for k, hole in enumerate(ann.holes):
            add(ann, f"{ann.id} hole {k}", "Polygon", hole, HoleOf=ann.id)
    groups = ET.SubElement(root, "AnnotationGroups")
    for label, rgb in labels.items():
        g = ET.SubElement(groups, "Group", Name=label, PartOfGroup="None", Color=_hex(rgb))
        ET.SubElement(g, "Attributes")
    ET.indent(root)
    return '<?xml version="1.0"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_asap_xml(path: PathLike, annotations: Iterable[Annotation], backups: int = 0) -> Path:
    """Write ASAP XML (``ASAP_Annotations``), atomically.

    Polygons and ellipses (as their outline) become ``Polygon``, boxes
    ``Rectangle``, points ``Dot``/``PointSet``; holes become ``Polygon``
    annotations with ``HoleOf="<id>"`` (ASAP shows them as outlines). Extra
    attributes (Id, Kind, Granularity, Ellipse, Author, Created, ...) let
    :func:`read_asap_xml` restore our annotations exactly; ASAP ignores them.
    """
    return atomic_write_text(path, asap_xml_text(annotations), backups=backups)


def _asap_float(text: str | None) -> float:
    if text is None:
        raise Skip("coordinate without X or Y")
    try:
        value = float(text.replace(",", "."))  # ASAP in some locales writes "12,5"
    except ValueError:
        raise Skip(f"coordinate {text!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > MAX_COORD_PX:
        raise Skip(f"coordinate {text!r} is not finite or beyond ±{MAX_COORD_PX:.0e} px")
    return value


def _asap_annotation(
    el: ET.Element, group_colors: dict[str, tuple[int, int, int]], warn: list[str]
) -> tuple[Annotation | None, str | None, np.ndarray]:
    coords_el = el.find("Coordinates")
    if coords_el is None:
        raise Skip("no Coordinates")
    pts = []
    for c in coords_el.findall("Coordinate"):
        try:
            order = int(c.get("Order", len(pts)))
        except ValueError:
            raise Skip(f"Order {c.get('Order')!r} is not an integer") from None
        pts.append((order, _asap_float(c.get("X")), _asap_float(c.get("Y"))))
    if not pts:
        raise Skip("no Coordinate elements")
    pts.sort(key=lambda p: p[0])
    ring = np.array([(x, y) for _, x, y in pts], dtype=np.float64)
    hole_of = el.get("HoleOf")
    if hole_of is not None:
        return None, hole_of, ring
    asap_type = el.get("Type", "Polygon")
    kind = {"Polygon": "polygon", "Rectangle": "bbox", "Dot": "point", "PointSet": "point",
            "Spline": "polygon", "Ellipse": "polygon"}.get(asap_type)  # fmt: skip
    if kind is None:
        raise Skip(f"unsupported Type {asap_type!r}")
    if asap_type == "Spline":
        warn.append("Spline read as a polygon through its control points")
    if el.get("Kind") in KINDS:
        kind = el.get("Kind")
    label = el.get("PartOfGroup") or "unclassified"
    if label == "None":
        label = "unclassified"
    fields: dict[str, Any] = {"label": label, "author": el.get("Author", "")}
    if el.get("Id"):
        fields["id"] = el.get("Id")
    if el.get("Created"):
        fields["created"] = el.get("Created")
    if el.get("Granularity") in GRANULARITIES:
        fields["granularity"] = el.get("Granularity")
    else:
        fields["granularity"] = {"bbox": "bbox", "ellipse": "ellipse"}.get(kind, "polygon")
    if el.get("ObjectType") in ("annotation", "detection"):
        fields["object_type"] = el.get("ObjectType")
    own = _from_hex(el.get("Color"))
    if el.get("HasColor") != "false" and own is not None and own != group_colors.get(label):
        fields["color"] = own
    if el.get("Properties"):
        try:
            props = json.loads(el.get("Properties", ""), parse_constant=nonfinite)
        except (json.JSONDecodeError, RecursionError):
            props = None
        if isinstance(props, dict) and is_jsonable(props):
            fields["properties"] = props
        else:
            warn.append("Properties attribute is not a JSON object; dropped")
    if kind == "ellipse":
        try:
            ell = tuple(_asap_float(v) for v in el.get("Ellipse", "").split())
        except Skip:
            ell = ()
        if len(ell) == 5 and ell[2] > 0 and ell[3] > 0:
            fields["ellipse"] = ell
        else:
            warn.append("ellipse parameters missing or invalid; read as a polygon")
            kind = "polygon"
    if kind != "point" and len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if kind == "bbox" and len(ring) != 4:
        kind = "polygon"
    try:
        return Annotation(kind=kind, coords=ring, **fields), None, ring
    except ValueError as exc:
        raise Skip(str(exc)) from None


def read_asap_xml(path: PathLike) -> AnnotationFile:
    """Read an ASAP XML annotation file, loading every valid annotation.

    Types Polygon, Rectangle, Dot, PointSet and Spline (as a polygon through
    its control points) are read; ``PartOfGroup`` is the class. Problems are
    reported as ``"feature <index>: ..."`` with the index of the
    ``Annotation`` element.

    Raises
    ------
    AnnotationError
        If the file cannot be read, is too large or is not ASAP XML.
    """
    path = Path(path)
    data = read_limited(path)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise AnnotationError(f"{path}: not valid XML ({exc})") from None
    if root.tag != "ASAP_Annotations":
        raise AnnotationError(f"{path}: root element must be ASAP_Annotations, got {root.tag!r}")
    group_colors = {}
    for g in root.iter("Group"):
        rgb = _from_hex(g.get("Color"))
        if g.get("Name") and rgb is not None:
            group_colors[g.get("Name", "")] = rgb
    result = AnnotationFile()
    holes: dict[str, list[np.ndarray]] = {}
    elements = root.findall("./Annotations/Annotation")
    if not elements:
        result.problems.append("file: no annotations")
    for idx, el in enumerate(elements):
        warn: list[str] = []
        try:
            ann, hole_of, ring = _asap_annotation(el, group_colors, warn)
        except Skip as exc:
            result.problems.append(f"feature {idx}: skipped: {exc}")
            continue
        finally:
            result.problems.extend(f"feature {idx}: warning: {w}" for w in warn)
        if ann is None:
            if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
                ring = ring[:-1]
            holes.setdefault(str(hole_of), []).append(ring)
        else:
            result.annotations.append(ann)
    for k, ann in enumerate(result.annotations):
        if ann.id in holes and ann.kind == "polygon":
            try:
                result.annotations[k] = ann.replace(holes=tuple(holes.pop(ann.id)))
            except ValueError as exc:
                result.problems.append(f"annotation {ann.id}: warning: holes dropped ({exc})")
    for parent in holes:
        result.problems.append(f"annotation {parent}: warning: holes without a polygon; dropped")
    return result
