"""Inference: ensemble + test-time augmentation with uncertainty, and the slide engine.

Only the ensemble API is re-exported here; import the engine from
:mod:`napari_histo.inference.engine` (it pulls in slide I/O and storage).
Names load lazily (``lazy_loader``): the viewer imports torch-free helpers of
this package (the slide's stain check) without torch, whose models run in the
worker process.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "ensemble": [
            "DIHEDRAL_IDS",
            "EnsembleOutput",
            "apply_dihedral",
            "ensemble_predict",
            "invert_dihedral",
            "tta_transforms",
        ]
    },
)
