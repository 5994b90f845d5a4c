"""Model cards: the JSON file beside a weights file that says what the model is.

A card says which architecture and config rebuild the network, what the network
expects (resolution in µm/px, patch size, RGB normalisation), what it outputs
(class names), where it came from (training data, parent version, metrics) and
which weights file it describes (name and SHA-256). The format is documented in
``docs/model_card.md``.

Validation is strict and every problem is one line naming the card and the field:
``.../resunet-1.0.json: field `input_mpp` must be a number > 0, got 'abc'``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from napari_histo._atomic import atomic_write_bytes
from napari_histo.errors import WeightsError

__all__ = ["FORMATS", "MAX_CARD_BYTES", "ModelCard", "read_card", "write_card"]

#: Weights formats a card may declare.
FORMATS = ("safetensors", "torchscript")

#: Cards larger than this are refused unread (a card is a few kB).
MAX_CARD_BYTES = 1024 * 1024

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelCard:
    """Metadata for one version of one model (a frozen, validated record).

    Parameters
    ----------
    name : str
        Model name, safe as a file name (``[A-Za-z0-9][A-Za-z0-9._+-]*``).
    version : str
        Version string, same alphabet (e.g. ``"1.0"``, ``"2024-06-01"``).
    architecture : str
        Registry name (see :func:`~napari_histo.models.available_architectures`),
        or ``"torchscript"`` when ``format == "torchscript"``.
    config : dict
        Constructor keyword arguments of the architecture (JSON values).
    input_mpp : float
        Resolution the model expects, in µm per pixel, > 0.
    patch_px : int
        Side of the square patch the model was trained on, in pixels, a multiple of 32.
    normalisation : dict
        ``{"mean": [r, g, b], "std": [r, g, b]}`` applied to RGB scaled to [0, 1]:
        ``x = (rgb / 255 - mean) / std``; std > 0.
    classes : tuple of str
        Output class names in logit order, at least two, unique
        (e.g. ``("background", "tumor")``).
    training_data : str
        What the model was trained on, in plain words (``"synthetic"`` is fine).
    parent_version : str or None, default None
        Version this one was fine-tuned from.
    metrics : dict of str to float, default {}
        Validation metrics (e.g. ``{"dice_tumor": 0.81}``).
    weights_file : str, default ""
        Weights file name relative to the card's folder; filled by
        :func:`~napari_histo.models.save_model`. Required in a card on disk.
    sha256 : str, default ""
        Lower-case hex SHA-256 of the weights file; filled by ``save_model``.
        Required in a card on disk.
    format : {"safetensors", "torchscript"}, default "safetensors"
        Weights file format.
    created : str, default now
        ISO 8601 creation time.
    notes : str, default ""
        Free text.
    stain_normalisation : dict or None, default None
        Optional preprocessing before `normalisation`:
        ``{"method": "macenko" | "reinhard", "target": {...} | None}`` (see
        :mod:`napari_histo.stain`; a null target is the method's reference).
        Optional in a card on disk: older cards without it load as None.
    stain_reference : dict or None, default None
        Stain statistics of the training tiles (:class:`napari_histo.ood.StainReference`
        as a dict): slides far from them get an out-of-distribution warning.
        Optional in a card on disk.
    receptive_margin_px : int or None, default None
        Measured effective receptive field (model px, a multiple of 16): an output
        pixel this far from a tile's edge is as if the tile were infinite
        (:func:`napari_histo.models.receptive.measure_margin`). The engine's large
        tiles keep only their centre minus this margin; None: patch tiles only.
        Optional in a card on disk.
    temperature : float or None, default None
        Temperature ``T > 0`` of the *ensemble* this member belongs to: calibrated
        tumor probability = ``sigmoid(logit(p) / T)`` of the ensemble's mean
        probability ``p`` (:mod:`napari_histo.review.calibration`). Fitted on the
        ensemble, not per member, so every member's card of a calibrated version
        carries the same value. None: uncalibrated. Optional in a card on disk.
    postprocess : dict or None, default None
        Post-processing parameters chosen for this model on validation tiles, name
        → number (for a nuclei model, fields of
        :class:`napari_histo.nuclei.learned.HVParams`); None: the task's defaults.
        Optional in a card on disk.

    Raises
    ------
    ValueError
        If a field is invalid; the message names the field and the value.
    """

    name: str
    version: str
    architecture: str
    config: dict[str, Any]
    input_mpp: float
    patch_px: int
    normalisation: dict[str, tuple[float, float, float]]
    classes: tuple[str, ...]
    training_data: str
    parent_version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    weights_file: str = ""
    sha256: str = ""
    format: str = "safetensors"
    created: str = field(default_factory=_now_iso)
    notes: str = ""
    stain_normalisation: dict[str, Any] | None = None
    stain_reference: dict[str, Any] | None = None
    receptive_margin_px: int | None = None
    temperature: float | None = None
    postprocess: dict[str, float] | None = None

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        try:
            clean = _validated(values, saved=False)
        except _FieldError as err:
            raise ValueError(f"ModelCard {err}") from None
        for key, value in clean.items():
            object.__setattr__(self, key, value)

    # A frozen card holds dicts; make it explicitly unhashable rather than fail late.
    __hash__ = None  # type: ignore[assignment]

    @property
    def num_classes(self) -> int:
        """Number of output classes (``len(classes)``)."""
        return len(self.classes)

    @property
    def task(self) -> str:
        """What the architecture does: ``"segmentation"`` (tumour-ensemble member) or
        e.g. ``"nuclei"``; see :func:`~napari_histo.models.architecture_task`."""
        from napari_histo.models.registry import architecture_task

        return architecture_task(self.architecture)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready plain types, keys in documented order."""
        order = (
            "name", "version", "parent_version", "architecture", "config", "input_mpp",
            "patch_px", "normalisation", "classes", "training_data", "metrics",
            "weights_file", "sha256", "format", "created", "notes",
        )  # fmt: skip
        out: dict[str, Any] = {}
        for key in order:
            value = getattr(self, key)
            if key == "normalisation":
                value = {k: list(v) for k, v in value.items()}
            elif key == "classes":
                value = list(value)
            elif isinstance(value, dict):
                value = json.loads(json.dumps(value))  # deep copy
            out[key] = value
            if key == "normalisation" and self.stain_normalisation is not None:
                out["stain_normalisation"] = json.loads(json.dumps(self.stain_normalisation))
        if self.stain_reference is not None:
            out["stain_reference"] = json.loads(json.dumps(self.stain_reference))
        if self.receptive_margin_px is not None:
            out["receptive_margin_px"] = self.receptive_margin_px
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.postprocess is not None:
            out["postprocess"] = dict(self.postprocess)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> ModelCard:
        """Validate a card read from JSON: every field required, no unknown fields.

        Parameters
        ----------
        data : mapping
            Parsed JSON object.
        source : str
            Where it came from, for messages (usually the card path).

        Raises
        ------
        WeightsError
            ``"<source>: field `<name>` ..."`` for the first problem found.
        """
        if not isinstance(data, Mapping):
            raise WeightsError(f"{source}: card must be a JSON object, got {_json_type(data)}")
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                raise WeightsError(
                    f"{source}: unknown field `{key}`; card fields are: {', '.join(names)}"
                )
        for key in names:
            if key not in data and key not in _OPTIONAL:
                raise WeightsError(f"{source}: missing field `{key}`")
        try:
            clean = _validated({**_OPTIONAL, **data}, saved=True)
        except _FieldError as err:
            raise WeightsError(f"{source}: {err}") from None
        return cls(**clean)


# --------------------------------------------------------------------------- validation

#: Fields a card on disk may leave out (added after the format was fixed), with defaults.
_OPTIONAL: dict[str, Any] = {
    "stain_normalisation": None,
    "stain_reference": None,
    "receptive_margin_px": None,
    "temperature": None,
    "postprocess": None,
}


class _FieldError(Exception):
    def __init__(self, name: str, expected: str, value: object) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"field `{name}` must be {expected}, got {shown}")


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return names.get(type(value), type(value).__name__)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(name: str, value: object, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise _FieldError(name, "a string" if empty else "a non-empty string", value)
    return value


def _safe_name(name: str, value: object) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise _FieldError(name, f"a string matching {_SAFE_NAME.pattern}", value)
    return value


def _rgb_triple(name: str, value: object, positive: bool) -> tuple[float, float, float]:
    what = "3 numbers > 0" if positive else "3 numbers"
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise _FieldError(name, what, value)
    if not all(_is_number(v) and (v > 0 or not positive) for v in value):
        raise _FieldError(name, what, value)
    return (float(value[0]), float(value[1]), float(value[2]))


def _check_config(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _FieldError("config", "an object with string keys", value)
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError):
        raise _FieldError("config", "JSON-serialisable", value) from None


def _check_normalisation(value: object) -> dict[str, tuple[float, float, float]]:
    if not isinstance(value, Mapping) or set(value) != {"mean", "std"}:
        raise _FieldError("normalisation", 'an object {"mean": [...], "std": [...]}', value)
    return {
        "mean": _rgb_triple("normalisation.mean", value["mean"], positive=False),
        "std": _rgb_triple("normalisation.std", value["std"], positive=True),
    }


def _check_classes(value: object) -> tuple[str, ...]:
    expected = "a list of >= 2 unique non-empty strings"
    if not isinstance(value, list | tuple) or len(value) < 2:
        raise _FieldError("classes", expected, value)
    if not all(isinstance(c, str) and c.strip() for c in value) or len(set(value)) != len(value):
        raise _FieldError("classes", expected, value)
    return tuple(value)


def _check_metrics(value: object) -> dict[str, float]:
    expected = "an object of name → finite number"
    if not isinstance(value, Mapping):
        raise _FieldError("metrics", expected, value)
    for key, number in value.items():
        if not isinstance(key, str) or not _is_number(number):
            raise _FieldError("metrics", expected, value)
    return {key: float(number) for key, number in value.items()}


def _check_weights_file(value: object, saved: bool) -> str:
    expected = "a file name in the card's folder (no directories)"
    if not isinstance(value, str):
        raise _FieldError("weights_file", expected, value)
    if value == "" and not saved:
        return value
    if not value or Path(value).name != value or value in (".", "..") or "\\" in value:
        raise _FieldError("weights_file", expected, value)
    return value


def _check_created(value: object) -> str:
    expected = "an ISO 8601 time"
    if not isinstance(value, str):
        raise _FieldError("created", expected, value)
    try:
        # Python < 3.11 does not accept a trailing "Z".
        datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise _FieldError("created", expected, value) from None
    return value


def _check_mpp(value: object) -> float:
    if not _is_number(value) or value <= 0:
        raise _FieldError("input_mpp", "a number > 0", value)
    return float(value)


def _check_patch(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 32:
        raise _FieldError("patch_px", "a positive int, multiple of 32", value)
    return value


def _check_sha(value: object, saved: bool) -> str:
    if value == "" and not saved:
        return ""
    if not isinstance(value, str) or not _SHA256.match(value.lower()):
        raise _FieldError("sha256", "64 hexadecimal digits", value)
    return value.lower()


def _validated(values: dict[str, Any], *, saved: bool) -> dict[str, Any]:
    """Checked and normalised field values; `saved` requires weights_file and sha256."""
    checks: dict[str, Callable[[Any], Any]] = {
        "name": lambda v: _safe_name("name", v),
        "version": lambda v: _safe_name("version", v),
        "parent_version": lambda v: None if v is None else _safe_name("parent_version", v),
        "architecture": lambda v: _text("architecture", v, empty=False),
        "config": _check_config,
        "input_mpp": _check_mpp,
        "patch_px": _check_patch,
        "normalisation": _check_normalisation,
        "classes": _check_classes,
        "training_data": lambda v: _text("training_data", v, empty=False),
        "metrics": _check_metrics,
        "weights_file": lambda v: _check_weights_file(v, saved),
        "sha256": lambda v: _check_sha(v, saved),
        "format": _check_format,
        "created": _check_created,
        "notes": lambda v: _text("notes", v),
        "stain_normalisation": _check_stain,
        "stain_reference": _check_stain_reference,
        "receptive_margin_px": _check_margin,
        "temperature": _check_temperature,
        "postprocess": _check_postprocess,
    }
    clean = {key: check(values[key]) for key, check in checks.items()}
    is_script = clean["format"] == "torchscript"
    if is_script != (clean["architecture"] == "torchscript"):
        expected = '"torchscript" exactly when `format` is "torchscript"'
        raise _FieldError("architecture", expected, clean["architecture"])
    return clean


def _check_margin(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value % 16:
        raise _FieldError("receptive_margin_px", "null or an int >= 0, a multiple of 16", value)
    return value


def _check_postprocess(value: object) -> dict[str, float] | None:
    if value is None:
        return None
    expected = "null or an object of name → finite number"
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and _is_number(v) for k, v in value.items()
    ):
        raise _FieldError("postprocess", expected, value)
    return {key: float(number) for key, number in value.items()}


def _check_temperature(value: object) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or value <= 0:
        raise _FieldError("temperature", "null or a finite number > 0", value)
    return float(value)


def _check_stain_reference(value: object) -> dict[str, Any] | None:
    """Training-data stain statistics for the out-of-distribution score (napari_histo.ood)."""
    from napari_histo.ood import StainReference

    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _FieldError("stain_reference", "null or an object", value)
    try:
        return StainReference.from_dict(value).to_dict()
    except ValueError as err:
        raise _FieldError("stain_reference", f"a stain reference ({err})", value) from None


def _check_stain(value: object) -> dict[str, Any] | None:
    from napari_histo.stain import StainNormaliser

    expected = 'null or {"method": "macenko"|"reinhard", "target": {...} or null}'
    try:
        normaliser = StainNormaliser.from_spec(value)
    except (ValueError, TypeError) as err:
        raise _FieldError("stain_normalisation", f"{expected} ({err})", value) from None
    if normaliser is None:
        return None
    target = value.get("target")  # type: ignore[union-attr]
    return {
        "method": normaliser.method,
        "target": None if target is None else normaliser.spec()["target"],
    }


def _check_format(value: object) -> str:
    if value not in FORMATS:
        raise _FieldError("format", " or ".join(f'"{f}"' for f in FORMATS), value)
    return str(value)


# --------------------------------------------------------------------------- files


def _reject_constant(token: str) -> None:
    raise ValueError(f"{token} is not valid JSON")


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read and validate a model card.

    Parameters
    ----------
    path : str or PathLike
        The ``.json`` card.

    Returns
    -------
    ModelCard

    Raises
    ------
    WeightsError
        One line naming `path` and the problem: missing, unreadable, larger than
        :data:`MAX_CARD_BYTES`, empty, not UTF-8, not JSON (or truncated), not an
        object, a missing or unknown field, or a field with a bad value.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CARD_BYTES + 1)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such model card") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory, not a model card") from None
    except OSError as err:
        raise WeightsError(f"{path}: cannot be read ({err.strerror or err})") from None
    if len(raw) > MAX_CARD_BYTES:
        raise WeightsError(
            f"{path}: larger than {MAX_CARD_BYTES // 1024} kB; refusing to read as a model card"
        )
    if not raw.strip():
        raise WeightsError(f"{path}: is empty; expected a JSON model card")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise WeightsError(f"{path}: not UTF-8 text (byte {err.start}); not a model card") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as err:
        at_end = err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string")
        hint = "truncated JSON" if at_end else "not valid JSON"
        raise WeightsError(
            f"{path}: {hint} (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from None
    except ValueError as err:  # NaN / Infinity constants
        raise WeightsError(f"{path}: not valid JSON ({err})") from None
    return ModelCard.from_dict(data, source=str(path))


def write_card(path: str | os.PathLike[str], card: ModelCard) -> Path:
    """Write `card` as JSON to `path` atomically.

    The JSON goes to a temporary file in the same folder, is flushed and
    fsync'ed, then renamed over `path` (``os.replace``), so readers see the old
    card or the new one, never half of one.

    Parameters
    ----------
    path : str or PathLike
        Destination ``.json`` file; its folder must exist.
    card : ModelCard
        A card whose ``weights_file`` and ``sha256`` are filled in.

    Returns
    -------
    Path
        `path`.

    Raises
    ------
    TypeError
        If `card` is not a :class:`ModelCard`.
    WeightsError
        If the card lacks ``weights_file`` or ``sha256`` (naming `path` and the
        field), or the file cannot be written.
    """
    if not isinstance(card, ModelCard):
        raise TypeError(f"`card` must be a ModelCard, got {type(card).__name__}")
    path = Path(path)
    data = card.to_dict()
    ModelCard.from_dict(data, source=str(path))  # saved cards need weights_file and sha256
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    _atomic_write_bytes(path, text.encode("utf-8"))
    return path


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    try:
        atomic_write_bytes(path, payload)
    except OSError as err:
        raise WeightsError(f"{path}: cannot write ({err.strerror or err})") from None
