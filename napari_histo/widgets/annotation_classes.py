"""The "Classes" box of the Annotate dock: pick, add, remove and recolour annotation classes.

A thin Qt shell over the class list of the dock widget (``owner.classes``, a
list of :class:`~napari_histo.annotations.model.AnnotationClass`) and its file
``<slide>.annotations.classes.json``
(:func:`~napari_histo.annotations.layers.save_classes`). The owner is the
:class:`~napari_histo.widgets.annotation.AnnotationWidget` it sits in: it
provides ``classes``, ``annotation_path``, ``annotations()``, ``snapshot()``,
``set_annotations(anns)``, ``set_status(message)``, ``on_class_changed(name)``
and ``apply_class_to_selection()``.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterable
from typing import Any

from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import QColorDialog, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLineEdit

from napari_histo.annotations.layers import classes_path, save_classes
from napari_histo.annotations.model import DEFAULT_CLASSES, AnnotationClass, class_index
from napari_histo.widgets.nuclei_edit import button

__all__ = ["PALETTE", "ClassesBox"]

#: Colours of new classes, in turn (Okabe-Ito: told apart with colour-vision deficiency).
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178),
           (213, 94, 0), (204, 121, 167)]  # fmt: skip
_GREY = (128, 128, 128)  # colour of a name that is not a class


class ClassesBox(QGroupBox):
    """Class picker (with colours), Colour… / Remove / Add, author and "Apply class".

    Parameters
    ----------
    owner : AnnotationWidget
        The dock widget; its ``classes`` list is the one shown and edited here.
    """

    def __init__(self, owner: Any) -> None:  # the AnnotationWidget (not imported: no cycle)
        super().__init__("Classes")
        self.owner = owner
        self.class_combo = QComboBox()
        self.class_combo.currentTextChanged.connect(owner.on_class_changed)
        self.new_class = QLineEdit()
        self.new_class.setPlaceholderText("new class name")
        self.author = QLineEdit(getpass.getuser())
        form = QFormLayout(self)
        row = QHBoxLayout()
        row.addWidget(self.class_combo, 1)
        row.addWidget(button("Colour…", self.pick_color, "change the colour of this class"))
        row.addWidget(button("Remove", self.remove_current, "remove a user class"))
        form.addRow("class", row)
        row = QHBoxLayout()
        row.addWidget(self.new_class, 1)
        row.addWidget(button("Add", lambda: self.add(self.new_class.text())))
        form.addRow("", row)
        form.addRow("author", self.author)
        form.addRow(button("Apply class to selected shapes", owner.apply_class_to_selection))
        self.refresh()

    def refresh(self) -> None:
        """Show ``owner.classes`` (colour icons), keeping the current class when it is there."""
        current = self.class_combo.currentText()
        self.class_combo.blockSignals(True)  # a refill is no choice of class
        self.class_combo.clear()
        for c in self.owner.classes:
            pix = QPixmap(12, 12)
            pix.fill(QColor(*c.color))
            self.class_combo.addItem(QIcon(pix), c.name)
        index = self.class_combo.findText(current)
        self.class_combo.setCurrentIndex(max(index, 0))
        self.class_combo.blockSignals(False)

    def save(self) -> None:
        """Write the class list beside the slide's annotations (no slide: nothing)."""
        if self.owner.annotation_path is not None:
            save_classes(classes_path(self.owner.annotation_path), self.owner.classes)

    def color_of(self, name: str) -> tuple[int, int, int]:
        """RGB of class `name` (grey when there is no such class)."""
        return next((c.color for c in self.owner.classes if c.name == name), _GREY)

    def add(self, name: str, color: tuple[int, int, int] | None = None) -> None:
        """Add a user class (saved with the slide's annotations) and select it."""
        classes = self.owner.classes
        name = name.strip()
        if not name or name in {c.name for c in classes}:
            self.owner.set_status(f"class {name!r}: needs a new, non-empty name")
            return
        if len(class_index([*classes, AnnotationClass(name, (0, 0, 0))])) > 254:
            self.owner.set_status("too many classes (labels are 8-bit)")
            return
        color = color or PALETTE[len(classes) % len(PALETTE)]
        classes.append(AnnotationClass(name, tuple(int(v) for v in color)))  # type: ignore[arg-type]
        self.save()
        self.refresh()
        self.class_combo.setCurrentText(name)
        self.new_class.clear()

    def add_labels(self, labels: Iterable[str]) -> None:
        """Make classes of unknown `labels` (e.g. of imported annotations); save the list."""
        classes = self.owner.classes
        known = {c.name for c in classes}
        for label in dict.fromkeys(label for label in labels if label not in known):
            classes.append(AnnotationClass(label, PALETTE[len(classes) % len(PALETTE)]))
        self.save()
        self.refresh()

    def remove_current(self) -> None:
        """Remove the selected class unless it is a default one or still in use."""
        name = self.class_combo.currentText()
        if name in {c.name for c in DEFAULT_CLASSES}:
            self.owner.set_status(f"class {name!r} is a default class and stays")
            return
        if any(a.label == name for a in self.owner.annotations()):
            self.owner.set_status(f"class {name!r} is still used by annotations")
            return
        self.owner.classes = [c for c in self.owner.classes if c.name != name]
        self.save()
        self.refresh()

    def set_color(self, name: str, color: tuple[int, int, int]) -> None:
        """Change a class colour (saved) and repaint its shapes."""
        owner = self.owner
        owner.classes = [AnnotationClass(c.name, color) if c.name == name else c
                         for c in owner.classes]  # fmt: skip
        self.save()
        self.refresh()
        owner.set_annotations(owner.snapshot())  # shape colours come from the classes

    def pick_color(self) -> None:
        """Ask for a new colour of the current class (a colour dialog)."""
        name = self.class_combo.currentText()
        color = QColorDialog.getColor(QColor(*self.color_of(name)), self, f"Colour of {name}")
        if color.isValid():
            self.set_color(name, (color.red(), color.green(), color.blue()))
