"""Live inference core: viewport geometry, overlay placement, jobs, debounce, settings.

Plain Python (no Qt, no napari import): the dock widget
(:mod:`napari_histo.widgets.inference`) is a thin shell over this module, and
tests drive it directly.

Coordinate planes
-----------------
``l0``
    Level-0 slide pixels, ``(x, y)``; pixel ``k`` covers ``[k, k + 1)``.
``world``
    napari world coordinates in µm, ``(y, x)``; the slide layer has
    ``scale = (mpp_y, mpp_x)`` and ``translate = 0``, so napari puts the *centre*
    of level-0 pixel ``k`` at ``k * mpp`` and level-0 coordinate ``u`` at
    ``(u - 0.5) * mpp``.
``result``
    Result pixels ``(row, col)`` of a :class:`~napari_histo.io.store.ResultGeometry`;
    result pixel ``j`` covers level-0 ``[ox + j * ds, ox + (j + 1) * ds)``.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histo.frames import visible_region_l0
from napari_histo.generators import mapped
from napari_histo.live.requests import JobRequest, RunsJobs
from napari_histo.live.settings import (
    MODES,
    LiveSettings,
    load_settings,
    save_settings,
    settings_path,
)
from napari_histo.live.threads import in_own_thread

if TYPE_CHECKING:
    from napari_histo.inference.result import InferenceResult
    from napari_histo.io.store import ResultGeometry, ResultRun
    from napari_histo.models import LoadedModel

__all__ = [
    "MODES",
    "OVERLAY_ARRAYS",
    "PREVIEW_MEMBER",
    "CellUpdate",
    "Debouncer",
    "LiveController",
    "LiveSettings",
    "LiveUpdate",
    "follow_action",
    "load_settings",
    "save_settings",
    "settings_path",
    "stage_label",
]

#: Result arrays shown as layers.
OVERLAY_ARRAYS = ("probability", "aleatoric", "epistemic")
#: The member preferred for the progressive preview pass (the fastest packaged one);
#: when it is not among the chosen members, the first chosen member is used.
PREVIEW_MEMBER = "deeplabv3plus"


# -- geometry ----------------------------------------------------------------


def region_fraction(region: Sequence[int] | None, slide_dims: Sequence[int]) -> float:
    """Area of level-0 `region` ``(x, y, w, h)`` as a fraction of the slide (0 for None)."""
    if region is None:
        return 0.0
    width, height = slide_dims
    return (region[2] * region[3]) / float(width * height)


def follow_action(
    view: tuple[int, int, int, int] | None,
    running: tuple[int, int, int, int] | None,
    slide_dims: Sequence[int],
    *,
    max_fraction: float = 0.25,
) -> str:
    """What *follow* mode does when the (debounced) view becomes `view`.

    Parameters
    ----------
    view : (x, y, w, h) or None
        The new visible level-0 region (None: off the slide).
    running : (x, y, w, h) or None
        Region of the job in flight, None when idle.
    slide_dims : (int, int)
        Level-0 ``(width, height)``.
    max_fraction : float
        Views showing more than this fraction of the slide are not computed.

    Returns
    -------
    str
        ``"none"`` (nothing visible: cancel), ``"too_wide"`` (cancel and show the
        whole-slide result or a hint), ``"keep"`` (the running job already covers
        the view) or ``"restart"`` (cancel the running job, start one for `view`).
    """
    if view is None:
        return "none"
    if region_fraction(view, slide_dims) > max_fraction:
        return "too_wide"
    if running is not None:
        vx, vy, vw, vh = view
        rx, ry, rw, rh = running
        if rx <= vx and ry <= vy and vx + vw <= rx + rw and vy + vh <= ry + rh:
            return "keep"
    return "restart"


class Debouncer:
    """Report the latest value once no new one arrived for `delay_s` (time is passed in).

    Examples
    --------
    >>> d = Debouncer(0.3)
    >>> d.poke("a", now=0.0); d.poke("b", now=0.2)
    >>> d.poll(now=0.4) is None   # only 0.2 s since "b"
    True
    >>> d.poll(now=0.6)
    'b'
    >>> d.poll(now=5.0) is None   # reported once
    True
    """

    def __init__(self, delay_s: float = 0.3) -> None:
        if not delay_s >= 0:
            raise ValueError(f"`delay_s` must be >= 0, got {delay_s!r}")
        self.delay_s = float(delay_s)
        self._value: Any = None
        self._last: float | None = None

    @property
    def pending(self) -> bool:
        """True while a value waits to be reported."""
        return self._last is not None

    def poke(self, value: Any, now: float) -> None:
        """Record `value` (replacing any pending one) at time `now` (seconds)."""
        self._value = value
        self._last = float(now)

    def remaining(self, now: float) -> float | None:
        """Seconds until the pending value is due (0 if due now), None if none pending."""
        if self._last is None:
            return None
        return max(0.0, self._last + self.delay_s - float(now))

    def poll(self, now: float) -> Any:
        """The pending value if it is due (and forget it), else None."""
        if self._last is None or float(now) - self._last < self.delay_s:
            return None
        value, self._value, self._last = self._value, None, None
        return value

    def clear(self) -> None:
        """Drop the pending value."""
        self._value, self._last = None, None


# -- jobs --------------------------------------------------------------------
@dataclass(frozen=True)
class CellUpdate:
    """Values for one finished result cell: ``layer.data[rows, cols] = values[name]``."""

    rows: slice
    cols: slice
    values: dict[str, np.ndarray] = field(repr=False)


@dataclass(frozen=True)
class LiveUpdate:
    """One report of a live job (yielded on the worker thread, applied on the Qt thread).

    Attributes
    ----------
    stage : str
        ``"preview"`` or ``"full"``.
    done, total : int
        Tiles of the slide done / in total (the engine's count).
    elapsed_s : float
    eta_s : float or None
    cells : list of CellUpdate
        Result cells that became final, in result px.
    label : str
        What the stage computes, for layer names (:func:`stage_label`).
    """

    stage: str
    done: int
    total: int
    elapsed_s: float
    eta_s: float | None
    cells: list[CellUpdate] = field(default_factory=list, repr=False)
    label: str = ""


def cell_updates(
    geometry: ResultGeometry, cells: Sequence[tuple[int, int, dict[str, np.ndarray]]]
) -> list[CellUpdate]:
    """Turn the engine's ``Progress.cells`` into result-pixel slices with values."""
    out = []
    for row, col, values in cells:
        y0, y1, x0, x1 = geometry.cell_bounds(row, col)
        out.append(
            CellUpdate(
                slice(y0, y1),
                slice(x0, x1),
                {k: np.asarray(values[k])[: y1 - y0, : x1 - x0] for k in OVERLAY_ARRAYS},
            )
        )
    return out


def stage_label(stage: str, members: Sequence[str], tta: int) -> str:
    """What a stage shows, for layer names.

    Examples
    --------
    >>> stage_label("preview", ["resunet"], 1)
    'preview: resunet, no TTA'
    >>> stage_label("full", ["a", "b", "c"], 4)
    'ensemble ×3, TTA 4'
    """
    what = members[0] if len(members) == 1 else f"ensemble ×{len(members)}"
    text = f"{what}, " + ("no TTA" if tta == 1 else f"TTA {tta}")
    return f"preview: {text}" if stage == "preview" else text


class LiveController:
    """Live inference on one slide: geometry, models, store look-up and job generators.

    Parameters
    ----------
    slide_path : str or PathLike
        The slide (it must have mpp metadata).
    settings : LiveSettings, optional
    out_dir : str or PathLike, optional
        Result store directory (default beside the slide).
    models_dir : str or PathLike, optional
        Where model cards live (default: the packaged models).
    """

    def __init__(
        self,
        slide_path: str | os.PathLike[str],
        settings: LiveSettings | None = None,
        *,
        out_dir: str | os.PathLike[str] | None = None,
        models_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        from napari_histo.io.slide import Slide

        self.slide_path = Path(slide_path)
        self.settings = settings or LiveSettings()
        self.out_dir = out_dir
        self.models_dir = models_dir
        with Slide(self.slide_path) as slide:
            slide.require_mpp()
            self.slide_dims: tuple[int, int] = tuple(slide.dimensions)
            self.mpp: tuple[float, float] = (float(slide.mpp_y), float(slide.mpp_x))
            self.slide_mpp = float(slide.mpp)
        self._models: dict[Path, LoadedModel] = {}
        self._lock = threading.Lock()
        self._job_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LiveController({str(self.slide_path)!r}, {self.settings!r})"

    # -- models --------------------------------------------------------------
    def available_members(self) -> dict[str, Path]:
        """Model name → card path of its active version (the newest unless one was chosen)."""
        from napari_histo.models import read_card
        from napari_histo.models.versions import active_cards

        cards = active_cards(self.models_dir)  # tumour-ensemble members only, not e.g. nuclei:
        return {n: p for n, p in cards.items() if read_card(p).task == "segmentation"}

    def member_names(self, settings: LiveSettings | None = None) -> list[str]:
        """The members `settings` selects (all available when none is named)."""
        settings = settings or self.settings
        cards = self.available_members()
        names = list(settings.members) or list(cards)
        missing = [n for n in names if n not in cards]
        if missing:
            raise ValueError(f"unknown model(s) {missing}; available: {sorted(cards)}")
        return names

    def temperature(self, settings: LiveSettings | None = None) -> float | None:
        """The selected members' calibration temperature (their cards), None if uncalibrated.

        Members calibrated apart (different or missing temperatures) count as
        uncalibrated: no single temperature applies to their mean.
        """
        from napari_histo.models import read_card

        cards = self.available_members()
        temps = {read_card(cards[n]).temperature for n in self.member_names(settings)}
        return next(iter(temps)) if len(temps) == 1 else None

    def load_members(self, settings: LiveSettings | None = None) -> list[LoadedModel]:
        """Loaded members for `settings` (cached; thread-safe)."""
        from napari_histo.models import load_model

        cards = self.available_members()
        out = []
        with self._lock:
            for name in self.member_names(settings):
                card = cards[name]
                if card not in self._models:
                    self._models[card] = load_model(card)
                out.append(self._models[card])
        return out

    def warm_up(self, settings: LiveSettings | None = None) -> None:
        """Make the first Run as fast as the next: load the members, import the engine and
        the result store, and run the ensemble once on a blank batch of the engine's shape
        (the first forward of a process sets up its kernels)."""
        import torch

        from napari_histo.inference.engine import (
            default_batch_size,
            predict_batch,
            select_device,
        )

        settings = settings or self.settings
        members = self.load_members(settings)
        config = settings.engine_config()
        if select_device(config.device).type != "cpu" or members[0].card.patch_px > 1024:
            return  # a GPU warms up on its first batch (the engine moves the models there)
        patch = members[0].card.patch_px
        batch = config.batch_size or default_batch_size(torch.device("cpu"))
        for member in members:
            member.model.eval()
        predict_batch(
            members, np.zeros((batch, patch, patch, 3), np.uint8), tile_px=patch, tta=(0,),
            device=torch.device("cpu"), amp=config.amp, class_index=0,
        )  # fmt: skip

    # -- geometry ------------------------------------------------------------
    def expected_geometry(self, settings: LiveSettings | None = None) -> ResultGeometry:
        """The whole-slide result geometry the engine will use for `settings`."""
        from napari_histo.io.store import ResultGeometry
        from napari_histo.models import read_card
        from napari_histo.tiling import make_grid

        settings = settings or self.settings
        card = read_card(self.available_members()[self.member_names(settings)[0]])
        width, height = self.slide_dims
        grid = make_grid(
            (0, 0, width, height),
            slide_mpp=self.slide_mpp,
            model_mpp=card.input_mpp,
            tile_px=card.patch_px,
            overlap=float(settings.overlap),
        )
        return ResultGeometry(
            origin_l0=(0, 0),
            downsample=grid.scale,
            shape=(grid.region[3], grid.region[2]),
            cell_px=grid.stride_px,
            mpp=card.input_mpp,
        )

    def visible_region(
        self, center_um: Sequence[float], zoom: float, canvas_size_px: Sequence[int]
    ) -> tuple[int, int, int, int] | None:
        """:func:`visible_region_l0` for this slide."""
        return visible_region_l0(center_um, zoom, canvas_size_px, self.mpp, self.slide_dims)

    # -- store ---------------------------------------------------------------
    def existing_run(self, settings: LiveSettings | None = None) -> ResultRun | None:
        """The stored whole-slide run made with `settings`' members, TTA and overlap, if any."""
        from napari_histo.errors import StoreError
        from napari_histo.io.store import ResultStore, default_store_path, slide_identity
        from napari_histo.models import read_card
        from napari_histo.stain import resolve as resolve_stain

        settings = settings or self.settings
        path = default_store_path(self.slide_path, self.out_dir)
        if not path.exists():
            return None
        cards = self.available_members()
        member_cards = [read_card(cards[n]) for n in self.member_names(settings)]
        wanted = [(c.name, c.version) for c in member_cards]
        stain = resolve_stain(settings.stain, member_cards)
        wanted_stain = stain.spec() if stain is not None else None
        identity = slide_identity(self.slide_path, self.slide_dims, self.slide_mpp)
        try:
            store = ResultStore(path, identity, mode="r")
            runs = list(store.runs())
        except StoreError as err:
            warnings.warn(f"ignoring result store: {err}", UserWarning, stacklevel=2)
            return None
        width, height = self.slide_dims
        for run_ in runs:
            s = run_.settings
            models = [(m["name"], m["version"]) for m in s.get("models", [])]
            if (
                models == wanted
                and len(s.get("tta", [])) == settings.tta
                and math.isclose(float(s.get("overlap", -1)), float(settings.overlap))
                and list(s.get("region_l0", [])) == [0, 0, width, height]
                and _stain_spec(s.get("stain")) == wanted_stain
            ):
                return run_
        return None

    def load_existing(
        self, settings: LiveSettings | None = None
    ) -> tuple[ResultGeometry, dict[str, np.ndarray], bool] | None:
        """Arrays of the stored run for `settings`: ``(geometry, {name: array}, complete)``."""
        run_ = self.existing_run(settings)
        if run_ is None:
            return None
        arrays = {name: np.asarray(run_.array(name)[...], np.float32) for name in OVERLAY_ARRAYS}
        return run_.geometry, arrays, run_.complete

    # -- jobs ----------------------------------------------------------------
    def preview_settings(self, settings: LiveSettings | None = None) -> LiveSettings | None:
        """The fast first pass for `settings` (one member, TTA 1), None when not wanted.

        The member is :data:`PREVIEW_MEMBER` when chosen, else the first chosen
        member; None when preview is off or the full run is no slower than that.
        """
        settings = settings or self.settings
        if not settings.preview:
            return None
        names = self.member_names(settings)
        member = PREVIEW_MEMBER if PREVIEW_MEMBER in names else names[0]
        fast = replace(settings, members=(member,), tta=1, preview=False)
        if names == [member] and settings.tta == 1:
            return None
        return fast

    def job_request(
        self,
        settings: LiveSettings | None = None,
        *,
        within: Sequence[int] | None = None,
        centre: tuple[float, float] | None = None,
        nice: int = 0,
    ) -> JobRequest:
        """What a worker process needs to run :meth:`job` (or prepare for it) on this slide."""
        return JobRequest(
            slide_path=str(self.slide_path),
            out_dir=None if self.out_dir is None else str(self.out_dir),
            models_dir=None if self.models_dir is None else str(self.models_dir),
            settings=settings or self.settings,
            within=None if within is None else tuple(int(v) for v in within),
            centre=centre,
            slide_mpp=self.slide_mpp,
            slide_dims=self.slide_dims,
            nice=nice,
        )

    def job(
        self,
        *,
        within: Sequence[int] | None = None,
        centre: tuple[float, float] | None = None,
        cancel: threading.Event | None = None,
        settings: LiveSettings | None = None,
        nice: int = 0,
        worker: RunsJobs | None = None,
    ) -> Generator[LiveUpdate, None, InferenceResult]:
        """Run inference (viewport with `within`, else whole slide); yields :class:`LiveUpdate`.

        With ``settings.preview`` a first pass of :meth:`preview_settings` (stage
        ``"preview"``) precedes the full ensemble (stage ``"full"``), which
        overwrites the preview cell by cell. Finished cells are in the store
        either way, so a cancelled job loses at most one batch of work.
        torch's thread count is left as it is: the owner of the worker thread sets
        it (:func:`napari_histo.widgets.jobs.configure_torch_threads`).
        With `nice` > 0 the work runs in a thread of its own ("histo-job") at that
        lower priority (Linux; its reader and writer threads inherit it), so
        background work yields the CPU to the Qt thread; the generator relays its
        updates and, when closed, cancels and joins it.
        With a `worker` (:class:`~napari_histo.live.worker.JobProcess`) the same job
        runs in that process instead (which writes the store); this generator relays
        its updates, and raises :class:`~napari_histo.live.worker.WorkerDied` when
        the process ends mid-job.
        """
        settings = settings or self.settings
        cancel = cancel or threading.Event()
        if worker is not None:
            request = self.job_request(settings, within=within, centre=centre, nice=nice)
            return (yield from worker.run(request, cancel))
        stages = [("full", settings)]
        fast = self.preview_settings(settings)
        if fast is not None:
            stages.insert(0, ("preview", fast))
        # One job at a time per controller: a superseded job stops after its batch,
        # and two runs must not create the same store run at once.
        while not self._job_lock.acquire(timeout=0.05):
            if cancel.is_set():
                return None
        try:
            if not nice:
                return (yield from self._stages(stages, within, centre, cancel))
            return (
                yield from in_own_thread(
                    lambda: self._stages(stages, within, centre, cancel), cancel, nice
                )
            )
        finally:
            self._job_lock.release()

    def _stages(
        self, stages, within, centre, cancel
    ) -> Generator[LiveUpdate, None, InferenceResult | None]:
        from napari_histo.inference.engine import infer_slide

        result = None
        for stage, stage_settings in stages:
            geometry = self.expected_geometry(stage_settings)
            # Cells the full ensemble already has are not overwritten by the preview.
            full_run = self.existing_run(stages[-1][1]) if stage == "preview" else None
            keep = None if full_run is None else full_run.done
            label = stage_label(stage, self.member_names(stage_settings), stage_settings.tta)
            gen = infer_slide(
                self.slide_path,
                self.load_members(stage_settings),
                within=None if within is None else [int(v) for v in within],
                centre=centre,
                config=stage_settings.engine_config(),
                out_dir=self.out_dir,
                cancel=cancel,
            )

            def update(progress, stage=stage, geometry=geometry, keep=keep, label=label):
                cells = [c for c in progress.cells if keep is None or not keep[c[:2]]]
                return LiveUpdate(
                    stage,
                    progress.done,
                    progress.total,
                    progress.elapsed_s,
                    progress.eta_s,
                    cell_updates(geometry, cells),
                    label,
                )

            try:
                result = yield from mapped(gen, update)
            finally:
                # If this job is closed or abandoned mid-run, stop the engine now
                # (its finally saves finished cells and joins its threads) instead
                # of whenever the garbage collector gets to it.
                gen.close()
            if cancel.is_set():
                break
        return result


def _stain_spec(stored: object) -> dict[str, Any] | None:
    """Method and target of a stored run's ``stain`` setting (None when not normalised)."""
    if not isinstance(stored, dict):
        return None
    return {"method": stored.get("method"), "target": stored.get("target")}
