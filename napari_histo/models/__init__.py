"""Segmentation models: architectures, registry, model cards and safe weights loading.

Pure torch (no torchvision, timm or hub); nothing here downloads anything.
Weights are ``.safetensors`` files described by a JSON :class:`ModelCard`;
TorchScript files are accepted for bring-your-own models; pickles are refused.

Names load lazily (``lazy_loader``, as in scikit-image): reading and listing
cards (``ModelCard``, ``read_card``, ``latest_cards``) does not import torch,
so the viewer process, whose models run in the worker, never does.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "architectures": ["DeepLabV3Plus", "DenseUNet", "ResUNet"],
        "card": ["ModelCard", "read_card", "write_card"],
        "catalog": [
            "default_models_dir",
            "iter_cards",
            "latest_cards",
            "list_cards",
            "select_cards",
        ],
        "hovernet": ["HoverNet"],
        "registry": [
            "TORCHSCRIPT",
            "architecture_defaults",
            "architecture_task",
            "available_architectures",
            "build_model",
            "register_architecture",
        ],
        "weights": ["LoadedModel", "load_model", "save_model", "sha256_file"],
    },
)
