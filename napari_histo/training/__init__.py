"""Training: patch sampling, augmentation, losses and the training loop (no Qt).

Names load lazily (``lazy_loader``): the Retrain dock reads label granularities
and annotations from here without importing torch into the viewer process.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "augment": ["augment_batch"],
        "data": ["PatchSet", "sample_patches"],
        "losses": ["segmentation_loss"],
        "progress": ["TrainProgress"],
        "trainer": ["train_model"],
    },
)
