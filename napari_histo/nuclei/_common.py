"""Input checks shared by the nuclei modules (classical, learned, features, store, export)."""

from __future__ import annotations

import math

import numpy as np

from napari_histo.frames import check_region_l0

#: Segmentation backends of :func:`napari_histo.nuclei.classical.segment_nuclei`.
METHODS = ("classical", "learned")


def _check_rgb(rgb: object) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"`rgb` must be a numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"`rgb` must have shape (H, W, 3), got {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise ValueError(f"`rgb` must be uint8, got {rgb.dtype}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"`rgb` must not be empty, got shape {rgb.shape}")
    return rgb


def _check_number(name: str, value: object, *, strict: bool = True) -> float:
    """`value` as a float when it is a finite number > 0 (>= 0 unless `strict`)."""
    ok = isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
    if ok and math.isfinite(float(value)) and (float(value) > 0 or (not strict and value == 0)):
        return float(value)
    raise ValueError(f"`{name}` must be a finite number {'>' if strict else '>='} 0, got {value!r}")


def _check_mpp(mpp: object, name: str = "mpp") -> float:
    return _check_number(name, mpp)


def _check_method(method: object) -> str:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    return str(method)


def _check_labels(labels: object, shape: tuple[int, ...] | None = None) -> np.ndarray:
    if not isinstance(labels, np.ndarray) or labels.ndim != 2:
        got = getattr(labels, "shape", type(labels).__name__)
        raise ValueError(f"`labels` must be a 2-D integer array, got {got}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`labels` must have an integer dtype, got {labels.dtype}")
    if shape is not None and labels.shape != shape:
        raise ValueError(f"`labels` shape {labels.shape} must equal `rgb` shape {shape}")
    return labels


def _check_region(region_l0: object, dims: tuple[int, int]) -> tuple[int, int, int, int]:
    return check_region_l0(region_l0, dims, name="region_l0")


def _check_int(name: str, value: object, minimum: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)
