"""The "Tumor inference" dock widget: viewport / follow / whole-slide inference in napari.

A thin Qt shell over :class:`napari_histo.live.LiveController`: it reads the
settings from its controls, starts the controller's job generator in a
``thread_worker`` and writes the cells it yields into the overlay layers on the
Qt thread. Layer refreshes are coalesced by a short timer so a fast model does
not flood the canvas with texture uploads.
"""

from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_histo.live import (
    MODES,
    OVERLAY_ARRAYS,
    Debouncer,
    LiveController,
    LiveSettings,
    LiveUpdate,
    follow_action,
    load_settings,
    overlay_transform,
    region_fraction,
    save_settings,
)

if TYPE_CHECKING:
    import napari

__all__ = ["LAYER_NAMES", "InferenceWidget"]

#: Layer name of each result array, plus the outline and the preview.
LAYER_NAMES = {
    "probability": "tumor probability",
    "aleatoric": "aleatoric uncertainty",
    "epistemic": "epistemic uncertainty",
    "outline": "tumor outline",
    "preview": "tumor probability (fast preview)",
}
_TAG = "napari_histo_live"  # layer metadata key marking our layers
_REFRESH_MS = 150
_REFRESH_MAX_MS = 2000
_FOLLOW_DEBOUNCE_S = 0.3
#: In follow mode, views showing more of the slide than this are not computed.
FOLLOW_MAX_FRACTION = 0.25


def _colormaps():
    from napari.utils.colormaps import Colormap

    tumor = Colormap(
        colors=[[0.4, 0, 0, 0], [0.8, 0, 0.1, 0.15], [1, 0.2, 0, 0.65], [1, 1, 0.2, 0.9]],
        controls=[0, 0.3, 0.6, 1],
        name="histo tumor",
    )
    uncertainty = Colormap(
        colors=[[0, 0.2, 0.5, 0], [0, 0.6, 1, 0.5], [0.6, 1, 1, 0.9]],
        controls=[0, 0.5, 1],
        name="histo uncertainty",
    )
    return tumor, uncertainty


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class _CloseWatcher(QObject):
    """Event filter calling `callback` when the watched window closes."""

    def __init__(self, callback) -> None:
        super().__init__()
        self._callback = callback

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Close:
            self._callback()
        return False


class InferenceWidget(QWidget):
    """Dock widget running the tumor ensemble on the visible region or the whole slide.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    settings_file : str or Path, optional
        Where settings persist (default :func:`napari_histo.live.settings_path`).
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
        self._worker = None
        self._cancel: threading.Event | None = None
        self._job_finished: threading.Event | None = None
        self._all_finished: list[threading.Event] = []
        self._all_cancels: list[threading.Event] = []
        self._job_region: tuple[int, int, int, int] | None = None
        self._dirty: set[str] = set()
        self._closed = False
        self._jobs_started = 0
        self._close_watcher: _CloseWatcher | None = None
        self._watched: QWidget | None = None
        self._debouncer = Debouncer(_FOLLOW_DEBOUNCE_S)
        self.last_result = None
        self.first_cell_s: float | None = None
        self.refresh_costs_ms: list[float] = []
        self._job_t0 = 0.0

        self._build_ui(load_settings(settings_file))

        self._refresh_timer = QTimer(self)
        self._refresh_timer.setInterval(_REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh_dirty)
        self._follow_timer = QTimer(self)
        self._follow_timer.setSingleShot(True)
        self._follow_timer.timeout.connect(self._on_follow_timer)

        camera = self.viewer.scene.camera
        camera.events.center.connect(self._on_camera)
        camera.events.zoom.connect(self._on_camera)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.viewer.mouse_move_callbacks.append(self._on_mouse_move)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)
        self._on_layers_changed()

    # -- UI -------------------------------------------------------------------
    def _build_ui(self, settings: LiveSettings) -> None:
        from napari_histo.models import latest_cards

        layout = QVBoxLayout(self)
        self.slide_label = QLabel("no slide")
        self.slide_label.setWordWrap(True)
        layout.addWidget(self.slide_label)

        members_box = QGroupBox("Ensemble members")
        members_layout = QVBoxLayout(members_box)
        self.member_boxes: dict[str, QCheckBox] = {}
        for name, card in latest_cards().items():
            box = QCheckBox(f"{name} ({card.stem.split('-', 1)[-1]})")
            box.setChecked(not settings.members or name in settings.members)
            box.toggled.connect(self._on_settings_changed)
            members_layout.addWidget(box)
            self.member_boxes[name] = box
        layout.addWidget(members_box)

        form = QFormLayout()
        self.tta_combo = QComboBox()
        self.tta_combo.addItems(["1", "2", "4", "8"])
        self.tta_combo.setCurrentText(str(settings.tta))
        form.addRow("TTA", self.tta_combo)
        self.overlap_spin = QDoubleSpinBox()
        self.overlap_spin.setRange(0.0, 0.75)
        self.overlap_spin.setSingleStep(0.25)
        self.overlap_spin.setValue(settings.overlap)
        form.addRow("Overlap", self.overlap_spin)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda"])
        self.device_combo.setCurrentText(settings.device)
        form.addRow("Device", self.device_combo)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 256)
        self.batch_spin.setSpecialValueText("auto")
        self.batch_spin.setValue(settings.batch_size)
        form.addRow("Batch size", self.batch_spin)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(list(MODES))
        self.mode_combo.setCurrentText(settings.mode)
        form.addRow("Mode", self.mode_combo)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.05, 0.95)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(settings.threshold)
        form.addRow("Outline at", self.threshold_spin)
        self.preview_box = QCheckBox("fast preview first (one member, no TTA)")
        self.preview_box.setChecked(settings.preview)
        form.addRow(self.preview_box)
        layout.addLayout(form)
        for combo in (self.tta_combo, self.device_combo, self.mode_combo):
            combo.currentTextChanged.connect(self._on_settings_changed)
        for spin in (self.overlap_spin, self.batch_spin):
            spin.valueChanged.connect(self._on_settings_changed)
        self.threshold_spin.valueChanged.connect(self._on_threshold_changed)
        self.preview_box.toggled.connect(self._on_settings_changed)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)

        # A widget-local bar (napari.utils.progress was tried first; see docs/live.md
        # "Known issue" on GUI-run slowness, which a local bar did not cure either).
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("idle")
        self.progress_bar.setTextVisible(True)
        layout.addWidget(self.progress_bar)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.readout = QLabel("")
        self.readout.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.readout)
        layout.addStretch(1)

    def settings(self) -> LiveSettings:
        """The settings the controls show."""
        chosen = tuple(n for n, box in self.member_boxes.items() if box.isChecked())
        return LiveSettings(
            members=chosen if len(chosen) < len(self.member_boxes) else (),
            tta=int(self.tta_combo.currentText()),
            overlap=round(float(self.overlap_spin.value()), 4),
            device=self.device_combo.currentText(),
            batch_size=int(self.batch_spin.value()),
            mode=self.mode_combo.currentText(),
            threshold=round(float(self.threshold_spin.value()), 4),
            preview=self.preview_box.isChecked(),
        )

    def set_settings(self, settings: LiveSettings) -> None:
        """Show `settings` in the controls (and persist them)."""
        for name, box in self.member_boxes.items():
            box.setChecked(not settings.members or name in settings.members)
        self.tta_combo.setCurrentText(str(settings.tta))
        self.overlap_spin.setValue(settings.overlap)
        self.device_combo.setCurrentText(settings.device)
        self.batch_spin.setValue(settings.batch_size)
        self.mode_combo.setCurrentText(settings.mode)
        self.threshold_spin.setValue(settings.threshold)
        self.preview_box.setChecked(settings.preview)
        self._on_settings_changed()

    def set_status(self, text: str) -> None:
        self.status.setText(text)

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
            if (old.members, old.tta, old.overlap) != (
                settings.members,
                settings.tta,
                settings.overlap,
            ):
                self._show_existing()

    def _on_threshold_changed(self, *_: Any) -> None:
        self._on_settings_changed()
        if LAYER_NAMES["outline"] in self.viewer.layers:
            prob = self._layer("probability")
            if prob is not None:
                outline = self.viewer.layers[LAYER_NAMES["outline"]]
                outline.data[...] = prob.data >= self.threshold_spin.value()
                outline.refresh()

    # -- slide and layers -----------------------------------------------------
    def slide_layer(self):
        """The topmost layer opened by napari-histo's reader (metadata has ``path``), or None."""
        for layer in reversed(self.viewer.layers):
            meta = layer.metadata
            if meta.get("path") and meta.get("mpp") and not meta.get(_TAG):
                return layer
        return None

    def _on_layers_changed(self, *_: Any) -> None:
        if self._closed:
            return
        layer = self.slide_layer()
        path = Path(layer.metadata["path"]) if layer is not None else None
        if self._controller is not None and path == self._controller.slide_path:
            return
        if self.running:
            self.cancel()
        self._controller = None
        if path is None:
            self.slide_label.setText("no slide: open one with the napari-histo reader")
            return
        self._controller = LiveController(path, self.settings(), out_dir=self._out_dir)
        self.slide_label.setText(f"Slide: {path.name}")
        self._show_existing()

    @property
    def controller(self) -> LiveController | None:
        return self._controller

    def _layer(self, key: str):
        name = LAYER_NAMES[key]
        if name in self.viewer.layers and self.viewer.layers[name].metadata.get(_TAG):
            return self.viewer.layers[name]
        return None

    def _show_existing(self) -> None:
        """Show the stored results for the current settings (zeros when there are none)."""
        controller = self._controller
        loaded = controller.load_existing()
        if loaded is None:
            if self._layer("probability") is not None:
                self._ensure_layers(controller.expected_geometry(), reset=True)
            self.set_status("no results yet for these settings: press Run")
            return
        geometry, arrays, complete = loaded
        self._ensure_layers(geometry, arrays=arrays)
        self.set_status(
            "whole-slide result loaded" if complete else "partial results loaded from the store"
        )

    def _ensure_layers(self, geometry, *, arrays=None, reset=False, preview=False) -> None:
        """Create (or reuse) the overlay layers for `geometry`; fill them from `arrays`."""
        tumor_cmap, unc_cmap = _colormaps()
        scale, translate = overlay_transform(geometry, self._controller.mpp)
        shape = tuple(geometry.shape)
        meta = {_TAG: True, "geometry": geometry.to_dict()}
        slide = self.slide_layer()
        slide_units = tuple(str(u) for u in slide.units) if slide is not None else None
        specs = {
            "probability": dict(colormap=tumor_cmap, contrast_limits=(0, 1), opacity=0.7),
            "aleatoric": dict(
                colormap=unc_cmap, contrast_limits=(0, 0.05), opacity=0.7, visible=False
            ),
            "epistemic": dict(
                colormap=unc_cmap, contrast_limits=(0, 0.05), opacity=0.7, visible=False
            ),
        }
        if preview:
            specs = {"preview": specs["probability"]}
        for key, kwargs in specs.items():
            layer = self._layer(key)
            values = None if arrays is None else arrays.get(key)
            if layer is not None and layer.data.shape == shape:
                if values is not None:
                    np.copyto(layer.data, values)
                elif reset:
                    layer.data[...] = 0
                layer.scale, layer.translate = scale, translate
                layer.refresh()
                continue
            if layer is not None:
                self.viewer.layers.remove(layer)
            data = np.zeros(shape, np.float32) if values is None else values.astype(np.float32)
            self.viewer.add_image(
                data,
                name=LAYER_NAMES[key],
                scale=scale,
                translate=translate,
                blending="translucent",
                units=slide_units,
                metadata=dict(meta),
                **kwargs,
            )
        if preview:
            return
        outline = self._layer("outline")
        prob = self._layer("probability").data
        mask = (prob >= self.threshold_spin.value()).astype(np.uint8)
        if outline is not None and outline.data.shape == shape:
            np.copyto(outline.data, mask)
            outline.refresh()
        else:
            if outline is not None:
                self.viewer.layers.remove(outline)
            outline = self.viewer.add_labels(
                mask,
                name=LAYER_NAMES["outline"],
                scale=scale,
                translate=translate,
                units=slide_units,
                metadata=meta,
            )
            outline.contour = 2
            outline.opacity = 1.0
        # Keep the slide layer selected: the user keeps panning the slide.
        if slide is not None:
            self.viewer.layers.selection.active = slide

    # -- running --------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while a job's thread is alive."""
        return self._job_finished is not None and not self._job_finished.is_set()

    @property
    def busy(self) -> bool:
        """True until the last job's thread is done and its signals are handled."""
        return self.running or self._worker is not None

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
        from napari.qt.threading import create_worker

        self._stop_worker(wait=False)
        controller = self._controller
        settings = controller.settings
        geometry = controller.expected_geometry(settings)
        self._ensure_layers(geometry)
        if settings.preview:
            self._ensure_layers(controller.expected_geometry(), preview=True, reset=True)
        centre = None if region is None else (region[0] + region[2] / 2, region[1] + region[3] / 2)
        cancel = threading.Event()
        finished = threading.Event()
        job = controller.job(within=region, centre=centre, cancel=cancel, settings=settings)

        def body():
            try:
                result = yield from job
            finally:
                finished.set()
            return result

        self._cancel, self._job_finished, self._job_region = cancel, finished, region
        # Every job ever started, so shutdown can join stale (cancelled) ones too.
        self._all_finished = [e for e in self._all_finished if not e.is_set()] + [finished]
        self._all_cancels = [c for c in self._all_cancels if not c.is_set()] + [cancel]
        self._jobs_started += 1
        self.first_cell_s = None
        self._job_t0 = time.monotonic()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("starting…")
        worker = create_worker(body, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_update)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        # Weak references: a connection must not keep the widget (and viewer) alive.
        ref_self, ref_worker = weakref.ref(self), weakref.ref(worker)

        def on_finished() -> None:
            me = ref_self()
            if me is not None:
                me._on_finished(ref_worker())

        worker.finished.connect(on_finished)
        self._worker = worker
        what = "whole slide" if region is None else f"{region[2]}×{region[3]} px view"
        self.set_status(f"running on the {what}…")
        self.cancel_button.setEnabled(True)
        self._refresh_timer.start()
        worker.start()

    def cancel(self) -> None:
        """Stop the job in flight after its current batch (finished cells are kept)."""
        if self._cancel is not None:
            self._cancel.set()
            if self.running:
                self.set_status("cancelling…")

    def _stop_worker(self, *, wait: bool, timeout_s: float = 60.0) -> bool:
        """Cancel the job in flight; with `wait`, block until every job's thread is done."""
        if self._cancel is not None:
            self._cancel.set()
        if not wait:
            return True
        for cancel in self._all_cancels:
            cancel.set()
        deadline = time.monotonic() + timeout_s
        return all(e.wait(max(0.0, deadline - time.monotonic())) for e in self._all_finished)

    def _on_update(self, update: LiveUpdate) -> None:
        if self._closed:
            return
        if self.first_cell_s is None and update.cells:
            self.first_cell_s = time.monotonic() - self._job_t0
        preview = update.stage == "preview"
        keys = ("preview",) if preview else OVERLAY_ARRAYS
        layers = {k: self._layer(k) for k in keys}
        outline = None if preview else self._layer("outline")
        fast = None if preview else self._layer("preview")
        threshold = self.threshold_spin.value()
        for cell in update.cells:
            for key, layer in layers.items():
                if layer is not None:
                    layer.data[cell.rows, cell.cols] = cell.values[
                        "probability" if key == "preview" else key
                    ]
            if outline is not None:
                outline.data[cell.rows, cell.cols] = cell.values["probability"] >= threshold
            if fast is not None:
                fast.data[cell.rows, cell.cols] = 0  # the full result replaces the preview
        if update.cells:
            self._dirty.update(keys)
            if outline is not None:
                self._dirty.add("outline")
            if fast is not None:
                self._dirty.add("preview")
        self.progress_bar.setRange(0, max(1, update.total))
        self.progress_bar.setValue(update.done)
        self.progress_bar.setFormat(f"%v/%m tiles, ETA {_fmt_s(update.eta_s)}")
        stage = "fast preview" if preview else "ensemble"
        self.set_status(
            f"{stage}: {update.done}/{update.total} tiles of the slide, "
            f"{_fmt_s(update.elapsed_s)} elapsed, ETA {_fmt_s(update.eta_s)}"
        )

    def _refresh_dirty(self) -> None:
        """Refresh the layers that received cells; adapt the interval to the cost.

        A refresh re-slices the whole 2-D result and redraws the canvas (software
        GL under Xvfb competes with the model for the CPU), so the timer keeps
        refreshing to at most ~10 % of the Qt thread's time.
        """
        if self._closed or not self._dirty:
            return
        t0 = time.perf_counter()
        for key in sorted(self._dirty):
            layer = self._layer(key)
            if layer is not None and layer.visible:
                layer.refresh()
        self._dirty.clear()
        cost_ms = (time.perf_counter() - t0) * 1000
        self.refresh_costs_ms.append(cost_ms)
        self._refresh_timer.setInterval(int(min(_REFRESH_MAX_MS, max(_REFRESH_MS, 10 * cost_ms))))

    def _on_returned(self, result) -> None:
        self.last_result = result
        if self._closed or result is None:
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
                f"on {result.device}" + (" — whole slide complete" if result.run.complete else "")
            )

    def _on_errored(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        if self._closed:
            return
        message = f"inference failed: {exc}"
        self.set_status(message)
        show_error(message)

    def _on_finished(self, worker) -> None:
        if worker is not self._worker:
            return  # a superseded job
        self._worker = None
        if self._closed:
            return
        self._refresh_dirty()
        self._refresh_timer.stop()
        self.cancel_button.setEnabled(False)
        self.progress_bar.setFormat("%v/%m tiles")

    # -- follow mode ----------------------------------------------------------
    def _on_camera(self, *_: Any) -> None:
        if self._closed or self._controller is None or self.mode_combo.currentText() != "follow":
            return
        self._debouncer.poke(True, time.monotonic())
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
            self._stop_worker(wait=False)
            if action == "too_wide":
                run_ = self._controller.existing_run()
                if run_ is not None and run_.complete:
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
        if self._closed:
            return
        layer = self._layer("probability")
        if layer is None:
            return
        pos = np.asarray(event.position[-2:], float)
        idx = np.round((pos - np.asarray(layer.translate)) / np.asarray(layer.scale)).astype(int)
        if np.any(idx < 0) or np.any(idx >= layer.data.shape):
            self.readout.setText("")
            return
        values = []
        for key in OVERLAY_ARRAYS:
            lyr = self._layer(key)
            if lyr is not None:
                values.append(f"{key[:4]} {float(lyr.data[idx[0], idx[1]]):.3f}")
        self.readout.setText("at cursor: " + ", ".join(values))

    # -- teardown -------------------------------------------------------------
    def showEvent(self, event) -> None:
        super().showEvent(event)
        window = self.window()
        if window is not self and window is not self._watched:
            if self._watched is not None and self._close_watcher is not None:
                self._watched.removeEventFilter(self._close_watcher)
            self._close_watcher = _CloseWatcher(self.shutdown)
            window.installEventFilter(self._close_watcher)
            self._watched = window

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Cancel the job, wait for its threads, and unbind from the viewer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._refresh_timer.stop()
        self._follow_timer.stop()
        self._stop_worker(wait=True, timeout_s=timeout_s)
        camera = self.viewer.scene.camera
        camera.events.center.disconnect(self._on_camera)
        camera.events.zoom.disconnect(self._on_camera)
        self.viewer.layers.events.inserted.disconnect(self._on_layers_changed)
        self.viewer.layers.events.removed.disconnect(self._on_layers_changed)
        if self._on_mouse_move in self.viewer.mouse_move_callbacks:
            self.viewer.mouse_move_callbacks.remove(self._on_mouse_move)
        if self._watched is not None and self._close_watcher is not None:
            self._watched.removeEventFilter(self._close_watcher)
        app = QApplication.instance()
        if app is not None:
            try:
                app.aboutToQuit.disconnect(self.shutdown)
            except (TypeError, RuntimeError):
                pass

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)
