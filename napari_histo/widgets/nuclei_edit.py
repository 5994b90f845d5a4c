"""The "Edit instances (Labels)" box of the Annotate dock: delete / merge / split / redraw.

A thin Qt shell over :mod:`napari_histo.nuclei.edit`, acting on any 2-D Labels
layer (``nuclei`` by default). The owner is the dock widget it sits in: it
provides ``viewer``, ``set_status(message)`` and ``_edge_width()``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLineEdit, QPushButton

from napari_histo.nuclei import edit as nuclei_edit

__all__ = ["SPLIT_LINE_LAYER", "NucleiEditBox", "button"]

SPLIT_LINE_LAYER = "split line"


def button(text: str, slot: Callable[[], Any], tip: str = "") -> QPushButton:
    """A push button calling `slot` when clicked."""
    widget = QPushButton(text)
    widget.clicked.connect(slot)
    widget.setToolTip(tip)
    return widget


class NucleiEditBox(QGroupBox):
    """Delete / merge / split / redraw instances of any Labels layer (e.g. "nuclei").

    Parameters
    ----------
    owner : QWidget
        The dock widget (``viewer``, ``set_status``, ``_edge_width``).
    exclude : collection of str
        Labels layers not offered (the Annotate widget's pixel crop).
    """

    def __init__(self, owner: Any, exclude: Collection[str] = ()) -> None:
        super().__init__("Edit instances (Labels)")
        self.owner = owner
        self.exclude = set(exclude)
        self.layer_combo = QComboBox()
        self.ids = QLineEdit()
        self.ids.setPlaceholderText("ids, e.g. 3, 7 (empty: selected label)")
        form = QFormLayout(self)
        form.addRow("layer", self.layer_combo)
        form.addRow("ids", self.ids)
        row = QHBoxLayout()
        for text, slot in (("Delete", self.delete), ("Merge", self.merge),
                           ("Split", self.split), ("Split by line", self.split_line),
                           ("New id", self.new_id)):  # fmt: skip
            row.addWidget(button(text, slot))
        form.addRow(row)
        layers = owner.viewer.layers
        self._events = (layers.events.inserted, layers.events.removed, layers.events.reordered)
        for ev in self._events:
            ev.connect(self._refresh)
        self._refresh()

    def unbind(self) -> None:
        """Disconnect from the viewer's layer list."""
        for ev in self._events:
            ev.disconnect(self._refresh)

    def _refresh(self, *_: Any) -> None:
        from napari.layers import Labels

        current = self.layer_combo.currentText()
        self.layer_combo.clear()
        names = [lay.name for lay in self.owner.viewer.layers
                 if isinstance(lay, Labels) and lay.name not in self.exclude]  # fmt: skip
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        elif "nuclei" in names:
            self.layer_combo.setCurrentText("nuclei")

    def layer(self):
        """The chosen Labels layer, or None."""
        name = self.layer_combo.currentText()
        layers = self.owner.viewer.layers
        return layers[name] if name and name in layers else None

    def _id_list(self, layer) -> list[int]:
        text = self.ids.text().replace(",", " ").split()
        try:
            return [int(t) for t in text] if text else [int(layer.selected_label)]
        except ValueError:
            self.owner.set_status(f"ids: expected whole numbers, got {self.ids.text()!r}")
            return []

    def _apply(self, what: str, func) -> None:
        layer = self.layer()
        if layer is None or layer.multiscale or layer.ndim != 2:
            self.owner.set_status("pick a 2-D, single-scale Labels layer to edit")
            return
        ids = self._id_list(layer)
        if not ids:
            return
        try:
            new = func(np.asarray(layer.data), ids)
        except ValueError as exc:
            self.owner.set_status(f"{what}: {exc}")
            return
        layer.data = new
        self.owner.set_status(f"{what} {ids} in {layer.name!r}")

    def delete(self) -> None:
        self._apply("deleted", nuclei_edit.delete_labels)

    def merge(self) -> None:
        self._apply("merged", nuclei_edit.merge_labels)

    def split(self) -> None:
        self._apply("split", lambda data, ids: nuclei_edit.split_watershed(data, ids[0]))

    def split_line(self) -> None:
        """Cut along the last path/line drawn in the "split line" Shapes layer."""
        layers = self.owner.viewer.layers
        target = self.layer()
        if (
            SPLIT_LINE_LAYER not in layers
            or not len(layers[SPLIT_LINE_LAYER].data)
            or (target is None)
        ):
            if SPLIT_LINE_LAYER not in layers:
                lines = self.owner.viewer.add_shapes(
                    ndim=2, name=SPLIT_LINE_LAYER, edge_color="yellow",
                    edge_width=self.owner._edge_width(),
                )  # fmt: skip
                lines.mode = "add_path"
            self.owner.set_status(f"draw a line across the nucleus in {SPLIT_LINE_LAYER!r}, "
                                  "then press Split by line again")  # fmt: skip
            return
        world = np.asarray(layers[SPLIT_LINE_LAYER].data[-1])[:, -2:]
        rc = np.asarray([target.world_to_data(p) for p in world])[:, -2:]
        layers[SPLIT_LINE_LAYER].data = []
        self._apply("split along the line", lambda data, ids: nuclei_edit.split_by_line(
            data, ids[0], rc))  # fmt: skip

    def new_id(self) -> None:
        """Select an unused id so the brush draws a new instance (redraw)."""
        layer = self.layer()
        if layer is not None:
            layer.selected_label = int(np.asarray(layer.data).max()) + 1
            layer.mode = "paint"
            self.owner.set_status(f"painting new instance {layer.selected_label}")
