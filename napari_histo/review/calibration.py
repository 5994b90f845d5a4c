"""Temperature scaling of the ensemble's tumor probability (Guo et al. 2017).

One temperature ``T > 0`` rescales the logit of the ensemble's mean
probability: ``calibrate(p, T) = sigmoid(logit(p) / T)``. ``T`` is fitted by
minimising the negative log-likelihood on labelled pixels *outside* a
held-out part (a spatial split: stripes of the grid, never random pixels,
since neighbouring pixels are nearly the same sample), and the expected
calibration error is reported on the held-out part before and after.

The temperature belongs to the *ensemble* (it is fitted on the mean of the
members, which is what is displayed and thresholded), so
:func:`write_calibrated_versions` writes the same value into a new version of
every member's card; :func:`ensemble_temperature` reads it back and refuses
members that disagree. A run made with uncalibrated versions still gets
calibrated probabilities from :func:`temperature_for_models` when calibrated
versions with the same weights (same SHA-256) exist: temperature scaling
changes no weight.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo._atomic import atomic_write_bytes, json_safe
from napari_histo.errors import WeightsError
from napari_histo.metrics import expected_calibration_error
from napari_histo.models import ModelCard, read_card, write_card
from napari_histo.models.versions import next_version, taken_versions

__all__ = [
    "CalibrationResult",
    "calibrate",
    "draw_reliability",
    "ensemble_temperature",
    "fit_calibration",
    "fit_temperature",
    "held_out_stripes",
    "logit",
    "temperature_for_models",
    "write_calibrated_versions",
    "write_calibration_png",
]

#: Probabilities are clipped to [EPS, 1 - EPS] before the logit.
EPS = 1e-6
#: Search range of the temperature.
T_RANGE = (0.02, 50.0)
#: Labelled pixels used to fit (a fixed-stride subsample beyond this).
FIT_PIXELS = 2_000_000


def logit(probability: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of `probability` clipped to ``[EPS, 1 - EPS]``, float64."""
    p = np.clip(np.asarray(probability, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def calibrate(probability: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probability ``sigmoid(logit(p) / T)``, float32, same shape.

    Parameters
    ----------
    probability : ndarray of float
        Tumor probability in [0, 1], any shape.
    temperature : float
        ``T > 0``; 1 leaves `probability` as it is (up to the clipping at EPS),
        ``T > 1`` softens over-confident probabilities.

    Examples
    --------
    >>> calibrate(np.array([0.5, 0.880797]), 2.0).round(4)
    array([0.5   , 0.7311], dtype=float32)
    """
    t = _check_temperature(temperature)
    z = logit(probability) / t
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)


def _nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    """Mean binary cross-entropy of sigmoid(z / t) against y (stable form)."""
    s = z / t
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def _labelled(probability: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probability, dtype=np.float64).ravel()
    t = np.asarray(truth).ravel()
    if p.shape != t.shape:
        raise ValueError(f"`truth` size {t.size} must equal `probability` size {p.size}")
    if t.dtype == bool:
        return p, t.astype(np.float64)
    known = (t == 0) | (t == 1)
    return p[known], t[known].astype(np.float64)


def fit_temperature(probability: np.ndarray, truth: np.ndarray) -> float:
    """The temperature minimising the NLL of `truth` under ``calibrate(probability, T)``.

    Parameters
    ----------
    probability : ndarray of float
        Tumor probability, any shape.
    truth : ndarray of bool, or of uint8 (1 tumor, 0 not, anything else unknown)
        Same shape.

    Returns
    -------
    float
        ``T`` in :data:`T_RANGE` (a bounded 1-D search over ``log T``).

    Raises
    ------
    ValueError
        When fewer than 2 labelled pixels or only one class are given.
    """
    from scipy.optimize import minimize_scalar

    p, y = _labelled(probability, truth)
    if p.size < 2 or y.min() == y.max():
        raise ValueError(
            f"`truth` must label pixels of both classes to fit a temperature, got {p.size} "
            f"labelled pixels with {int(y.sum()) if p.size else 0} tumor"
        )
    stride = max(1, p.size // FIT_PIXELS)
    z, y = logit(p[::stride]), y[::stride]
    lo, hi = (math.log(v) for v in T_RANGE)
    found = minimize_scalar(
        lambda s: _nll(z, y, math.exp(s)), bounds=(lo, hi), method="bounded",
        options={"xatol": 1e-4},
    )  # fmt: skip
    return float(math.exp(found.x))


def held_out_stripes(
    shape: tuple[int, int], fraction: float = 0.5, stripes: int = 4, axis: str = "x"
) -> np.ndarray:
    """Bool mask of `stripes` evenly spaced bands along `axis` holding out `fraction`.

    Parameters
    ----------
    shape : (rows, cols)
    fraction : float
        Share of the grid held out, in (0, 1).
    stripes : int
        Number of held-out bands (>= 1); more bands spread the held-out part.
    axis : {"x", "y"}
        ``"x"``: vertical bands (columns); ``"y"``: horizontal bands.

    Examples
    --------
    >>> held_out_stripes((1, 8), 0.5, 2)[0].astype(int)
    array([1, 1, 0, 0, 1, 1, 0, 0])
    """
    if not 0 < fraction < 1:
        raise ValueError(f"`fraction` must be in (0, 1), got {fraction!r}")
    if isinstance(stripes, bool) or not isinstance(stripes, int) or stripes < 1:
        raise ValueError(f"`stripes` must be an int >= 1, got {stripes!r}")
    if axis not in ("x", "y"):
        raise ValueError(f"`axis` must be 'x' or 'y', got {axis!r}")
    rows, cols = (int(s) for s in shape)
    n = cols if axis == "x" else rows
    period = n / stripes
    inside = np.mod(np.arange(n) + 0.5, period) < fraction * period
    return np.broadcast_to(inside[None, :] if axis == "x" else inside[:, None], (rows, cols))


@dataclass(frozen=True)
class CalibrationResult:
    """A fitted temperature and how calibrated the held-out pixels are before and after.

    Attributes
    ----------
    temperature : float
        Fitted ``T``.
    ece_before, ece_after : float
        Expected calibration error (10 bins) of the held-out pixels.
    nll_before, nll_after : float
        Their mean negative log-likelihood, nats.
    fit_px, held_px : int
        Labelled pixels used to fit and to evaluate.
    reliability_before, reliability_after : dict
        Reliability tables of the held-out pixels (``mean_probability``,
        ``frequency``, ``count`` per bin; see
        :func:`napari_histo.evaluate.reliability_table`).
    """

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    fit_px: int
    held_px: int
    reliability_before: dict[str, list[float]]
    reliability_after: dict[str, list[float]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN → None)."""
        return json_safe(dataclasses.asdict(self))




def _table(p: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    from napari_histo.evaluate import reliability_table

    return reliability_table({"probability": p, "truth": y.astype(bool)})


def fit_calibration(
    probability: np.ndarray, truth: np.ndarray, held_out: np.ndarray
) -> CalibrationResult:
    """Fit ``T`` on the labelled pixels outside `held_out`; score on those inside.

    Parameters
    ----------
    probability : ndarray of float
        Tumor probability, any shape.
    truth : ndarray of bool, or uint8 (1 tumor, 0 not, else unknown)
        Same shape.
    held_out : ndarray of bool
        Same shape; e.g. :func:`held_out_stripes`.

    Raises
    ------
    ValueError
        Shapes differ, or either part lacks labelled pixels of both classes.
    """
    p = np.asarray(probability)
    held = np.asarray(held_out, dtype=bool)
    truth = np.asarray(truth)
    for name, value in (("truth", truth), ("held_out", held)):
        if value.shape != p.shape:
            raise ValueError(
                f"`{name}` shape {value.shape} must equal `probability` shape {p.shape}"
            )
    fit_p, fit_y = _labelled(p[~held], truth[~held])
    temperature = fit_temperature(fit_p, fit_y.astype(bool))
    hp, hy = _labelled(p[held], truth[held])
    if hp.size == 0 or hy.min() == hy.max():
        raise ValueError("`held_out` must hold labelled pixels of both classes")
    after = calibrate(hp, temperature).astype(np.float64)
    z = logit(hp)
    return CalibrationResult(
        temperature=temperature,
        ece_before=expected_calibration_error(hp, hy.astype(bool)),
        ece_after=expected_calibration_error(after, hy.astype(bool)),
        nll_before=_nll(z, hy, 1.0),
        nll_after=_nll(z, hy, temperature),
        fit_px=int(fit_p.size),
        held_px=int(hp.size),
        reliability_before=_table(hp, hy),
        reliability_after=_table(after, hy),
    )


# --------------------------------------------------------------------------- plot


def write_calibration_png(
    result: CalibrationResult, path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Reliability diagram of the held-out pixels before and after scaling, PNG, atomically."""
    if not isinstance(result, CalibrationResult):
        raise TypeError(f"`result` must be a CalibrationResult, got {type(result).__name__}")
    return atomic_write_bytes(path, _png(result, title))


def draw_reliability(figure: Any, result: CalibrationResult, title: str = "") -> Any:
    """Draw the reliability diagram of `result` (before / after, with ECE) on a matplotlib figure.

    `figure` is any :class:`matplotlib.figure.Figure` (an Agg one for a PNG, a
    Qt canvas's in the review dock); it is cleared first. Returns the axes.
    """
    if not isinstance(result, CalibrationResult):
        raise TypeError(f"`result` must be a CalibrationResult, got {type(result).__name__}")
    figure.clear()
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    for table, colour, label in (
        (result.reliability_before, "#d62728", f"before (ECE {result.ece_before:.3f})"),
        (result.reliability_after, "#1f77b4",
         f"after, T = {result.temperature:.2f} (ECE {result.ece_after:.3f})"),
    ):  # fmt: skip
        mean_p = np.asarray(table["mean_probability"], dtype=np.float64)
        freq = np.asarray(table["frequency"], dtype=np.float64)
        shown = np.asarray(table["count"], dtype=np.float64) > 0
        ax.plot(mean_p[shown], freq[shown], "o-", color=colour, lw=1.5, ms=4, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted tumor probability")
    ax.set_ylabel("observed tumor fraction (held-out pixels)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or f"{result.held_px} held-out pixels", fontsize=9)
    figure.tight_layout()
    return ax


def _png(result: CalibrationResult, title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    draw_reliability(fig, result, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# --------------------------------------------------------------------------- cards


def ensemble_temperature(cards: Sequence[ModelCard]) -> float | None:
    """The ensemble's temperature from its members' cards; None when none carries one.

    Raises
    ------
    ValueError
        When members carry different temperatures, or some carry one and some not
        (they were not calibrated together).
    """
    values = {c.temperature for c in cards}
    if values == {None} or not values:
        return None
    if len(values) != 1:
        shown = ", ".join(f"{c.name} {c.version}: {c.temperature}" for c in cards)
        raise ValueError(f"ensemble members carry different temperatures ({shown})")
    return next(iter(values))


def temperature_for_models(
    models: Sequence[Mapping[str, Any]], cards: Sequence[ModelCard]
) -> float | None:
    """Temperature to apply to a run of `models`, from calibrated versions of the same weights.

    Parameters
    ----------
    models : sequence of mapping
        A run's ``settings["models"]``: ``{"name", "version", "sha256"}`` per member.
    cards : sequence of ModelCard
        Cards to search (e.g. every version in :func:`napari_histo.models.versions.model_dirs`).

    Returns
    -------
    float or None
        The temperature of the newest calibration that every member of the run
        has a card for with the *same weights* (SHA-256); None when there is none.
    """
    if not models:
        return None
    candidates: list[dict[float, str]] = []
    for model in models:
        found = {}
        for card in cards:
            if (
                card.temperature is not None
                and card.name == model.get("name")
                and card.sha256 == model.get("sha256")
            ):
                found[card.temperature] = max(found.get(card.temperature, ""), card.created)
        candidates.append(found)
    common = set(candidates[0]).intersection(*candidates[1:])
    if not common:
        return None
    return max(common, key=lambda t: max(c[t] for c in candidates))


def _copy_version(card_path: Path, card: ModelCard, new_card: ModelCard, out: Path) -> Path:
    """Write `new_card` with a byte-for-byte copy of `card`'s weights (same SHA-256)."""
    source = card_path.parent / card.weights_file
    data = source.read_bytes()
    if sha256(data).hexdigest() != card.sha256:
        raise WeightsError(f"{source}: SHA-256 differs from its card {card_path.name}")
    suffix = ".torchscript.pt" if card.format == "torchscript" else ".safetensors"
    stem = f"{new_card.name}-{new_card.version}"
    target = out / f"{stem}{suffix}"
    if target.exists():
        raise WeightsError(f"{target}: already exists; versions are immutable")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, data)
    saved = dataclasses.replace(new_card, weights_file=target.name, sha256=card.sha256)
    return write_card(out / f"{stem}.json", saved)


def write_calibrated_versions(
    card_paths: Sequence[str | os.PathLike[str]],
    result: CalibrationResult,
    out_dir: str | os.PathLike[str],
    *,
    note: str = "",
) -> list[Path]:
    """A new version of every member's card with the ensemble's temperature.

    Weights are unchanged: the weights file is copied byte for byte under the
    new version's name (same SHA-256, so :func:`temperature_for_models` finds it
    for runs made with the old version); the card records ``temperature``, ``parent_version`` and
    ``ece_before`` / ``ece_after`` / ``temperature`` in its ``metrics``.

    Parameters
    ----------
    card_paths : sequence of path
        The ensemble's member cards (the version that was calibrated).
    result : CalibrationResult
        From :func:`fit_calibration` on this ensemble's probabilities.
    out_dir : path
        Where the new versions go (e.g. :func:`napari_histo.models.versions.user_models_dir`).
    note : str
        Added to the cards' notes (e.g. which slides and split).

    Returns
    -------
    list of Path
        The new cards, in the order of `card_paths`.
    """
    if not isinstance(result, CalibrationResult):
        raise TypeError(f"`result` must be a CalibrationResult, got {type(result).__name__}")
    if isinstance(card_paths, str | os.PathLike) or not card_paths:
        raise ValueError("`card_paths` must be a non-empty sequence of card paths")
    out = Path(out_dir)
    metrics = {
        "temperature": round(result.temperature, 4),
        "ece_before": round(result.ece_before, 4),
        "ece_after": round(result.ece_after, 4),
    }
    written = []
    for path in (Path(p) for p in card_paths):
        card = read_card(path)
        version = next_version(card.version, taken_versions(card.name, [out, path.parent]))
        new_card = dataclasses.replace(
            card,
            version=version,
            parent_version=card.version,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            temperature=float(result.temperature),
            metrics={**card.metrics, **metrics},
            notes=(
                f"{card.notes} | Temperature-scaled from {card.name} {card.version} by "
                f"napari-histo: T = {result.temperature:.4f} fitted on {result.fit_px} "
                f"labelled px (ensemble mean), ECE {result.ece_before:.4f} -> "
                f"{result.ece_after:.4f} on {result.held_px} held-out px; same weights file."
                + (f" {note}" if note else "")
            ).lstrip(" |"),
        )
        written.append(_copy_version(path, card, new_card, out))
    return written
