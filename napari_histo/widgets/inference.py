"""The "Tumor inference" dock widget: viewport / follow / whole-slide inference in napari.

A thin Qt shell over :class:`napari_histo.live.controller.LiveController`: it reads the
settings from its controls, starts the controller's job generator in a
``thread_worker`` and hands the cells it yields to
:class:`~napari_histo.widgets._overlays.OverlayLayers` on the Qt thread, which
writes them into multiscale buffers. Layer refreshes are coalesced by a timer
(at most every 250 ms, slower when refreshes are costly) and skipped when the
changed cells are off-screen. Jobs use all cores but one for torch; whole-slide
jobs also run at a lower priority (see docs/live.md, "Threads and priority").
"""

from __future__ import annotations

import time
import weakref
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QWidget

from napari_histo.errors import HistoError
from napari_histo.frames import layer_mpp
from napari_histo.generators import drive
from napari_histo.live.controller import (
    OVERLAY_ARRAYS,
    Debouncer,
    LiveController,
    LiveSettings,
    LiveUpdate,
    follow_action,
    load_settings,
    region_fraction,
    save_settings,
    stage_label,
)
from napari_histo.live.worker import JobProcess, prepare_live
from napari_histo.widgets._common import (
    MppField,
    ShutdownMixin,
    WorkerProcessMixin,
    topmost_slide_layer,
)
from napari_histo.widgets._controls import ControlsMixin, fmt_s
from napari_histo.widgets._overlays import LAYER_NAMES, TAG, OverlayLayers
from napari_histo.widgets.jobs import JobRunner

if TYPE_CHECKING:
    import napari

__all__ = [
    "BACKGROUND_NICE",
    "FOLLOW_MAX_FRACTION",
    "LAYER_NAMES",
    "InferenceWidget",
]

_REFRESH_MS = 250
_REFRESH_MAX_MS = 2000
#: Overlay refreshes wait while the view moved less than this ago (s)...
REFRESH_QUIET_S = 0.4
#: ...but not longer than this (s): a long pan still sees the run progress.
REFRESH_DEFER_MAX_S = 2.0
_FOLLOW_DEBOUNCE_S = 0.3
#: In follow mode, views showing more of the slide than this are not computed.
FOLLOW_MAX_FRACTION = 0.25
#: Nice increment of whole-slide jobs (Linux).
BACKGROUND_NICE = 10


def _prepare(process: JobProcess, request) -> None:
    """Start `process` and load `request`'s members in it (a Run then starts at once)."""
    import threading

    drive(process.call(prepare_live, {"request": request}, threading.Event()))


class InferenceWidget(ControlsMixin, WorkerProcessMixin, ShutdownMixin, QWidget):
    """Dock widget running the tumor ensemble on the visible region or the whole slide.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    settings_file : str or Path, optional
        Where settings persist (default :func:`napari_histo.live.controller.settings_path`).
    out_dir : str or Path, optional
        Result store directory (default beside the slide).
    """

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        *,
        settings_file: str | Path | None = None,
        out_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._settings_file = settings_file
        self._out_dir = out_dir
        self._controller: LiveController | None = None
        self.jobs = JobRunner()
        self._prepare_jobs = JobRunner()  # warms the worker when a slide opens
        self._ood_jobs = JobRunner()  # the staining check of each opened slide
        self._job_region: tuple[int, int, int, int] | None = None
        self._overlays: OverlayLayers | None = None
        self._preview_cells: set[tuple[int, int]] = set()
        self._full_label = ""
        self._pending_progress: tuple[int, int, str, str] | None = None
        self._closed = False
        self._jobs_started = 0
        self._debouncer = Debouncer(_FOLLOW_DEBOUNCE_S)
        self.last_result = None
        self.first_cell_s: float | None = None
        self._job_t0 = 0.0

        self._build_ui(load_settings(settings_file))
        # Out-of-distribution check of each opened slide (napari_histo.ood).
        self.ood_label = QLabel("")
        self.ood_label.setWordWrap(True)
        self.layout().insertWidget(1, self.ood_label)
        self.ood_score: float | None = None
        # The slide's µm/px: shown, and set (saved beside the slide) here.
        self.mpp_field = MppField(self.viewer, "Tumor inference dock", self._on_mpp_changed)
        self.layout().insertWidget(1, self.mpp_field)

        self._camera_moved_at = -float("inf")  # time.monotonic() of the last pan or zoom
        self._refresh_deferred_at: float | None = None  # first tick an overlay refresh waited
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setInterval(_REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh_dirty)
        self._follow_timer = QTimer(self)
        self._follow_timer.setSingleShot(True)
        self._follow_timer.timeout.connect(self._on_follow_timer)

        camera = self.viewer.scene.camera
        camera.events.center.connect(self._on_camera)
        camera.events.zoom.connect(self._on_camera)
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)
        self._connect_viewer(self._on_layers_changed)
        self._on_layers_changed()

    def _on_settings_changed(self, *_: Any) -> None:
        if not any(box.isChecked() for box in self.member_boxes.values()):
            self.set_status("choose at least one ensemble member")
            self.run_button.setEnabled(False)
            return
        self.run_button.setEnabled(True)
        settings = self.settings()
        save_settings(settings, self._settings_file)
        if self._controller is not None and not self.running:
            old = self._controller.settings
            self._controller.settings = settings
            if (old.members, old.tta, old.overlap, old.stain) != (
                settings.members,
                settings.tta,
                settings.overlap,
                settings.stain,
            ):
                self._show_existing()
            elif old.preview != settings.preview:
                self._overlays.set_label(self._label(settings))

    def _on_threshold_changed(self, *_: Any) -> None:
        self._on_settings_changed()
        if self._overlays is not None:
            self._overlays.set_threshold(self.threshold_spin.value())

    # -- slide and layers -----------------------------------------------------
    def slide_layer(self):
        """The topmost layer opened by napari-histo's reader (metadata has ``path``), or None."""
        return topmost_slide_layer(self.viewer.layers, TAG)

    def _on_mpp_changed(self) -> None:
        """The slide's µm/px changed (this dock's field or another's): new geometry.

        The overlays made at the old scale are removed (their result grid no
        longer fits), and those stored for the new scale, if any, are shown.
        """
        layer = self.slide_layer()
        if (
            self._controller is None
            or layer is None
            or (layer_mpp(layer.metadata) != self._controller.mpp)
        ):
            if self._overlays is not None:
                if self.running:
                    self.cancel()
                self._overlays.remove()
            self._on_layers_changed(force=True)

    def _on_layers_changed(self, *_: Any, force: bool = False) -> None:
        if self._closed:
            return
        shown = topmost_slide_layer(self.viewer.layers, TAG, need_mpp=False)
        self.mpp_field.bind(shown)
        layer = self.slide_layer()
        path = Path(layer.metadata["path"]) if layer is not None else None
        if not force and self._controller is not None and path == self._controller.slide_path:
            return
        if self.running:
            self.cancel()
        self._controller = None
        self._overlays = None
        if path is None:
            self.slide_label.setText(
                "no slide: open one with the napari-histo reader"
                if shown is None
                else f"Slide: {Path(shown.metadata['path']).name}: its µm/px is unknown; "
                "set it below to run the models"
            )
            return
        self._controller = LiveController(path, self.settings(), out_dir=self._out_dir)
        units = tuple(str(u) for u in layer.units)
        self._overlays = OverlayLayers(self.viewer, self._controller.mpp, units)
        self._overlays.threshold = self.threshold_spin.value()
        self.slide_label.setText(f"Slide: {path.name}")
        self._check_ood(path)
        self._show_existing()
        self._prepare_worker()

    def _prepare_worker(self) -> None:
        """Start the worker and load the chosen members now, not at the first Run."""
        settings = self.settings()
        if not settings.worker_process:
            return
        self._prepare_jobs.call(
            partial(_prepare, self.job_process, self._controller.job_request(settings))
        )  # errors: a Run reports what is wrong

    def _check_ood(self, path: Path) -> None:
        """Compare the slide's staining with the models' training data, off the Qt thread."""
        from napari_histo.inference.stain_check import slide_ood

        cards = list(self._controller.available_members().values())
        self.ood_score = None
        self.ood_label.setStyleSheet("")
        self.ood_label.setText("Slide vs training data: checking…")
        ref_self = weakref.ref(self)

        def done(result: tuple[float, str]) -> None:
            me = ref_self()
            if me is None or me._controller is None:
                return
            if me._controller.slide_path != path:
                return  # another slide was opened meanwhile
            me.ood_score, text = result
            me.ood_label.setStyleSheet("color: #f0a030" if result[0] > 1 else "")
            me.ood_label.setText(text)

        def failed(exc: BaseException) -> None:
            me = ref_self()
            if me is not None:
                me.ood_label.setText(f"Slide vs training data: not compared ({exc})")

        self._ood_jobs.call(partial(slide_ood, path, cards), on_return=done, on_error=failed)

    @property
    def controller(self) -> LiveController | None:
        return self._controller

    @property
    def overlays(self) -> OverlayLayers | None:
        """The overlay layers of the current slide."""
        return self._overlays

    @property
    def refresh_costs_ms(self) -> list[float]:
        """Qt-thread ms of each overlay refresh so far (this slide)."""
        return [] if self._overlays is None else self._overlays.refresh_costs_ms

    def _layer(self, key: str):
        return None if self._overlays is None else self._overlays.layer(key)

    def _label(self, settings: LiveSettings) -> str:
        """What the probability layer of a full run shows ("" unless progressive or calibrated)."""
        label = ""
        if settings.preview:
            names = self._controller.member_names(settings)
            label = stage_label("full", names, settings.tta)
        temperature = self._overlays.temperature if self._overlays is not None else None
        if temperature is not None:
            label = (
                f"{label}, calibrated T = {temperature:.2f}"
                if label
                else (f"calibrated T = {temperature:.2f}")
            )
        return label

    def _temperature(self) -> float | None:
        """The selected members' calibration temperature, None when uncalibrated or unknown."""
        try:
            return self._controller.temperature()
        except (HistoError, OSError, ValueError):
            return None

    def _show_existing(self) -> None:
        """Show the stored results for the current settings (zeros when there are none)."""
        controller, overlays = self._controller, self._overlays
        run_ = controller.existing_run()
        overlays.temperature = self._temperature()
        overlays.set_label(self._label(controller.settings))
        if run_ is None:
            # Empty layers now, so that Run starts computing at once.
            overlays.ensure(controller.expected_geometry(), reset=True)
            self.set_status("no results yet for these settings: press Run")
            return
        if run_.complete:
            overlays.show_run(run_)  # lazily, from the store's display pyramid
            self.set_status("whole-slide result loaded")
            return
        # Lazy zarr arrays: capped buffers read them a strip at a time.
        arrays = {name: run_.array(name) for name in OVERLAY_ARRAYS}
        overlays.ensure(run_.geometry, arrays=arrays)
        self.set_status("partial results loaded from the store")

    # -- running --------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while a job's thread is alive."""
        return self.jobs.running

    @property
    def busy(self) -> bool:
        """True until the last job's thread is done and its signals are handled."""
        return self.jobs.busy

    def current_region(self) -> tuple[int, int, int, int] | None:
        """Level-0 ``(x, y, w, h)`` visible now, or None."""
        if self._controller is None:
            return None
        camera = self.viewer.scene.camera
        return self._controller.visible_region(camera.center, camera.zoom, self.viewer.canvas.size)

    def run(self) -> None:
        """Start a job for the current mode (cancelling one in flight)."""
        if self._controller is None:
            self.set_status("no slide: open one with the napari-histo reader")
            return
        settings = self.settings()
        save_settings(settings, self._settings_file)
        self._controller.settings = settings
        if settings.mode == "whole slide":
            self._start(None)
            return
        region = self.current_region()
        if region is None:
            self.set_status("the view shows no part of the slide")
            return
        self._start(region)

    def _start(self, region: tuple[int, int, int, int] | None) -> None:
        controller = self._controller
        settings = controller.settings
        if self._temperature() != self._overlays.temperature:
            # Members changed during the last job: their buffers and calibration go too.
            self._show_existing()
        self._overlays.ensure(controller.expected_geometry(settings))
        self._full_label = self._label(settings)
        self._preview_cells = set()
        fast = controller.preview_settings(settings)
        self._overlays.set_label(
            self._full_label if fast is None else stage_label("preview", fast.members, fast.tta)
        )
        centre = None if region is None else (region[0] + region[2] / 2, region[1] + region[3] / 2)
        self._job_region = region
        self._jobs_started += 1
        self.first_cell_s = None
        self._job_t0 = time.monotonic()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("starting…")
        self.jobs.start(
            lambda cancel: controller.job(
                within=region,
                centre=centre,
                cancel=cancel,
                settings=settings,
                # Whole-slide runs are background work: at a lower priority they leave
                # the CPU to the Qt thread (and to viewport runs) when both want it.
                nice=BACKGROUND_NICE if region is None else 0,
                worker=self.job_process if settings.worker_process else None,
            ),
            on_yield=self._on_update,
            on_return=self._on_returned,
            on_error=self._on_errored,
            on_finish=self._on_finished,
            torch=not settings.worker_process,
        )
        what = "whole slide" if region is None else f"{region[2]}×{region[3]} px view"
        self.set_status(f"running on the {what}…")
        self.cancel_button.setEnabled(True)
        self._refresh_timer.start()

    def cancel(self) -> None:
        """Stop the job in flight after its current batch (finished cells are kept)."""
        if self.jobs.cancel():
            self.set_status("cancelling…")

    def _on_update(self, update: LiveUpdate) -> None:
        # (Job callbacks: the runner delivers none after shutdown.)
        if self._overlays is None:
            return
        if self.first_cell_s is None and update.cells:
            self.first_cell_s = time.monotonic() - self._job_t0
        preview = update.stage == "preview"
        # A preview has no uncertainty to show: it only replaces the probability.
        # The preview stage is one member: the ensemble's temperature is not its own.
        self._overlays.apply(
            update.cells, ("probability",) if preview else OVERLAY_ARRAYS, calibrated=not preview
        )
        keys = {(c.rows.start, c.cols.start) for c in update.cells}
        if preview:
            self._preview_cells |= keys
        else:
            self._preview_cells -= keys
            label = self._full_label
            if self._preview_cells and label:
                label += " + preview"
            self._overlays.set_label(label)
        stage = "fast preview" if preview else "ensemble"
        # Shown at the next refresh tick: one progress repaint per tick, not per batch.
        self._pending_progress = (
            update.total,
            update.done,
            f"%v/%m tiles, ETA {fmt_s(update.eta_s)}",
            f"{stage}: {update.done}/{update.total} tiles of the slide, "
            f"{fmt_s(update.elapsed_s)} elapsed, ETA {fmt_s(update.eta_s)}",
        )

    def _flush_progress(self) -> None:
        if self._pending_progress is None:
            return
        total, done, fmt, status = self._pending_progress
        self._pending_progress = None
        self.progress_bar.setRange(0, max(1, total))
        self.progress_bar.setValue(done)
        self.progress_bar.setFormat(fmt)
        self.set_status(status)

    def _refresh_dirty(self) -> None:
        """Refresh the overlays whose changed cells are on screen; adapt the interval.

        At most every 250 ms; when refreshes cost more (slicing on the Qt thread
        with synchronous slicing), the interval grows to keep them under ~10 % of
        the Qt thread's time. Refreshes wait while the view moves
        (:data:`REFRESH_QUIET_S`), for at most :data:`REFRESH_DEFER_MAX_S`.
        """
        if self._closed or self._overlays is None:
            return
        self._flush_progress()
        now = time.monotonic()
        if self._overlays.dirty and now - self._camera_moved_at < REFRESH_QUIET_S:
            # While the user pans or zooms, napari re-slices the overlays itself where
            # the view moves (with the newest cells); a re-slice of the view on top
            # would hold the Qt thread between their frames.
            if self._refresh_deferred_at is None:
                self._refresh_deferred_at = now
            if now - self._refresh_deferred_at < REFRESH_DEFER_MAX_S:
                return
        self._refresh_deferred_at = None
        cost_ms = self._overlays.refresh()
        self._refresh_timer.setInterval(int(min(_REFRESH_MAX_MS, max(_REFRESH_MS, 10 * cost_ms))))

    def _on_returned(self, result) -> None:
        self.last_result = result
        if result is None:
            return
        self._flush_progress()
        if result.tiles_run == 0 and not result.cancelled:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(1)
            where = "whole slide" if self._job_region is None else "view"
            self.set_status(f"{where}: nothing to compute, the results were in the store")
            return
        if result.cancelled:
            self.set_status(
                f"cancelled after {result.tiles_run} tiles ({result.seconds:.1f} s); "
                "finished cells are kept and the run resumes next time"
            )
        else:
            where = "whole slide" if self._job_region is None else "view"
            self.set_status(
                f"{where} done: {result.tiles_run} tiles in {result.seconds:.1f} s "
                f"on {result.device} ({result.precision})"
                + (" — whole slide complete" if result.run.complete else "")
            )

    def _on_errored(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        self._flush_progress()
        message = f"inference failed: {exc}"
        self.set_status(message)
        show_error(message)

    def _on_finished(self) -> None:
        self._refresh_timer.stop()
        self._refresh_deferred_at = None
        self._flush_progress()
        if self._overlays is not None:
            self._overlays.update_thumbnails()
        self.cancel_button.setEnabled(False)
        self.progress_bar.setFormat("%v/%m tiles")

    # -- follow mode ----------------------------------------------------------
    def _on_camera(self, *_: Any) -> None:
        self._camera_moved_at = time.monotonic()
        if self._closed or self._controller is None or self.mode_combo.currentText() != "follow":
            return
        self._debouncer.poke(True, self._camera_moved_at)
        self._follow_timer.start(int(_FOLLOW_DEBOUNCE_S * 1000))

    def _on_follow_timer(self) -> None:
        now = time.monotonic()
        if self._debouncer.poll(now) is None:
            remaining = self._debouncer.remaining(now)
            if remaining is not None:
                self._follow_timer.start(max(1, int(remaining * 1000)))
            return
        self.follow_now()

    def follow_now(self) -> str:
        """Apply follow mode to the current view now; returns :func:`follow_action`'s answer."""
        if self._controller is None:
            return "none"
        region = self.current_region()
        running = self._job_region if self.running else None
        action = follow_action(
            region, running, self._controller.slide_dims, max_fraction=FOLLOW_MAX_FRACTION
        )
        if action in ("none", "too_wide"):
            self.jobs.cancel()
            if action == "too_wide":
                run_ = self._controller.existing_run()
                if run_ is not None and run_.complete:
                    if not self._overlays.from_store:
                        self._overlays.show_run(run_)  # lazily, from the display pyramid
                    self.set_status("zoomed out: showing the whole-slide result")
                else:
                    pct = 100 * region_fraction(region, self._controller.slide_dims)
                    self.set_status(
                        f"the view shows {pct:.0f} % of the slide: zoom in or run the whole slide"
                    )
        elif action == "restart":
            self._start(region)
        return action

    # -- hover readout --------------------------------------------------------
    def _on_mouse_move(self, viewer, event) -> None:
        if self._closed or self._overlays is None:
            return
        self.readout.setText(self._overlays.readout(event.position))

    @property
    def preparing(self) -> bool:
        """True while the worker starts and loads the models for the opened slide."""
        return self._prepare_jobs.busy

    @property
    def settling(self) -> bool:
        """True while work started by opening a slide runs: :attr:`preparing` or the
        staining check (:mod:`napari_histo.ood`)."""
        return self._prepare_jobs.busy or self._ood_jobs.busy

    # -- teardown -------------------------------------------------------------
    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Cancel the job, wait for its threads, and unbind from the viewer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._refresh_timer.stop()
        self._follow_timer.stop()
        self._close_worker(timeout_s)
        self.jobs.shutdown(timeout_s)
        self._prepare_jobs.shutdown(timeout_s)
        self._ood_jobs.shutdown(timeout_s)
        self.mpp_field.unbind()
        camera = self.viewer.scene.camera
        camera.events.center.disconnect(self._on_camera)
        camera.events.zoom.disconnect(self._on_camera)
        if self._on_mouse_move in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(self._on_mouse_move)
        self._disconnect_viewer(self._on_layers_changed)
