"""Per-user folders (settings, fine-tuned models, cache) and the bundled models folder.

Each folder has an environment variable that overrides it (tests, shared
installs): ``$NAPARI_HISTO_CONFIG``, ``$NAPARI_HISTO_MODELS``,
``$NAPARI_HISTO_CACHE``. Otherwise the platform's user folders
(:mod:`platformdirs`) are used. Nothing here creates a folder.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "CONFIG_ENV",
    "MODELS_ENV",
    "cache_dir",
    "config_dir",
    "default_models_dir",
    "user_models_dir",
]

APP = "napari-histo"
#: Environment variable naming the settings folder (``live.json``, ``versions.json``).
CONFIG_ENV = "NAPARI_HISTO_CONFIG"
#: Environment variable naming the folder of fine-tuned model versions.
MODELS_ENV = "NAPARI_HISTO_MODELS"
#: Environment variable naming the cache folder (sample and benchmark slides).
CACHE_ENV = "NAPARI_HISTO_CACHE"


def config_dir() -> Path:
    """``$NAPARI_HISTO_CONFIG``, else the user config folder (may not exist yet)."""
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override)
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP, appauthor=False))


def user_models_dir() -> Path:
    """``$NAPARI_HISTO_MODELS``, else ``models`` in the user data folder (may not exist yet)."""
    override = os.environ.get(MODELS_ENV)
    if override:
        return Path(override)
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP, appauthor=False)) / "models"


def cache_dir() -> Path:
    """``$NAPARI_HISTO_CACHE``, else the user cache folder (may not exist yet)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP, appauthor=False))


def default_models_dir() -> Path:
    """Folder of the bundled default models (package data: ``napari_histo/resources/models``).

    Found through :mod:`importlib.resources`, so it is the same in a source
    checkout, an editable install and a wheel install. Never written at run time.
    """
    return Path(str(files("napari_histo") / "resources" / "models"))
