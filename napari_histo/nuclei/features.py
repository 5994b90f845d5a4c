"""Per-nucleus measurements and their export (CSV, QuPath-style GeoJSON detections).

Works on instance labels from :mod:`napari_histo.nuclei.classical`; positions are level-0
pixel coordinates (a pixel x covers [x, x + 1)) and µm.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import approximate_polygon, find_contours, regionprops_table

from napari_histo._atomic import atomic_write_text
from napari_histo.nuclei._common import _check_labels, _check_mpp, _check_rgb
from napari_histo.nuclei.classical import NUCLEUS_COLOR, haematoxylin

__all__ = ["measure_nuclei", "nuclei_to_geojson_features", "read_nuclei_csv", "write_nuclei_csv"]


def measure_nuclei(
    labels: np.ndarray,
    rgb: np.ndarray,
    mpp: float,
    *,
    origin_l0: tuple[float, float] = (0, 0),
    downsample: float = 1.0,
    tumor_probability: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Per-nucleus measurements in physical units.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Instance labels, 0 = background.
    rgb : ndarray of uint8, shape (H, W, 3)
        The pixels the labels were segmented from.
    mpp : float
        µm per pixel of `labels`.
    origin_l0 : (x, y)
        Level-0 pixel position of the top-left corner of `labels`.
    downsample : float
        Size of a `labels` pixel in level-0 pixels.
    tumor_probability : callable, optional
        Maps level-0 centroids, float array (N, 2) of (x, y), to N tumour
        probabilities; adds a ``tumor_probability`` column.

    Returns
    -------
    dict of str to ndarray (N,)
        ``id``; ``centroid_x_um``, ``centroid_y_um`` (slide frame, µm from the
        level-0 origin, pixel ``x`` covering ``[x, x + 1)``); ``area_um2``;
        ``eccentricity`` (0 for a disk); ``solidity`` (1 for a convex
        nucleus); ``mean_haematoxylin`` (rgb2hed units); ``tumor_probability``
        when asked for. Rows sorted by id.
    """
    rgb = _check_rgb(rgb)
    labels = _check_labels(labels, rgb.shape[:2])
    mpp = _check_mpp(mpp)
    downsample = _check_mpp(downsample, "downsample")
    h, _ = haematoxylin(rgb)
    props = regionprops_table(
        labels.astype(np.int64),
        intensity_image=h,
        properties=("label", "centroid", "area", "eccentricity", "solidity", "intensity_mean"),
    )
    xy_l0 = _to_l0(
        np.column_stack([props["centroid-1"], props["centroid-0"]]), origin_l0, downsample
    )
    mpp_l0 = mpp / downsample
    table = {
        "id": props["label"].astype(np.int64),
        "centroid_x_um": xy_l0[:, 0] * mpp_l0,
        "centroid_y_um": xy_l0[:, 1] * mpp_l0,
        "area_um2": props["area"].astype(np.float64) * mpp**2,
        "eccentricity": props["eccentricity"].astype(np.float64),
        "solidity": props["solidity"].astype(np.float64),
        "mean_haematoxylin": props["intensity_mean"].astype(np.float64),
    }
    if tumor_probability is not None:
        prob = np.asarray(tumor_probability(xy_l0), dtype=np.float64).reshape(-1)
        if prob.shape != (len(xy_l0),):
            raise ValueError(
                f"`tumor_probability` must return {len(xy_l0)} values, got shape {prob.shape}"
            )
        table["tumor_probability"] = prob
    return table


def _to_l0(xy_px: np.ndarray, origin_l0: tuple[float, float], downsample: float) -> np.ndarray:
    """Pixel-centre coordinates of a `labels` array to continuous level-0 (x, y)."""
    ox, oy = (float(v) for v in origin_l0)
    return np.column_stack(
        [ox + (xy_px[:, 0] + 0.5) * downsample, oy + (xy_px[:, 1] + 0.5) * downsample]
    ).reshape(-1, 2)


def write_nuclei_csv(path: str | os.PathLike[str], table: dict[str, np.ndarray]) -> Path:
    """Write a measurement table as CSV, atomically (temporary file, then rename).

    Parameters
    ----------
    path : str or PathLike
        Destination; replaced if it exists.
    table : dict of str to ndarray (N,)
        Columns, e.g. from :func:`measure_nuclei`.

    Returns
    -------
    Path
    """
    path = Path(path)
    columns = list(table)
    arrays = [np.asarray(table[c]).reshape(-1) for c in columns]
    if len({len(a) for a in arrays}) > 1:
        lengths = {c: len(a) for c, a in zip(columns, arrays, strict=True)}
        raise ValueError(f"`table` columns must have equal lengths, got {lengths}")
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in zip(*(a.tolist() for a in arrays), strict=True):
        writer.writerow([repr(v) if isinstance(v, float) else v for v in row])
    return atomic_write_text(path, buffer.getvalue(), backups=0)


def read_nuclei_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a table written by :func:`write_nuclei_csv` (``id`` as int64, rest float64)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"`path` {path} holds no CSV header")
    columns, data = rows[0], rows[1:]
    table = {}
    for i, name in enumerate(columns):
        dtype = np.int64 if name == "id" else np.float64
        table[name] = np.array([row[i] for row in data], dtype=dtype)
    return table


def nuclei_to_geojson_features(
    labels: np.ndarray,
    table: dict[str, np.ndarray] | None = None,
    origin_l0: tuple[float, float] = (0, 0),
    downsample: float = 1.0,
) -> list[dict]:
    """QuPath-style GeoJSON detection features, one polygon per nucleus.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Instance labels.
    table : dict of str to ndarray, optional
        Measurements with an ``id`` column; each nucleus's row becomes its
        ``measurements``.
    origin_l0 : (x, y)
        Level-0 pixel position of the top-left corner of `labels`.
    downsample : float
        Size of a `labels` pixel in level-0 pixels.

    Returns
    -------
    list of dict
        Features with a ``Polygon`` geometry in level-0 pixel coordinates
        (outline through the pixel edges' midpoints, ring closed) and
        ``properties`` ``objectType: "detection"``, ``classification``
        ``{"name": "Nucleus", "color": [r, g, b]}`` and ``measurements``.
    """
    labels = _check_labels(labels)
    downsample = _check_mpp(downsample, "downsample")
    rows: dict[int, int] = {}
    if table is not None:
        rows = {int(v): i for i, v in enumerate(np.asarray(table["id"]))}
    features = []
    for index, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        label = index + 1
        mask = np.pad(labels[box] == label, 1)
        contours = find_contours(mask.astype(np.float32), 0.5)
        if not contours:
            continue
        ring = approximate_polygon(max(contours, key=len), tolerance=0.5)
        if len(ring) < 4:
            continue
        yx = ring + np.array([box[0].start - 1, box[1].start - 1])
        xy = _to_l0(yx[:, ::-1], origin_l0, downsample)
        coords = [[round(float(x), 2), round(float(y), 2)] for x, y in xy]
        coords[-1] = coords[0]
        measurements: dict[str, float] = {}
        if label in rows:
            i = rows[label]
            measurements = {k: float(np.asarray(v)[i]) for k, v in table.items() if k != "id"}
        features.append(
            {
                "type": "Feature",
                "id": f"nucleus-{label}",
                "geometry": {"type": "Polygon", "coordinates": [coords]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": "Nucleus", "color": list(NUCLEUS_COLOR)},
                    "measurements": measurements,
                },
            }
        )
    return features
