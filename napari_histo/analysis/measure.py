"""Slide measurements: tissue and tumor areas, tumor burden, lesions, nuclei density.

Plain functions over arrays with explicit units (µm per px in, mm and mm² out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ITC_MAX_MM",
    "MICRO_MAX_MM",
    "Lesion",
    "SlideMeasurements",
]

#: CAMELYON size classes by longest diameter: isolated tumor cells (ITC) up to
#: 0.2 mm, micrometastasis up to 2 mm, macrometastasis above.
ITC_MAX_MM = 0.2
MICRO_MAX_MM = 2.0


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
        Largest Feret diameter in mm.
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
