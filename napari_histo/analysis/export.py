"""Export a slide's measured lesions as QuPath GeoJSON and its results as OME-Zarr.

- :func:`lesions_geojson` / :func:`write_lesions_geojson`: one QuPath annotation
  per lesion (level-0 px polygon, class "Tumor", its measurements);
- :func:`write_ome_zarr`: a complete run's result arrays as one standalone
  OME-NGFF 0.4 multiscale image (zarr v2), axes ``c, y, x``, that ome-zarr-py,
  QuPath and napari-ome-zarr read.

Every file is written atomically: a temporary file or folder beside the
destination, renamed into place when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo import __version__
from napari_histo._atomic import atomic_write_text
from napari_histo.analysis.results import Lesion, SlideMeasurements
from napari_histo.errors import ExportError
from napari_histo.io.store import RESULT_ARRAYS, ResultRun, multiscales_metadata

__all__ = [
    "COPY_BLOCK_PX",
    "OME_ARRAYS",
    "TUMOR_CLASS",
    "TUMOR_COLOR",
    "lesion_feature",
    "lesions_geojson",
    "write_lesions_geojson",
    "write_ome_zarr",
]

PathLike = str | os.PathLike[str]

#: QuPath's built-in tumour class name and the project's tumour colour (RGB).
TUMOR_CLASS = "Tumor"
TUMOR_COLOR = (200, 0, 0)
#: Result arrays written by :func:`write_ome_zarr` by default (its channels, in order).
OME_ARRAYS = ("probability", "epistemic", "aleatoric", "entropy")
#: Side of the blocks copied at a time into the OME-Zarr image, px (4 MiB float32).
COPY_BLOCK_PX = 1024
#: Chunk side of the OME-Zarr arrays, px.
OME_CHUNK_PX = 512
#: Display colours of the OME-Zarr channels (hex RGB, by array name).
CHANNEL_COLORS = {
    "probability": "FF0000",
    "epistemic": "FF00FF",
    "aleatoric": "00FFFF",
    "entropy": "FFFF00",
}


# -- GeoJSON --------------------------------------------------------------------------
def _ring(lesion: Lesion) -> list[list[float]]:
    """Closed level-0 ``[x, y]`` ring of `lesion`: its outline, else its bounding box."""
    outline = np.asarray(lesion.outline_l0, dtype=np.float64).reshape(-1, 2)
    if len(outline) > 1 and np.array_equal(outline[0], outline[-1]):
        outline = outline[:-1]
    if len(np.unique(outline, axis=0)) < 3 or not np.isfinite(outline).all():
        x, y, w, h = lesion.bbox_l0
        outline = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
    ring = outline.tolist()
    ring.append(ring[0])
    return ring


def _measurements(lesion: Lesion) -> dict[str, float]:
    """QuPath measurement list (name → number) of `lesion`; None or NaN values left out."""
    values = {
        "Area mm²": lesion.area_mm2,
        "Longest diameter mm": lesion.longest_diameter_mm,
        "Mean probability": lesion.mean_probability,
        "Mean epistemic": lesion.mean_epistemic,
    }
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def lesion_feature(lesion: Lesion, slide: str = "") -> dict[str, Any]:
    """One lesion as a QuPath annotation GeoJSON Feature (level-0 px).

    Parameters
    ----------
    lesion : Lesion
        The lesion; its outline (else its bounding box) becomes the polygon.
    slide : str
        Slide name, only to make the feature's id stable per slide and lesion.

    Returns
    -------
    dict
        A GeoJSON Feature with QuPath's ``objectType``, ``classification``,
        ``name`` and ``measurements`` properties.
    """
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"napari-histo/{slide}/lesion/{lesion.label}")),
        "geometry": {"type": "Polygon", "coordinates": [_ring(lesion)]},
        "properties": {
            "objectType": "annotation",
            "classification": {"name": TUMOR_CLASS, "color": list(TUMOR_COLOR)},
            "name": f"Lesion {lesion.label} ({lesion.size_class})",
            "measurements": _measurements(lesion),
        },
    }


def lesions_geojson(measurements: SlideMeasurements) -> str:
    """GeoJSON FeatureCollection text of the lesions of `measurements`.

    QuPath (≥ 0.4) imports it as one "Tumor" annotation per lesion, named
    ``"Lesion N (class)"``, with measurements Area mm², Longest diameter mm,
    Mean probability and Mean epistemic (when measured). Coordinates are
    level-0 px ``(x, y)``.
    """
    features = [lesion_feature(lesion, measurements.slide) for lesion in measurements.lesions]
    doc = {"type": "FeatureCollection", "features": features}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def write_lesions_geojson(path: PathLike, measurements: SlideMeasurements) -> Path:
    """Write :func:`lesions_geojson` of `measurements` to `path` atomically.

    Parameters
    ----------
    path : str or PathLike
        Destination (``.geojson``); replaced if it exists.
    measurements : SlideMeasurements
        The slide's measurements.

    Returns
    -------
    Path
        `path`.

    Raises
    ------
    ExportError
        When `path` cannot be written (message names it).
    """
    path = Path(path)
    text = lesions_geojson(measurements)
    try:
        return atomic_write_text(path, text, backups=0)
    except OSError as err:
        raise ExportError(f"{path}: cannot write lesions ({err.strerror or err})") from err


# -- OME-Zarr -------------------------------------------------------------------------
def _ome_multiscales(run: ResultRun, name: str, levels: int) -> list[dict[str, Any]]:
    """NGFF 0.4 ``multiscales`` of the image: the store's y/x transforms with a ``c`` axis."""
    meta = multiscales_metadata(name, run.geometry, levels)[0]
    meta["axes"] = [{"name": "c", "type": "channel"}, *meta["axes"]]
    for dataset in meta["datasets"]:
        scale, translation = dataset["coordinateTransformations"]
        scale["scale"] = [1.0, *scale["scale"]]
        translation["translation"] = [0.0, *translation["translation"]]
    meta["type"] = "mean"  # each level the 2x2 mean of the one before
    meta["metadata"] = {"software": f"napari-histo {__version__}", "run_id": run.run_id}
    return [meta]


def _omero(arrays: Sequence[str], coarsest: Sequence[np.ndarray]) -> dict[str, Any]:
    """NGFF ``omero`` rendering metadata: a named, coloured channel per array."""
    channels = []
    for name, values in zip(arrays, coarsest, strict=True):
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size else 1.0
        top = max(top, 1e-6)
        channels.append(
            {
                "label": name,
                "color": CHANNEL_COLORS.get(name, "FFFFFF"),
                "active": name == arrays[0],
                "coefficient": 1.0,
                "family": "linear",
                "inverted": False,
                "window": {"min": 0.0, "max": top, "start": 0.0, "end": top},
            }
        )
    return {"version": "0.4", "channels": channels, "rdefs": {"model": "color"}}


def _copy_level(sources: Sequence[Any], target: Any, block_px: int) -> None:
    """Copy 2-D `sources` into channels of `target` block by block (bounded memory)."""
    height, width = target.shape[1:]
    for c, source in enumerate(sources):
        for y in range(0, height, block_px):
            for x in range(0, width, block_px):
                block = source[y : y + block_px, x : x + block_px]
                target[c, y : y + block_px, x : x + block_px] = np.asarray(block, np.float32)


def _check_arrays(run: ResultRun, arrays: Sequence[str]) -> list[str]:
    names = list(arrays)
    if not names:
        raise ValueError("`arrays` must name at least one result array")
    for name in names:
        if name not in RESULT_ARRAYS:
            raise ValueError(f"`arrays` must be among {RESULT_ARRAYS}, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"`arrays` has a repeated name: {names}")
    if not run.complete:
        raise ExportError(
            f"{run.store.path}: run {run.run_id} is {run.status}, not complete; finish it first"
        )
    return names


def _write_image(run: ResultRun, folder: Path, names: Sequence[str], block_px: int) -> None:
    import zarr

    pyramids = [run.levels(name) for name in names]
    count = min(len(levels) for levels in pyramids)
    root = zarr.open_group(folder, mode="w", zarr_format=2)
    for level in range(count):
        sources = [levels[level] for levels in pyramids]
        height, width = sources[0].shape
        target = root.create_array(
            str(level),
            shape=(len(names), height, width),
            chunks=(1, min(OME_CHUNK_PX, height), min(OME_CHUNK_PX, width)),
            dtype="float32",
            fill_value=0.0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        _copy_level(sources, target, block_px)
    coarsest = [np.asarray(levels[count - 1][...], np.float32) for levels in pyramids]
    root.attrs.update(
        {
            "multiscales": _ome_multiscales(run, f"{run.run_id} results", count),
            "omero": _omero(names, coarsest),
        }
    )


def _replace_dir(tmp: Path, path: Path) -> None:
    """Rename folder `tmp` to `path`; an existing folder at `path` is replaced."""
    if not path.exists():
        os.replace(tmp, path)
        return
    if not path.is_dir():
        raise ExportError(f"{path}: exists and is not a folder; choose another name")
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def write_ome_zarr(
    run: ResultRun,
    path: PathLike,
    *,
    arrays: Sequence[str] = OME_ARRAYS,
    block_px: int = COPY_BLOCK_PX,
) -> Path:
    """Write a complete run's results as a standalone OME-Zarr image (NGFF 0.4, zarr v2).

    One multiscale image with axes ``c, y, x``: a channel per name in `arrays`
    (float32, named in ``omero`` metadata), the run's 2× display pyramid as its
    levels. The scale is in µm (the result's µm/px; level-0 px of the slide when
    it has no mpp) and the translation places result pixel (0, 0) at the run's
    level-0 origin, so the image overlays the slide in µm. Levels are copied in
    ``block_px`` squares (memory stays bounded on whole slides) into a
    temporary folder beside `path`, renamed to `path` once complete.

    Parameters
    ----------
    run : ResultRun
        A complete tumor run of a result store.
    path : str or PathLike
        Destination folder (``.ome.zarr``); an existing one is replaced.
    arrays : sequence of str
        Result arrays to write, among :data:`~napari_histo.io.store.RESULT_ARRAYS`.
    block_px : int
        Side of the blocks copied at a time, px.

    Returns
    -------
    Path
        `path`.

    Raises
    ------
    ExportError
        The run is not complete, or `path` cannot be written.
    ValueError
        `arrays` is empty, repeats a name, or names an unknown array.
    """
    path = Path(path)
    names = _check_arrays(run, arrays)
    if block_px < 1:
        raise ValueError(f"`block_px` must be >= 1, got {block_px}")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _write_image(run, tmp, names, block_px)
        _replace_dir(tmp, path)
    except OSError as err:
        raise ExportError(f"{path}: cannot write OME-Zarr ({err.strerror or err})") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
