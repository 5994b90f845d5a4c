"""Inference: ensemble + test-time augmentation with uncertainty, and the slide engine.

Only the ensemble API is re-exported here; import the engine from
:mod:`napari_histo.inference.engine` (it pulls in slide I/O and storage).
"""

from napari_histo.inference.ensemble import (
    DIHEDRAL_IDS,
    EnsembleOutput,
    apply_dihedral,
    ensemble_predict,
    invert_dihedral,
    tta_transforms,
)

__all__ = [
    "DIHEDRAL_IDS",
    "EnsembleOutput",
    "apply_dihedral",
    "ensemble_predict",
    "invert_dihedral",
    "tta_transforms",
]
