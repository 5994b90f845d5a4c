"""Plumbing shared by the dock widgets (Tumor inference, Nuclei, Retrain).

Teardown (:class:`ShutdownMixin`: ``shutdown()`` on close, on the main
window's close and on application quit), finding the slide layer, the µm/px
field (:class:`MppField`) and a few control builders. Background jobs run
through :mod:`napari_histo.widgets.jobs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_histo.frames import check_mpp, rescale_world
from napari_histo.io.mpp_choice import mpp_choice_path, save_mpp_choice
from napari_histo.live.worker import JobProcess
from napari_histo.widgets.jobs import gui_threads

__all__ = [
    "CloseWatcher",
    "MppField",
    "ShutdownMixin",
    "apply_slide_mpp",
    "checked_names",
    "member_checkboxes",
    "run_cancel_buttons",
    "topmost_slide_layer",
]


class CloseWatcher(QObject):
    """Event filter calling `callback` when the watched window closes."""

    def __init__(self, callback: Callable[[], Any]) -> None:
        super().__init__()
        self._callback = callback

    def eventFilter(self, obj, event) -> bool:
        if event.type() == QEvent.Close:
            self._callback()
        return False


class WorkerProcessMixin:
    """A dock's own worker process (:class:`~napari_histo.live.worker.JobProcess`):
    started at its first job, with the dock's torch thread count, ended by
    :meth:`_close_worker` from the dock's ``shutdown``."""

    _job_process: JobProcess | None = None

    @property
    def job_process(self) -> JobProcess:
        """The worker process this dock's jobs run in (started at the first job)."""
        if self._job_process is None:
            self._job_process = JobProcess(threads=gui_threads())
        return self._job_process

    @property
    def worker_pid(self) -> int | None:
        """Process id of the dock's worker process; None when none runs."""
        return None if self._job_process is None else self._job_process.pid

    def _close_worker(self, timeout_s: float) -> None:
        """End the worker: its job stops after the current batch or step."""
        if self._job_process is not None:
            self._job_process.close(timeout_s)


class ShutdownMixin:
    """Runs the widget's ``shutdown()`` when it, or the window it sits in, closes.

    Mixed into a QWidget (before QWidget) that has a ``viewer`` and defines
    ``shutdown()``. The widget calls :meth:`_connect_viewer` in ``__init__``
    (its layer-list handler, and shutdown on application quit) and
    :meth:`_disconnect_viewer` from ``shutdown``.
    """

    _watched: Any = None  # the window whose close we watch
    _close_watcher: CloseWatcher | None = None

    def _connect_viewer(self, on_layers_changed: Callable[..., Any]) -> None:
        """Call `on_layers_changed` when a layer is inserted or removed; shutdown on quit."""
        self.viewer.layers.events.inserted.connect(on_layers_changed)
        self.viewer.layers.events.removed.connect(on_layers_changed)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    def _disconnect_viewer(self, on_layers_changed: Callable[..., Any]) -> None:
        """Undo :meth:`_connect_viewer` and stop watching the window (from ``shutdown``)."""
        self.viewer.layers.events.inserted.disconnect(on_layers_changed)
        self.viewer.layers.events.removed.disconnect(on_layers_changed)
        if self._watched is not None and self._close_watcher is not None:
            self._watched.removeEventFilter(self._close_watcher)
        app = QApplication.instance()
        if app is not None:
            try:
                app.aboutToQuit.disconnect(self.shutdown)
            except (TypeError, RuntimeError):
                pass

    def showEvent(self, event) -> None:
        super().showEvent(event)
        window = self.window()
        if window is not self and window is not self._watched:
            if self._watched is not None and self._close_watcher is not None:
                self._watched.removeEventFilter(self._close_watcher)
            self._close_watcher = CloseWatcher(self.shutdown)
            window.installEventFilter(self._close_watcher)
            self._watched = window

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)


# -- layers ---------------------------------------------------------------------------
def topmost_slide_layer(layers: Iterable[Any], exclude_tag: str, *, need_mpp: bool = True) -> Any:
    """The topmost layer opened by napari-histo's reader (metadata has ``path`` and ``mpp``).

    Layers whose metadata has `exclude_tag` (the caller's own layers) are
    skipped; with ``need_mpp=False`` a slide shown in px (no ``mpp``) counts
    too. None when there is no such layer.
    """
    for layer in reversed(layers):
        meta = layer.metadata
        if meta.get("path") and (meta.get("mpp") or not need_mpp) and not meta.get(exclude_tag):
            return layer
    return None


class SlideLayerMixin:
    """The open slide of a dock whose own layers carry :attr:`layer_tag` in their metadata."""

    layer_tag: str
    viewer: Any

    def slide_layer(self):
        """The topmost layer opened by napari-histo's reader, or None."""
        return topmost_slide_layer(self.viewer.layers, self.layer_tag)

    def _open_slide_path(self) -> Path | None:
        layer = self.slide_layer()
        return None if layer is None else Path(layer.metadata["path"])


def _is_slide_layer(layer: Any) -> bool:
    """Whether `layer` is a slide opened by napari-histo's reader."""
    return bool(layer.metadata.get("path")) and "level_downsamples" in layer.metadata


def apply_slide_mpp(layers: Iterable[Any], slide_layer: Any, mpp: float, source: str) -> None:
    """Show `slide_layer` at `mpp` µm/px and keep every layer placed on it aligned.

    The slide layer's metadata (``mpp``, ``mpp_x``, ``mpp_y``, ``mpp_source``),
    units (µm) and scale change; every other layer in `layers` except other
    slides follows with :func:`~napari_histo.frames.rescale_world`, so overlays,
    results and annotations stay where they were on the tissue. The slide's
    scale is set last: its ``scale`` event tells listeners all is in place.
    """
    old = tuple(float(v) for v in slide_layer.scale[-2:])
    new = (float(mpp), float(mpp))
    old_units = tuple(str(u) for u in slide_layer.units)
    slide_layer.metadata = {
        **slide_layer.metadata, "mpp": new[0], "mpp_y": new[0], "mpp_x": new[1],
        "mpp_source": source,
    }  # fmt: skip
    units = ("micrometer", "micrometer")
    for layer in list(layers):
        if layer is slide_layer or _is_slide_layer(layer):
            continue
        layer.scale, layer.translate = rescale_world(layer.scale, layer.translate, old, new)
        if tuple(str(u) for u in layer.units[-2:]) == old_units[-2:]:
            layer.units = (*layer.units[:-2], *units)
    slide_layer.units = units
    slide_layer.scale = new


# -- controls -------------------------------------------------------------------------
def member_checkboxes(
    title: str,
    labels: Mapping[str, str],
    checked: Callable[[str], bool],
    on_toggled: Callable[..., Any] | None = None,
) -> tuple[QGroupBox, dict[str, QCheckBox]]:
    """A group box with a check box per ensemble member.

    `labels` maps member name to check box text; `checked(name)` gives the
    initial state, and `on_toggled` (if any) is connected to every box.
    Returns the box and the check boxes by member name.
    """
    group = QGroupBox(title)
    layout = QVBoxLayout(group)
    boxes: dict[str, QCheckBox] = {}
    for name, text in labels.items():
        box = QCheckBox(text)
        box.setChecked(checked(name))
        if on_toggled is not None:
            box.toggled.connect(on_toggled)
        layout.addWidget(box)
        boxes[name] = box
    return group, boxes


def checked_names(boxes: Mapping[str, QCheckBox]) -> list[str]:
    """Names of the ticked check boxes, in order."""
    return [name for name, box in boxes.items() if box.isChecked()]


def run_cancel_buttons(
    run: Callable[[], Any], cancel: Callable[[], Any]
) -> tuple[QHBoxLayout, QPushButton, QPushButton]:
    """A row of a "Run" button and a (disabled) "Cancel" button; the row and both buttons."""
    row = QHBoxLayout()
    run_button = QPushButton("Run")
    run_button.clicked.connect(run)
    cancel_button = QPushButton("Cancel")
    cancel_button.setEnabled(False)
    cancel_button.clicked.connect(cancel)
    row.addWidget(run_button)
    row.addWidget(cancel_button)
    return row, run_button, cancel_button


# -- µm/px ----------------------------------------------------------------------------
#: How the field names each ``metadata["mpp_source"]`` (:attr:`Slide.mpp_source`).
_SOURCES = {"saved": "saved beside the slide", "file": "from the file", "argument": "given"}


class MppField(QWidget):
    """The slide's µm/px, where it came from, and a field + Set button to change it.

    One row shared by the docks that run models. :meth:`bind` follows a slide
    layer: the field shows its ``metadata["mpp"]`` and source. :meth:`set_mpp`
    (the Set button) checks the entry (0.05–50 µm/px), saves it beside the slide
    (:func:`~napari_histo.io.mpp_choice.save_mpp_choice`) and applies it to the
    viewer (:func:`apply_slide_mpp`); a bad entry gives one line and changes
    nothing. When the bound layer's scale changes (here or from another dock),
    the field refreshes and calls `on_changed`.

    Parameters
    ----------
    viewer : napari.Viewer
    set_by : str
        Recorded in the sidecar as who set it ("Tumor inference dock").
    on_changed : callable () -> Any, optional
        Called after the bound slide's scale changed.
    """

    def __init__(
        self, viewer: Any, set_by: str, on_changed: Callable[[], Any] | None = None
    ) -> None:
        super().__init__()
        self.viewer = viewer
        self._set_by = set_by
        self._on_changed = on_changed
        self._layer: Any = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("µm/px"))
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("e.g. 0.25")
        self.edit.setToolTip("µm per level-0 pixel (0.05–50); Set saves it beside the slide")
        self.edit.returnPressed.connect(self.set_mpp)
        row.addWidget(self.edit, 1)
        self.set_button = QPushButton("Set")
        self.set_button.clicked.connect(self.set_mpp)
        row.addWidget(self.set_button)
        layout.addLayout(row)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        self._show()

    @property
    def layer(self) -> Any:
        """The slide layer shown, or None."""
        return self._layer

    def bind(self, layer: Any) -> None:
        """Follow `layer` (a slide layer, or None); idempotent."""
        if layer is self._layer:
            return
        self.unbind()
        self._layer = layer
        if layer is not None:
            layer.events.scale.connect(self._on_scale)
        self._show()

    def unbind(self) -> None:
        """Stop following the slide layer (from the dock's ``shutdown``)."""
        if self._layer is not None:
            self._layer.events.scale.disconnect(self._on_scale)
        self._layer = None

    def _show(self) -> None:
        layer = self._layer
        enabled = layer is not None
        self.edit.setEnabled(enabled)
        self.set_button.setEnabled(enabled)
        if layer is None:
            self.edit.clear()
            self.message.setText("")
            return
        meta = layer.metadata
        mpp = meta.get("mpp")
        self.edit.setText("" if not mpp else f"{float(mpp):.4g}")
        if not mpp:
            self.message.setText("µm/px unknown (slide shown in px): enter it and press Set")
            return
        source = _SOURCES.get(meta.get("mpp_source"), "from the file")
        if meta.get("mpp_source") == "saved":
            source += f" ({mpp_choice_path(meta['path']).name})"
        self.message.setText(f"{float(mpp):.4g} µm/px, {source}")

    def _on_scale(self, *_: Any) -> None:
        self._show()
        if self._on_changed is not None:
            self._on_changed()

    def set_mpp(self, text: str | None = None) -> bool:
        """Check `text` (default: the field), save it beside the slide and apply it.

        Returns True when the scale was set; otherwise the field's message says why.
        """
        layer = self._layer
        if layer is None:
            self.message.setText("no slide: open one with the napari-histo reader")
            return False
        text = self.edit.text() if text is None or isinstance(text, bool) else text
        try:
            mpp = check_mpp(text, "µm/px")
        except ValueError as err:
            self.message.setText(f"not set: {err}")
            return False
        try:
            saved = save_mpp_choice(
                layer.metadata["path"], mpp, set_by=self._set_by,
                file_mpp=layer.metadata.get("file_mpp"),
            )  # fmt: skip
        except OSError as err:
            self.message.setText(f"not set: cannot save beside the slide ({err.strerror or err})")
            return False
        if layer.metadata.get("mpp") == mpp:  # same scale: only its source changed
            layer.metadata = {**layer.metadata, "mpp_source": "saved"}
        else:
            apply_slide_mpp(self.viewer.layers, layer, mpp, "saved")
        self.message.setText(f"{mpp:.4g} µm/px, saved in {saved.name}")
        return True
