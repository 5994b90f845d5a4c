"""Settings of live inference (:class:`LiveSettings`) and their JSON persistence.

Plain Python (no Qt, no napari). Re-exported by :mod:`napari_histo.live.controller`, which is
where other modules import them from.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_histo.paths import config_dir

if TYPE_CHECKING:
    from napari_histo.inference.engine import EngineConfig

__all__ = ["MODES", "LiveSettings", "load_settings", "save_settings", "settings_path"]

#: Stain normalisation choices (as :data:`napari_histo.stain.SETTINGS`; no numpy import here).
STAIN_SETTINGS = ("card", "none", "macenko", "reinhard")

#: Inference modes offered by the widget.
MODES = ("viewport", "follow", "whole slide")


@dataclass(frozen=True)
class LiveSettings:
    """What the inference widget runs; persisted as JSON.

    Attributes
    ----------
    members : tuple of str
        Ensemble member names (model cards); empty means every available model.
    tta : {1, 2, 4, 8}
        Test-time augmentations per member.
    overlap : float
        Tile overlap fraction in [0, 0.9].
    device : {"auto", "cpu", "cuda"}
    batch_size : int
        Tiles per batch; 0 picks the engine default for the device.
    mode : {"viewport", "follow", "whole slide"}
    threshold : float
        Tumor outline threshold on the probability, in (0, 1).
    preview : bool
        Progressive refinement: first a fast pass (one member, no TTA), then
        the full ensemble replaces it cell by cell.
    stain : {"card", "none", "macenko", "reinhard"}
        Stain normalisation (:data:`napari_histo.stain.SETTINGS`); "card"
        follows the model cards.
    worker_process : bool
        Run jobs in a worker process (:mod:`napari_histo.live.worker`): the
        viewer stays smooth and survives a crash of the job. False runs them on a
        thread of the viewer's process (to debug a job).
    """

    members: tuple[str, ...] = ()
    tta: int = 1
    overlap: float = 0.5
    device: str = "auto"
    batch_size: int = 0
    mode: str = "viewport"
    threshold: float = 0.5
    preview: bool = False
    stain: str = "card"
    worker_process: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(str(m) for m in self.members))
        if self.tta not in (1, 2, 4, 8) or isinstance(self.tta, bool):
            raise ValueError(f"`tta` must be 1, 2, 4 or 8, got {self.tta!r}")
        if not isinstance(self.overlap, int | float) or not 0 <= self.overlap <= 0.9:
            raise ValueError(f"`overlap` must be in [0, 0.9], got {self.overlap!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"`device` must be auto, cpu or cuda, got {self.device!r}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool):
            raise ValueError(f"`batch_size` must be an int >= 0, got {self.batch_size!r}")
        if self.batch_size < 0:
            raise ValueError(f"`batch_size` must be an int >= 0, got {self.batch_size!r}")
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.threshold, int | float) or not 0 < self.threshold < 1:
            raise ValueError(f"`threshold` must be in (0, 1), got {self.threshold!r}")
        if not isinstance(self.preview, bool):
            raise ValueError(f"`preview` must be a bool, got {self.preview!r}")
        if not isinstance(self.worker_process, bool):
            raise ValueError(f"`worker_process` must be a bool, got {self.worker_process!r}")
        if self.stain not in STAIN_SETTINGS:
            raise ValueError(f"`stain` must be one of {STAIN_SETTINGS}, got {self.stain!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["members"] = list(self.members)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LiveSettings:
        """Settings from a mapping; unknown keys are ignored, bad values raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError(f"settings must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def engine_config(self) -> EngineConfig:
        """The :class:`~napari_histo.inference.engine.EngineConfig` for these settings."""
        from napari_histo.inference.engine import EngineConfig

        return EngineConfig(
            tta=self.tta,
            overlap=float(self.overlap),
            batch_size=self.batch_size or None,
            device=self.device,
            stain=self.stain,
        )


def settings_path() -> Path:
    """``live.json`` in the settings folder (:func:`napari_histo.paths.config_dir`)."""
    return config_dir() / "live.json"


def load_settings(path: str | os.PathLike[str] | None = None) -> LiveSettings:
    """Saved settings; defaults (and one warning) when the file is unreadable or invalid."""
    path = Path(path) if path is not None else settings_path()
    if not path.exists():
        return LiveSettings()
    try:
        return LiveSettings.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, TypeError) as err:
        warnings.warn(
            f"{path}: ignoring unreadable napari-histo settings ({err}); using defaults",
            UserWarning,
            stacklevel=2,
        )
        return LiveSettings()


def save_settings(settings: LiveSettings, path: str | os.PathLike[str] | None = None) -> Path:
    """Write `settings` atomically (temporary file + rename); returns the path."""
    path = Path(path) if path is not None else settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    from napari_histo._atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(settings.to_dict(), indent=2), backups=0)
