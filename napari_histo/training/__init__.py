"""Training: patch sampling, augmentation, losses and the training loop (no Qt)."""

from napari_histo.training.augment import augment_batch
from napari_histo.training.data import PatchSet, sample_patches
from napari_histo.training.losses import segmentation_loss
from napari_histo.training.trainer import TrainProgress, train_model

__all__ = [
    "PatchSet",
    "TrainProgress",
    "augment_batch",
    "sample_patches",
    "segmentation_loss",
    "train_model",
]
