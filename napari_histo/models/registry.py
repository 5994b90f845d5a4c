"""Architecture registry: names in model cards → model classes.

A model card's ``architecture`` names a registered class and its ``config``
holds that class's keyword arguments, so a card plus a weights file is enough to
rebuild the model without pickling code.

Examples
--------
>>> from napari_histo.models import available_architectures, build_model
>>> available_architectures()
('deeplabv3plus', 'denseunet', 'resunet')
>>> model = build_model("resunet", {"width": 8, "depth": 3})
>>> model.hparams["width"]
8
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "architecture_defaults",
    "architecture_task",
    "available_architectures",
    "build_model",
    "register_architecture",
]

#: Name a model card uses for TorchScript models, which carry their own code.
TORCHSCRIPT = "torchscript"

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}

#: Task of the semantic-segmentation (tumour ensemble) architectures and of TorchScript.
SEGMENTATION = "segmentation"

#: Modules whose import registers the bundled architectures. They import torch,
#: so they load on the first call that needs a class, not with this module: listing
#: and reading model cards (the viewer's docks) stays torch-free.
_BUILTIN_MODULES = ("napari_histo.models.architectures", "napari_histo.models.hovernet")
#: Task of each bundled architecture, known before the modules above load
#: (a test checks it against what they register).
BUILTIN_TASKS = {
    "resunet": SEGMENTATION,
    "denseunet": SEGMENTATION,
    "deeplabv3plus": SEGMENTATION,
    "hovernet": "nuclei",
}

F = TypeVar("F", bound="Callable[..., nn.Module]")


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def register_architecture(name: str, *, task: str = SEGMENTATION) -> Callable[[F], F]:
    """Class decorator registering a model under `name`.

    Parameters
    ----------
    name : str
        Lower-case identifier (``[a-z][a-z0-9_]*``), unique, not ``"torchscript"``.
    task : str, default "segmentation"
        What the model does, same alphabet: ``"segmentation"`` (per-pixel class
        logits, usable as a tumour-ensemble member) or e.g. ``"nuclei"``.

    Returns
    -------
    callable
        The decorator; it returns the class unchanged.

    Raises
    ------
    ValueError
        If `name` is malformed, reserved, a bundled architecture's, or already
        names a different class.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"architecture `name` must match {_NAME.pattern}, got {name!r}")
    if name == TORCHSCRIPT:
        raise ValueError(f"architecture `name` {name!r} is reserved for TorchScript models")
    if not isinstance(task, str) or not _NAME.match(task):
        raise ValueError(f"architecture `task` must match {_NAME.pattern}, got {task!r}")

    def decorator(factory: F) -> F:
        if name in BUILTIN_TASKS and factory.__module__ not in _BUILTIN_MODULES:
            # The bundled classes register on first use, not at import: say it now,
            # not at that first use.
            raise ValueError(f"architecture {name!r} is the name of a bundled architecture")
        known = _REGISTRY.get(name)
        if known is not None and known is not factory:
            raise ValueError(f"architecture {name!r} is already registered to {known.__qualname__}")
        _REGISTRY[name] = factory
        _TASKS[name] = task
        return factory

    return decorator


def available_architectures(task: str | None = SEGMENTATION) -> tuple[str, ...]:
    """Registered architecture names of `task` (all tasks when None), sorted.

    The default lists the segmentation networks that can be tumour-ensemble
    members; ``available_architectures("nuclei")`` gives ``('hovernet',)``.
    """
    _load_builtins()
    return tuple(sorted(k for k in _REGISTRY if task is None or _TASKS[k] == task))


def architecture_task(architecture: str) -> str:
    """Task of a registered architecture; ``"segmentation"`` for TorchScript or unknown names.

    Examples
    --------
    >>> architecture_task("resunet")
    'segmentation'
    """
    if architecture in _TASKS:
        return _TASKS[architecture]
    return BUILTIN_TASKS.get(architecture, SEGMENTATION)


def _factory(architecture: str) -> Callable[..., nn.Module]:
    _load_builtins()
    try:
        return _REGISTRY[architecture]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown `architecture` {architecture!r}; choose one of: "
            f"{', '.join(available_architectures())}{_other_tasks()}"
        ) from None


def _other_tasks() -> str:
    """``"; nuclei: hovernet"``-style list of the non-segmentation architectures."""
    tasks = sorted({t for t in _TASKS.values() if t != SEGMENTATION})
    return "".join(f"; {t}: {', '.join(available_architectures(t))}" for t in tasks)


def architecture_defaults(architecture: str) -> dict[str, Any]:
    """Config keys accepted by `architecture` and their default values.

    Raises
    ------
    ValueError
        If `architecture` is not registered.
    """
    params = inspect.signature(_factory(architecture)).parameters
    return {
        key: p.default
        for key, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_model(architecture: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """Instantiate a registered architecture with freshly initialised weights.

    Parameters
    ----------
    architecture : str
        A name from :func:`available_architectures`.
    config : mapping of str to JSON value, optional
        Constructor keyword arguments (e.g. ``{"num_classes": 2, "width": 16}``);
        missing keys take the defaults.

    Returns
    -------
    torch.nn.Module
        The model, in training mode, on the CPU.

    Raises
    ------
    ValueError
        If `architecture` is unknown (the message lists the choices), a config key
        is not accepted (the message names it), or a value is out of range.
    """
    factory = _factory(architecture)
    config = {} if config is None else config
    if not isinstance(config, Mapping):
        raise ValueError(f"`config` must be a mapping, got {type(config).__name__}")
    accepted = architecture_defaults(architecture)
    for key in config:
        if key not in accepted:
            raise ValueError(
                f"unknown config key {key!r} for architecture {architecture!r}; "
                f"accepted keys: {', '.join(accepted)}"
            )
    return factory(**config)
