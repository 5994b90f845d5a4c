"""Model versions: where fine-tuned versions go and which version of each model is active.

Shipped models live in :func:`~napari_histo.models.default_models_dir` and are
never written; fine-tuned versions go to :func:`user_models_dir`
(``$NAPARI_HISTO_MODELS``, else ``models`` in the user data folder). Which
version of each model the inference widget runs is a persisted choice
(``versions.json`` beside the live settings, see
:func:`napari_histo.paths.config_dir`); a model without a choice runs its
newest version.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from napari_histo.models.catalog import iter_cards
from napari_histo.models.registry import SEGMENTATION
from napari_histo.paths import MODELS_ENV, config_dir, default_models_dir, user_models_dir

__all__ = [
    "MODELS_ENV",
    "ModelVersion",
    "active_cards",
    "active_versions",
    "all_versions",
    "model_dirs",
    "next_version",
    "set_active_version",
    "taken_versions",
    "user_models_dir",
    "versions_path",
]


@dataclass(frozen=True)
class ModelVersion:
    """One version of one model: its card and where it came from."""

    name: str
    version: str
    parent_version: str | None
    card_path: Path
    created: str
    metrics: dict[str, float]


def model_dirs() -> list[Path]:
    """The shipped models folder, then the user's (once each)."""
    dirs = [default_models_dir(), user_models_dir()]
    return [d for i, d in enumerate(dirs) if d.resolve() not in {e.resolve() for e in dirs[:i]}]


def versions_path() -> Path:
    """``versions.json`` in the settings folder, beside ``live.json``."""
    return config_dir() / "versions.json"


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts)


def all_versions(
    dirs: Sequence[str | os.PathLike[str]] | None = None, task: str | None = SEGMENTATION
) -> dict[str, list[ModelVersion]]:
    """Every readable version of every model of `task` in `dirs`, oldest first.

    Parameters
    ----------
    dirs : sequence of path, optional
        Folders of model cards; default :func:`model_dirs`. A version found in
        two folders is listed once (the first).
    task : str or None, default "segmentation"
        Keep cards of this task (tumour-ensemble members); None keeps all.

    Returns
    -------
    dict of str to list of ModelVersion
        Model name → versions, sorted naturally ("1.10" after "1.9").
    """
    found: dict[str, dict[str, ModelVersion]] = {}
    for directory in model_dirs() if dirs is None else [Path(d) for d in dirs]:
        for path, card in iter_cards(directory, task):
            entry = ModelVersion(
                card.name, card.version, card.parent_version, path, card.created,
                dict(card.metrics),
            )  # fmt: skip
            found.setdefault(card.name, {}).setdefault(card.version, entry)
    return {
        name: sorted(by_version.values(), key=lambda v: (_version_key(v.version), v.created))
        for name, by_version in sorted(found.items())
    }


def active_versions(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """The persisted choices, model name → version (empty when none or unreadable)."""
    path = Path(path) if path is not None else versions_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        warnings.warn(f"{path}: ignoring unreadable model versions ({err})", UserWarning, 2)
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}


def set_active_version(
    name: str, version: str | None, path: str | os.PathLike[str] | None = None
) -> Path:
    """Persist that model `name` runs `version` (None: its newest); atomic write.

    Raises
    ------
    ValueError
        If no card of `name` at `version` is found in :func:`model_dirs`.
    """
    if version is not None:
        known = [v.version for v in all_versions().get(name, [])]
        if version not in known:
            raise ValueError(
                f"no version {version!r} of model {name!r}; available: {', '.join(known) or 'none'}"
            )
    path = Path(path) if path is not None else versions_path()
    choices = active_versions(path)
    if version is None:
        choices.pop(name, None)
    else:
        choices[name] = version
    path.parent.mkdir(parents=True, exist_ok=True)
    from napari_histo._atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(choices, indent=2, sort_keys=True), backups=0)


def active_cards(models_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Model name → card path of the version to run.

    With `models_dir`, the newest version in that folder (no persisted choice
    applies). Otherwise the persisted choice of each model (see
    :func:`set_active_version`) among :func:`model_dirs`, else its newest version.
    """
    if models_dir is not None:
        from napari_histo.models import latest_cards

        return latest_cards(models_dir)
    chosen = active_versions()
    out = {}
    for name, versions in all_versions().items():
        pick = next((v for v in versions if v.version == chosen.get(name)), versions[-1])
        out[name] = pick.card_path
    return out


def next_version(version: str, taken: set[str]) -> str:
    """The next free version: last number bumped (``"1.0"`` → ``"1.1"``), else ``".1"`` added.

    Examples
    --------
    >>> next_version("1.0", set()), next_version("1.0", {"1.1"}), next_version("v", set())
    ('1.1', '1.2', 'v.1')
    """
    match = re.fullmatch(r"(.*?)(\d+)", version)
    prefix, number = (match.group(1), int(match.group(2))) if match else (version + ".", 0)
    candidate = f"{prefix}{number + 1}"
    while candidate in taken:
        number += 1
        candidate = f"{prefix}{number + 1}"
    return candidate


def taken_versions(name: str, directories: Sequence[Path]) -> set[str]:
    """Versions of model `name` that have a card or weights file in any of `directories`."""
    taken = set()
    for directory in directories:
        for path in directory.glob(f"{name}-*"):
            stem = path.name.split(".json")[0].split(".safetensors")[0]
            taken.add(stem[len(name) + 1 :])
    return taken
