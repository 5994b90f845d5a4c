"""Segmentation models: architectures, registry, model cards and safe weights loading.

Pure torch (no torchvision, timm or hub); nothing here downloads anything.
Weights are ``.safetensors`` files described by a JSON :class:`ModelCard`;
TorchScript files are accepted for bring-your-own models; pickles are refused.
"""

# Importing the architectures registers them.
from napari_histo.models.architectures import DeepLabV3Plus, DenseUNet, ResUNet
from napari_histo.models.card import ModelCard, read_card, write_card
from napari_histo.models.hovernet import HoverNet
from napari_histo.models.registry import (
    TORCHSCRIPT,
    architecture_defaults,
    architecture_task,
    available_architectures,
    build_model,
    register_architecture,
)
from napari_histo.models.weights import (
    LoadedModel,
    default_models_dir,
    iter_cards,
    latest_cards,
    list_cards,
    load_model,
    save_model,
    select_cards,
    sha256_file,
)

__all__ = [
    "TORCHSCRIPT",
    "DeepLabV3Plus",
    "DenseUNet",
    "HoverNet",
    "LoadedModel",
    "ModelCard",
    "ResUNet",
    "architecture_defaults",
    "architecture_task",
    "available_architectures",
    "build_model",
    "default_models_dir",
    "iter_cards",
    "latest_cards",
    "list_cards",
    "load_model",
    "read_card",
    "register_architecture",
    "save_model",
    "select_cards",
    "sha256_file",
    "write_card",
]
