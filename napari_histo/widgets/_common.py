"""Plumbing shared by the dock widgets (Tumor inference, Nuclei, Retrain).

Teardown (:class:`ShutdownMixin`: ``shutdown()`` on close, on the main
window's close and on application quit), finding the slide layer and a few
control builders. Background jobs run through :mod:`napari_histo.widgets.jobs`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QApplication, QCheckBox, QGroupBox, QHBoxLayout, QPushButton, QVBoxLayout

__all__ = [
    "CloseWatcher",
    "ShutdownMixin",
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
def topmost_slide_layer(layers: Iterable[Any], exclude_tag: str) -> Any:
    """The topmost layer opened by napari-histo's reader (metadata has ``path`` and ``mpp``).

    Layers whose metadata has `exclude_tag` (the caller's own layers) are
    skipped. None when there is no such layer.
    """
    for layer in reversed(layers):
        meta = layer.metadata
        if meta.get("path") and meta.get("mpp") and not meta.get(exclude_tag):
            return layer
    return None


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
