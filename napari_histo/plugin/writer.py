"""napari writer contributions: Shapes and Labels layers → QuPath-style GeoJSON.

Both write level-0 pixel coordinates, like every annotation file of napari-histo.
A layer's data coordinates go to napari world coordinates with its ``scale``
and ``translate``; world µm go to level-0 px with the slide's µm per px:
``l0 = world / mpp + 0.5`` (see :mod:`napari_histo.frames`).

Where mpp comes from
--------------------
:func:`napari_histo.frames.layer_mpp`: ``layer.metadata["mpp_y"]``/``["mpp_x"]``,
else ``metadata["mpp"]`` (a number or ``(mpp_y, mpp_x)``); the layers
napari-histo makes carry it.
A layer without it is taken to be in level-0 pixels (mpp = 1: its world
coordinates are level-0 pixel centres), which is right for layers drawn over a
slide shown without physical scale.

Labels values become class names through ``metadata["classes"]`` (a list of
``{"name", "color"}``, as the annotation crop layer has) or the default classes
(1 tumor, 2 non-tumor, 255 ignore); any other value ``v`` is written with class
``"label v"`` (nuclei instances: one polygon per id).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from napari_histo.annotations.layers import shapes_to_annotations
from napari_histo.annotations.model import (
    DEFAULT_CLASSES,
    Annotation,
    AnnotationClass,
    class_index,
    mask_to_polygons,
)
from napari_histo.frames import data_to_world, layer_l0_transform, layer_mpp
from napari_histo.io.annotations import write_geojson

__all__ = ["labels_annotations", "shapes_annotations", "write_labels", "write_shapes"]


def _columns(features: Any) -> dict[str, list[Any]]:
    if features is None:
        return {}
    if hasattr(features, "to_dict"):  # pandas DataFrame
        return {str(k): list(v) for k, v in features.to_dict(orient="list").items()}
    return {str(k): list(v) for k, v in dict(features).items()}


def shapes_annotations(data: Sequence[Any], attributes: Mapping[str, Any]) -> list[Annotation]:
    """Level-0 annotations of Shapes layer `data` with napari layer `attributes`."""
    scale = attributes.get("scale") or (1.0, 1.0)
    translate = attributes.get("translate") or (0.0, 0.0)
    meta = attributes.get("metadata") or {}
    world = [data_to_world(d, scale, translate) for d in data]
    return shapes_to_annotations(
        world,
        list(attributes.get("shape_type") or ["polygon"] * len(world)),
        _columns(attributes.get("features")),
        layer_mpp(meta, default=(1.0, 1.0)),
        default_label=str(meta.get("default_label", "tumor")),
    )


def _classes(meta: Mapping[str, Any]) -> list[AnnotationClass]:
    items = meta.get("classes")
    if not items:
        return list(DEFAULT_CLASSES)
    return [AnnotationClass(str(c["name"]), tuple(c["color"])) for c in items]  # type: ignore[arg-type]


def labels_annotations(data: Any, attributes: Mapping[str, Any]) -> list[Annotation]:
    """Level-0 pixel annotations (polygons with holes) of Labels layer `data`."""
    if isinstance(data, list | tuple):  # multiscale: the full-resolution level
        data = data[0]
    labels = np.asarray(data)
    if labels.ndim != 2:
        raise ValueError(f"only 2-D labels can be written as GeoJSON, got shape {labels.shape}")
    meta = attributes.get("metadata") or {}
    mpp = layer_mpp(meta, default=(1.0, 1.0))
    origin, downsample = layer_l0_transform(
        attributes.get("scale") or (1.0, 1.0), attributes.get("translate") or (0.0, 0.0), mpp
    )
    names = {v: k for k, v in class_index(_classes(meta)).items()}
    author = str(meta.get("author", ""))
    out: list[Annotation] = []
    for value, box in enumerate(ndimage.find_objects(labels.astype(np.int64)), 1):
        if box is None:
            continue
        rs, cs = box
        sub_origin = (origin[0] + cs.start * downsample, origin[1] + rs.start * downsample)
        out.extend(
            mask_to_polygons(
                labels[box] == value, downsample, sub_origin,
                label=names.get(value, f"label {value}"), author=author,
            )
        )  # fmt: skip
    return out


def write_shapes(path: str | os.PathLike[str], data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: a Shapes layer → GeoJSON at `path` (atomic)."""
    return [str(write_geojson(path, shapes_annotations(data, attributes)))]


def write_labels(path: str | os.PathLike[str], data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: a 2-D Labels layer → GeoJSON polygons at `path` (atomic)."""
    return [str(write_geojson(path, labels_annotations(data, attributes)))]
