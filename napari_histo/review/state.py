"""The review queue of one slide and its saved state (``SLIDE.review.json``).

:class:`ReviewQueue` is a plain model (no Qt): the ranked regions, the one
being looked at, and a decision per region: accepted, corrected or skipped,
with author and time. Every decision is saved at once, atomically, to
:func:`review_state_path` beside the slide (next to its annotations), and a
queue opened again on the same slide restores them and its position.

Regions are identified by their level-0 rectangle (:attr:`Region.key`), so
decisions survive a re-ranking; decisions about regions that are not in the
current ranking are kept in the file. A state file that cannot be read
(not JSON, not an object, wrong format) is renamed ``….bad`` (``….bad.1``,
… if that exists: nothing is overwritten) with one warning, and the queue
starts fresh.

Listeners: :meth:`ReviewQueue.connect` a callable taking the queue; it is
called after every change (position or decision), on the caller's thread.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from napari_histo._atomic import atomic_write_text
from napari_histo.review.regions import Region

__all__ = [
    "STATUSES",
    "Decision",
    "ReviewQueue",
    "ReviewStateWarning",
    "review_state_path",
    "saved_ranking",
]

#: What a reviewer can decide about a region.
STATUSES = ("accepted", "corrected", "skipped")
STATE_FORMAT = 1
#: State files larger than this are not read (a state is a few kB per thousand regions).
MAX_STATE_BYTES = 64 * 1024 * 1024


class ReviewStateWarning(UserWarning):
    """A saved review state could not be read and was set aside."""


def review_state_path(
    slide_path: str | os.PathLike[str], project_dir: str | os.PathLike[str] | None = None
) -> Path:
    """``<slide file name>.review.json`` beside the slide, or in `project_dir`.

    Examples
    --------
    >>> review_state_path("/data/a.svs").as_posix()
    '/data/a.svs.review.json'
    """
    slide_path = Path(slide_path)
    parent = Path(project_dir) if project_dir is not None else slide_path.parent
    return parent / f"{slide_path.name}.review.json"


@dataclass(frozen=True)
class Decision:
    """What a reviewer decided about one region.

    Attributes
    ----------
    key : str
        The region's :attr:`Region.key` (``"x,y,w,h"``, level-0 px).
    status : {"accepted", "corrected", "skipped"}
    author : str
    time : str
        ISO 8601, UTC.
    note : str
    """

    key: str
    status: str
    author: str
    time: str
    note: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "key": self.key,
            "status": self.status,
            "author": self.author,
            "time": self.time,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Decision:
        if not isinstance(data, dict):
            raise ValueError(f"a decision must be an object, got {type(data).__name__}")
        names = ("key", "status", "author", "time", "note")
        values = {k: data.get(k, "" if k == "note" else None) for k in names}
        if not all(isinstance(v, str) for v in values.values()):
            raise ValueError(f"a decision needs string key, status, author, time; got {data!r}")
        if values["status"] not in STATUSES:
            raise ValueError(f"decision status must be one of {STATUSES}, got {values['status']!r}")
        return cls(**values)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _set_aside(path: Path) -> Path:
    """Rename a bad state file to ``.bad`` (or ``.bad.N``), never over an existing file."""
    target = path.with_name(path.name + ".bad")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.bad.{n}")
    os.replace(path, target)
    return target


def _read_state(path: Path) -> dict[str, Any] | None:
    """The saved state at `path`, None when missing; a bad file is set aside with a warning."""
    if not path.exists():
        return None
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            raise ValueError(f"larger than {MAX_STATE_BYTES // (1024 * 1024)} MB")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ValueError(f"not a review state of format {STATE_FORMAT}")
        decisions = data.get("decisions", [])
        if not isinstance(decisions, list):
            raise ValueError("`decisions` must be a list")
        data["decisions"] = [Decision.from_dict(d) for d in decisions]
        index = data.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"`index` must be an int, got {index!r}")
        return data
    except (UnicodeDecodeError, ValueError) as err:  # an OSError (cannot read) propagates
        bad = _set_aside(path)
        warnings.warn(
            f"{path}: unreadable review state ({err}); kept as {bad.name}, starting afresh",
            ReviewStateWarning,
            stacklevel=3,
        )
        return None


def saved_ranking(path: str | os.PathLike[str]) -> tuple[str, int] | None:
    """``(score, side_l0_px)`` of the ranking a saved state was made on, None without one.

    The side is the largest width or height among the saved region keys (edge
    regions are clipped), so a dock can rank again with the same squares and
    find its decisions. A bad file is set aside as :class:`ReviewQueue` does.
    """
    saved = _read_state(Path(path))
    if saved is None:
        return None
    keys = [d.key for d in saved["decisions"]]
    if isinstance(saved.get("current"), str):
        keys.append(saved["current"])
    sides = []
    for key in keys:
        try:
            _, _, w, h = (int(v) for v in key.split(","))
        except ValueError:
            continue
        sides.append(max(w, h))
    score = saved.get("score")
    if not sides or not isinstance(score, str):
        return None
    return score, max(sides)


class ReviewQueue:
    """Ranked regions of one slide with a current position and a decision per region.

    Parameters
    ----------
    regions : sequence of Region
        The ranking, best first (e.g. :func:`~napari_histo.review.run.rank_run`).
    path : str or PathLike, optional
        State file (e.g. :func:`review_state_path` of the slide). When given, a
        saved state there is restored and every change is saved to it.
    author : str
        Default author of decisions.
    score : str
        Name of the score the regions were ranked by (saved, informational).

    Examples
    --------
    >>> regions = [Region((x, 0, 8, 8), 2.0 - x / 8, 64.0, 0.5) for x in (0, 8)]
    >>> q = ReviewQueue(regions)
    >>> q.accept(author="ana").status, q.index, q.current.rect_l0
    ('accepted', 1, (8, 0, 8, 8))
    """

    def __init__(
        self,
        regions: Sequence[Region],
        path: str | os.PathLike[str] | None = None,
        *,
        author: str = "",
        score: str = "",
    ) -> None:
        if not all(isinstance(r, Region) for r in regions):
            raise TypeError("`regions` must hold Region objects")
        if not isinstance(author, str):
            raise TypeError(f"`author` must be a str, got {type(author).__name__}")
        self.regions: list[Region] = list(regions)
        self.path = None if path is None else Path(path)
        self.author = author
        self.score = score
        self._index = 0
        self._decisions: dict[str, Decision] = {}
        self._listeners: list[Callable[[ReviewQueue], None]] = []
        if self.path is not None:
            saved = _read_state(self.path)
            if saved is not None:
                self._decisions = {d.key: d for d in saved["decisions"]}
                keys = [r.key for r in self.regions]
                current = saved.get("current")
                index = keys.index(current) if current in keys else saved["index"]
                self._index = min(max(0, index), max(0, len(self.regions) - 1))

    def __repr__(self) -> str:
        path = None if self.path is None else str(self.path)
        return f"ReviewQueue(<{len(self.regions)} regions>, path={path!r}, author={self.author!r})"

    def __len__(self) -> int:
        return len(self.regions)

    # -- listeners -----------------------------------------------------------
    def connect(self, callback: Callable[[ReviewQueue], None]) -> None:
        """Call `callback(queue)` after every change of position or decision."""
        if not callable(callback):
            raise TypeError(f"`callback` must be callable, got {type(callback).__name__}")
        self._listeners.append(callback)

    def disconnect(self, callback: Callable[[ReviewQueue], None]) -> None:
        """Stop calling `callback` (no error when it was not connected)."""
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _changed(self) -> None:
        for callback in list(self._listeners):
            callback(self)

    # -- position ------------------------------------------------------------
    @property
    def index(self) -> int:
        """Position of the current region (0 when the queue is empty)."""
        return self._index

    @property
    def current(self) -> Region | None:
        """The region being reviewed, None when the queue is empty."""
        return self.regions[self._index] if self.regions else None

    def go(self, index: int) -> Region | None:
        """Move to region `index` (0 ≤ index < len); returns it."""
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"`index` must be an int, got {type(index).__name__}")
        if not 0 <= index < max(1, len(self.regions)):
            raise IndexError(f"`index` must be in [0, {len(self.regions) - 1}], got {index}")
        if index != self._index:
            self._index = index
            self._save()
            self._changed()
        return self.current

    def next(self) -> Region | None:
        """Move to the next region (stays on the last one); returns the current region."""
        return self.go(min(self._index + 1, max(0, len(self.regions) - 1)))

    def previous(self) -> Region | None:
        """Move to the previous region (stays on the first one); returns the current region."""
        return self.go(max(self._index - 1, 0))

    def next_undecided(self) -> Region | None:
        """Move to the first region after the current one without a decision (wrapping)."""
        n = len(self.regions)
        for step in range(1, n + 1):
            i = (self._index + step) % n
            if self.regions[i].key not in self._decisions:
                return self.go(i)
        return self.current

    # -- decisions -----------------------------------------------------------
    def decision(self, region: Region | None = None) -> Decision | None:
        """The decision about `region` (default: the current one), None when undecided."""
        region = self.current if region is None else region
        return None if region is None else self._decisions.get(region.key)

    @property
    def decisions(self) -> dict[str, Decision]:
        """Every saved decision by region key, including regions not in this ranking."""
        return dict(self._decisions)

    def counts(self) -> dict[str, int]:
        """How many regions of this ranking are accepted, corrected, skipped or undecided."""
        out = dict.fromkeys((*STATUSES, "undecided"), 0)
        for region in self.regions:
            d = self._decisions.get(region.key)
            out[d.status if d else "undecided"] += 1
        return out

    def decide(
        self, status: str, *, author: str | None = None, note: str = "", advance: bool = True
    ) -> Decision:
        """Record `status` for the current region, save, and (by default) move to the next.

        Raises
        ------
        ValueError
            Unknown `status`; IndexError when the queue is empty.
        """
        if status not in STATUSES:
            raise ValueError(f"`status` must be one of {STATUSES}, got {status!r}")
        if not self.regions:
            raise IndexError("the review queue is empty")
        who = self.author if author is None else author
        if not isinstance(who, str) or not isinstance(note, str):
            raise TypeError("`author` and `note` must be str")
        decision = Decision(self.current.key, status, who, _now(), note)
        before = (self._index, self._decisions.get(decision.key))
        self._decisions[decision.key] = decision
        if advance and self._index + 1 < len(self.regions):
            self._index += 1
        try:
            self._save()
        except BaseException:
            # Not on disk, so not decided: the queue stays what the file says.
            self._index = before[0]
            if before[1] is None:
                del self._decisions[decision.key]
            else:
                self._decisions[decision.key] = before[1]
            raise
        self._changed()
        return decision

    def accept(self, *, author: str | None = None, note: str = "") -> Decision:
        """The model is right here: :meth:`decide` ``"accepted"``."""
        return self.decide("accepted", author=author, note=note)

    def correct(self, *, author: str | None = None, note: str = "") -> Decision:
        """The reviewer corrected the annotations here: :meth:`decide` ``"corrected"``."""
        return self.decide("corrected", author=author, note=note)

    def skip(self, *, author: str | None = None, note: str = "") -> Decision:
        """Not decided now: :meth:`decide` ``"skipped"``."""
        return self.decide("skipped", author=author, note=note)

    def undo(self, region: Region | None = None) -> Decision | None:
        """Forget the decision about `region` (default: current); returns what was removed."""
        region = self.current if region is None else region
        removed = None if region is None else self._decisions.pop(region.key, None)
        if removed is not None:
            self._save()
            self._changed()
        return removed

    # -- file ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The saved state: format, score, index, current key, decisions."""
        current = self.current
        return {
            "format": STATE_FORMAT,
            "score": self.score,
            "index": self._index,
            "current": None if current is None else current.key,
            "decisions": [d.to_dict() for d in self._decisions.values()],
        }

    def save(self) -> Path | None:
        """Write the state to :attr:`path` atomically (one backup); None without a path."""
        if self.path is None:
            return None
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"
        return atomic_write_text(self.path, text, backups=1)

    def _save(self) -> None:
        if self.path is not None:
            self.save()
