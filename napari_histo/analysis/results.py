"""What a slide measurement produces: lesions and the slide's row of figures.

The dataclasses of :mod:`napari_histo.analysis.measure` (which re-exports
them), kept apart so that reports, exports and docks can use them without the
measuring code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ITC_MAX_MM", "MICRO_MAX_MM", "MIN_LESION_UM2", "Lesion", "SlideMeasurements"]

#: CAMELYON size classes by longest diameter: isolated tumor cells (ITC) up to
#: 0.2 mm, micrometastasis up to 2 mm, macrometastasis above.
ITC_MAX_MM = 0.2
MICRO_MAX_MM = 2.0
#: Smallest lesion a slide measurement counts, µm²: about one tumor cell. Smaller
#: specks above the threshold are noise of the probability map, not lesions.
MIN_LESION_UM2 = 100.0


@dataclass(frozen=True)
class Lesion:
    """One connected tumor component at the measurement threshold.

    Attributes
    ----------
    label : int
        1-based index, lesions sorted by decreasing area.
    area_mm2 : float
        Area in mm².
    longest_diameter_mm : float
        Largest Feret diameter in mm, between pixel corners (see :func:`find_lesions`).
    mean_probability : float
        Mean tumor probability over the lesion's pixels.
    mean_epistemic : float or None
        Mean epistemic uncertainty over the lesion, None when not measured.
    size_class : str
        "ITC", "micro" or "macro" (see :data:`ITC_MAX_MM`, :data:`MICRO_MAX_MM`).
    bbox_l0 : (int, int, int, int)
        Level-0 ``(x, y, w, h)`` of the lesion's bounding box.
    outline_l0 : ndarray of float, shape (n, 2)
        Outer boundary as level-0 ``(x, y)`` vertices (closed implicitly).
    """

    label: int
    area_mm2: float
    longest_diameter_mm: float
    mean_probability: float
    mean_epistemic: float | None
    size_class: str
    bbox_l0: tuple[int, int, int, int]
    outline_l0: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields, without the outline; ``bbox_l0`` as a list, NaN as None."""
        return {
            "label": int(self.label),
            "area_mm2": _json_float(self.area_mm2),
            "longest_diameter_mm": _json_float(self.longest_diameter_mm),
            "mean_probability": _json_float(self.mean_probability),
            "mean_epistemic": _json_float(self.mean_epistemic),
            "size_class": self.size_class,
            "bbox_l0": [int(v) for v in self.bbox_l0],
        }


@dataclass(frozen=True)
class SlideMeasurements:
    """What one slide's result measures (one row of a cohort CSV, see :meth:`row`).

    Attributes
    ----------
    slide : str
        Slide file name.
    mpp_um : float
        µm per px of the grid the measurements were made on.
    threshold : float
        Tumor probability threshold of tumor pixels and lesions.
    tissue_area_mm2, tumor_area_mm2, tumor_bed_area_mm2 : float
        Areas in mm²; the tumor bed is the convex hull of tumor ∩ tissue,
        intersected with tissue.
    tumor_burden : float
        Viable tumor area / tumor bed area in [0, 1]; NaN without tumor.
    lesions : tuple of Lesion
        Sorted by decreasing area.
    size_class : str
        Slide CAMELYON class: "negative", "ITC", "micro" or "macro" (its largest lesion's).
    nuclei_tumor, nuclei_non_tumor : int or None
        Nuclei counted in tumor and in non-tumor tissue; None when nuclei did not run.
    nuclei_density_tumor, nuclei_density_non_tumor : float or None
        Nuclei per mm² of tumor and of non-tumor tissue.
    """

    slide: str
    mpp_um: float
    threshold: float
    tissue_area_mm2: float
    tumor_area_mm2: float
    tumor_bed_area_mm2: float
    tumor_burden: float
    lesions: tuple[Lesion, ...]
    size_class: str
    nuclei_tumor: int | None = None
    nuclei_non_tumor: int | None = None
    nuclei_density_tumor: float | None = None
    nuclei_density_non_tumor: float | None = None

    def row(self) -> dict[str, str | float | int]:
        """One flat CSV row: str, float and int values only.

        Keys: ``slide, mpp_um, threshold, tissue_area_mm2, tumor_area_mm2,
        tumor_bed_area_mm2, tumor_burden, lesion_count, largest_lesion_mm`` (0
        without lesions), ``size_class, itc_count, micro_count, macro_count,
        nuclei_tumor, nuclei_non_tumor, nuclei_density_tumor,
        nuclei_density_non_tumor`` (the nuclei fields are "" when nuclei did not
        run). A NaN (tumor burden without tumor) stays a float NaN.
        """
        classes = [lesion.size_class for lesion in self.lesions]
        largest = max((lesion.longest_diameter_mm for lesion in self.lesions), default=0.0)
        row: dict[str, str | float | int] = {
            "slide": self.slide,
            "mpp_um": float(self.mpp_um),
            "threshold": float(self.threshold),
            "tissue_area_mm2": float(self.tissue_area_mm2),
            "tumor_area_mm2": float(self.tumor_area_mm2),
            "tumor_bed_area_mm2": float(self.tumor_bed_area_mm2),
            "tumor_burden": float(self.tumor_burden),
            "lesion_count": len(self.lesions),
            "largest_lesion_mm": float(largest),
            "size_class": self.size_class,
            "itc_count": classes.count("ITC"),
            "micro_count": classes.count("micro"),
            "macro_count": classes.count("macro"),
        }
        for name in _NUCLEI_FIELDS:
            value = getattr(self, name)
            row[name] = (
                "" if value is None else (int(value) if "density" not in name else float(value))
            )
        return row

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-able: lesions as :meth:`Lesion.to_dict` (no outlines), NaN as None."""
        return {
            "slide": self.slide,
            "mpp_um": float(self.mpp_um),
            "threshold": float(self.threshold),
            "tissue_area_mm2": _json_float(self.tissue_area_mm2),
            "tumor_area_mm2": _json_float(self.tumor_area_mm2),
            "tumor_bed_area_mm2": _json_float(self.tumor_bed_area_mm2),
            "tumor_burden": _json_float(self.tumor_burden),
            "lesions": [lesion.to_dict() for lesion in self.lesions],
            "size_class": self.size_class,
            "nuclei_tumor": None if self.nuclei_tumor is None else int(self.nuclei_tumor),
            "nuclei_non_tumor": (
                None if self.nuclei_non_tumor is None else int(self.nuclei_non_tumor)
            ),
            "nuclei_density_tumor": _json_float(self.nuclei_density_tumor),
            "nuclei_density_non_tumor": _json_float(self.nuclei_density_non_tumor),
        }


_NUCLEI_FIELDS = (
    "nuclei_tumor",
    "nuclei_non_tumor",
    "nuclei_density_tumor",
    "nuclei_density_non_tumor",
)


def _json_float(value: float | None) -> float | None:
    """`value` as a float, None for None and NaN (strict JSON has no NaN)."""
    if value is None or math.isnan(value):
        return None
    return float(value)
