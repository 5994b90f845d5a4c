"""Which model cards a folder holds: listing, reading, picking the newest version.

Torch-free on purpose: the viewer's docks list cards to fill their model menus,
and the viewer process should not pay for importing torch (about 1 s and 180 MB)
when every model runs in the worker process. Loading weights is
:mod:`napari_histo.models.weights`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from napari_histo.errors import WeightsError
from napari_histo.models.card import ModelCard, read_card
from napari_histo.models.registry import SEGMENTATION
from napari_histo.paths import default_models_dir

__all__ = [
    "default_models_dir",
    "iter_cards",
    "latest_cards",
    "list_cards",
    "select_cards",
]


def list_cards(directory: str | os.PathLike[str] | None = None) -> list[Path]:
    """Model cards (``*.json``) in `directory`, sorted by name.

    Parameters
    ----------
    directory : str or PathLike, optional
        Defaults to :func:`default_models_dir`. A missing folder holds no cards.

    Raises
    ------
    NotADirectoryError
        If `directory` exists and is not a folder.
    """
    directory = default_models_dir() if directory is None else Path(directory)
    if not directory.exists():
        return []
    if not directory.is_dir():
        raise NotADirectoryError(f"`directory` {str(directory)!r} is not a folder")
    return sorted(p for p in directory.glob("*.json") if p.is_file() and not p.name.startswith("."))


def iter_cards(
    directory: str | os.PathLike[str] | None = None, task: str | None = None
) -> Iterator[tuple[Path, ModelCard]]:
    """``(path, card)`` of each readable card of `task` (None: any) in `directory`.

    Unreadable cards are skipped with a UserWarning naming the file and the problem.
    """
    for path in list_cards(directory):
        try:
            card = read_card(path)
        except WeightsError as err:
            warnings.warn(f"skipping model card: {err}", UserWarning, stacklevel=3)
            continue
        if task is None or card.task == task:
            yield path, card


def select_cards(
    names: Sequence[str], available: Mapping[str, Path], where: str = ""
) -> list[Path]:
    """Card paths for `names`: card ``.json`` files, or model names in `available`.

    Raises
    ------
    ValueError
        For a name that is neither; the message ends with the choices. `where`
        (e.g. " in /models") is put after the name.
    """
    cards = []
    for name in names:
        path = Path(name)
        if path.suffix == ".json" and path.is_file():
            cards.append(path)
        elif name in available:
            cards.append(available[name])
        else:
            choices = ", ".join(available) or "none"
            raise ValueError(f"--members: no model {name!r}{where}; available: {choices}")
    return cards


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Natural sort key: "1.10" > "1.9" > "1.9rc1"-style strings compare piecewise."""
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((1, int(p)) if p.isdigit() else (0, p) for p in parts)


def latest_cards(
    directory: str | os.PathLike[str] | None = None, task: str | None = SEGMENTATION
) -> dict[str, Path]:
    """The newest version's card of each model of `task` in `directory`.

    Parameters
    ----------
    directory : str or PathLike, optional
        Defaults to :func:`default_models_dir`.
    task : str or None, default "segmentation"
        Keep cards whose :attr:`ModelCard.task` is this (the default: tumour-ensemble
        members, not e.g. the ``"nuclei"`` model); None keeps all.

    Returns
    -------
    dict of str to Path
        Model name → card path, sorted by name. Versions compare naturally
        ("1.10" is newer than "1.9"); ties go to the later ``created`` time.

    Warns
    -----
    UserWarning
        For each card that cannot be read (it is skipped, and the warning names
        the file and the problem).
    """
    best: dict[str, tuple[tuple[object, ...], Path]] = {}
    for path, card in iter_cards(directory, task):
        key = (_version_key(card.version), card.created)
        if card.name not in best or key > best[card.name][0]:
            best[card.name] = (key, path)
    return {name: best[name][1] for name in sorted(best)}
