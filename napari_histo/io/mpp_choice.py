"""The µm/px a person chose for a slide, saved beside it in ``<slide file name>.mpp.json``.

A slide's scale matters to every model, measurement and scale bar, and files
get it wrong: TIFF resolution defaults (72 dpi = 352.8 µm/px), garbage tags,
or a plausible but wrong value. The choice made once (``napari-histo info
SLIDE --set-mpp F``, or the µm/px field of a dock) is kept in a small JSON file
next to the slide, so that every later open of the slide uses it
(:class:`napari_histo.io.slide.Slide` reads it). Example::

    {"format": 1, "mpp": 0.25, "set_by": "napari-histo info --set-mpp",
     "saved_at": "2026-12-03T18:30:00+00:00", "file_mpp": null}

The file is written atomically; one that cannot be read or makes no sense is
ignored with one warning naming it and the reason, never an exception.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from napari_histo._atomic import atomic_write_text
from napari_histo.frames import check_mpp

__all__ = [
    "MPP_CHOICE_FORMAT",
    "MppChoice",
    "clear_mpp_choice",
    "mpp_choice_path",
    "read_mpp_choice",
    "save_mpp_choice",
]

#: Version of the sidecar's layout.
MPP_CHOICE_FORMAT = 1
_SUFFIX = ".mpp.json"


@dataclass(frozen=True)
class MppChoice:
    """A saved µm/px choice.

    Attributes
    ----------
    mpp : float
        µm per level-0 px (both axes), inside :data:`napari_histo.frames.MPP_RANGE`.
    set_by : str
        Where it was set ("napari-histo info --set-mpp", "Tumor inference dock", ...).
    saved_at : str
        When, ISO 8601 in UTC.
    file_mpp : float or None
        What the file itself said then (its plausible µm/px), None when nothing usable.
    """

    mpp: float
    set_by: str
    saved_at: str
    file_mpp: float | None = None


def mpp_choice_path(slide_path: str | os.PathLike[str]) -> Path:
    """``<slide file name>.mpp.json`` beside the slide.

    Examples
    --------
    >>> mpp_choice_path("/data/a.svs").as_posix()
    '/data/a.svs.mpp.json'
    """
    slide_path = Path(slide_path)
    return slide_path.parent / f"{slide_path.name}{_SUFFIX}"


def save_mpp_choice(
    slide_path: str | os.PathLike[str],
    mpp: float | str,
    *,
    set_by: str,
    file_mpp: float | None = None,
) -> Path:
    """Save `mpp` µm/px as the slide's chosen scale; returns the sidecar's path.

    Raises
    ------
    ValueError
        If `mpp` is not a number inside 0.05–50 µm/px (nothing is written).
    OSError
        If the slide's folder cannot be written.
    """
    value = check_mpp(mpp)
    choice = MppChoice(
        mpp=value,
        set_by=str(set_by),
        saved_at=datetime.now(UTC).isoformat(timespec="seconds"),
        file_mpp=None if file_mpp is None else float(file_mpp),
    )
    text = json.dumps({"format": MPP_CHOICE_FORMAT, **asdict(choice)}, indent=1) + "\n"
    return atomic_write_text(mpp_choice_path(slide_path), text, backups=0)


def clear_mpp_choice(slide_path: str | os.PathLike[str]) -> Path | None:
    """Delete the slide's saved choice; returns the removed path, None when there was none."""
    path = mpp_choice_path(slide_path)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path


def read_mpp_choice(slide_path: str | os.PathLike[str]) -> MppChoice | None:
    """The slide's saved choice, or None when there is none.

    A sidecar that cannot be read, is not JSON, or holds no µm/px inside
    0.05–50 is ignored with one :class:`UserWarning` naming it and why.
    """
    path = mpp_choice_path(slide_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        return _ignored(path, f"cannot be read ({getattr(err, 'strerror', None) or err})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return _ignored(path, f"is not JSON ({err.msg}, line {err.lineno})")
    if not isinstance(data, dict):
        return _ignored(path, f"must hold a JSON object, got {type(data).__name__}")
    if data.get("format", MPP_CHOICE_FORMAT) != MPP_CHOICE_FORMAT:
        return _ignored(path, f"has format {data.get('format')!r}, expected {MPP_CHOICE_FORMAT}")
    try:
        mpp = check_mpp(data.get("mpp"))
    except ValueError as err:
        return _ignored(path, str(err))
    file_mpp = data.get("file_mpp")
    return MppChoice(
        mpp=mpp,
        set_by=str(data.get("set_by", "")),
        saved_at=str(data.get("saved_at", "")),
        file_mpp=float(file_mpp) if isinstance(file_mpp, int | float) else None,
    )


def _ignored(path: Path, reason: str) -> None:
    warnings.warn(f"{path}: saved µm/px ignored: {reason}", UserWarning, stacklevel=3)
    return None
