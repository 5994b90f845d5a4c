"""Controls of the "Tumor inference" dock widget: building them, reading and showing settings.

Split from :mod:`napari_histo.widgets.inference` (module size); the widget
class mixes this in, so the controls stay attributes of the widget
(``widget.tta_combo``, ``widget.status``, …).
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QProgressBar,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
)

from napari_histo.live.controller import MODES, LiveSettings
from napari_histo.widgets._common import checked_names, member_checkboxes, run_cancel_buttons

__all__ = ["STAIN_LABELS", "ControlsMixin"]

#: Stain normalisation setting -> label in the dock.
STAIN_LABELS = {
    "card": "card default",
    "none": "none",
    "macenko": "Macenko",
    "reinhard": "Reinhard",
}
_STAIN_BY_LABEL = {label: key for key, label in STAIN_LABELS.items()}


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class ControlsMixin:
    """The widget's controls; mixed into a QWidget that defines the slots they call."""

    # -- UI -------------------------------------------------------------------
    def _build_ui(self, settings: LiveSettings) -> None:
        from napari_histo.models import read_card
        from napari_histo.models.versions import active_cards

        self._worker_process = settings.worker_process  # no control; kept as saved
        layout = QVBoxLayout(self)
        self.slide_label = QLabel("no slide")
        self.slide_label.setWordWrap(True)
        layout.addWidget(self.slide_label)

        # The same members as LiveController.available_members: active versions of
        # the segmentation cards (a nuclei model is not a tumor-ensemble member).
        cards = {n: p for n, p in active_cards().items() if read_card(p).task == "segmentation"}
        members_box, self.member_boxes = member_checkboxes(
            "Ensemble members",
            {name: f"{name} ({card.stem.split('-', 1)[-1]})" for name, card in cards.items()},
            lambda name: not settings.members or name in settings.members,
            self._on_settings_changed,
        )
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
        self.preview_box = QCheckBox("progressive (fast preview first)")
        self.preview_box.setChecked(settings.preview)
        self.preview_box.setToolTip(
            "First one member without TTA, then the full ensemble replaces it cell by cell; "
            "the probability layer's name says which is shown."
        )
        form.addRow(self.preview_box)
        self.stain_combo = QComboBox()
        self.stain_combo.addItems(list(STAIN_LABELS.values()))
        self.stain_combo.setCurrentText(STAIN_LABELS[settings.stain])
        self.stain_combo.setToolTip(
            "Stain normalisation before the model, fitted once per slide: as the model "
            "card says (default), none, or to the Macenko / Reinhard reference look."
        )
        form.addRow("Stain normalisation", self.stain_combo)
        layout.addLayout(form)
        for combo in (self.tta_combo, self.device_combo, self.mode_combo, self.stain_combo):
            combo.currentTextChanged.connect(self._on_settings_changed)
        for spin in (self.overlap_spin, self.batch_spin):
            spin.valueChanged.connect(self._on_settings_changed)
        self.threshold_spin.valueChanged.connect(self._on_threshold_changed)
        self.preview_box.toggled.connect(self._on_settings_changed)

        buttons, self.run_button, self.cancel_button = run_cancel_buttons(self.run, self.cancel)
        layout.addLayout(buttons)

        # A widget-local bar, updated at most once per refresh tick (docs/live.md, "How
        # overlays refresh"); napari.utils.progress would add a second bar to the
        # window's activity dock for every job.
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("idle")
        self.progress_bar.setTextVisible(True)
        layout.addWidget(self.progress_bar)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        # A fixed box: new text must not re-lay out the window (with an OpenGL
        # canvas every window re-layout re-composites it, ~100 ms in software GL).
        self.status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        self.status.setFixedHeight(3 * self.status.fontMetrics().lineSpacing())
        layout.addWidget(self.status)
        self.readout = QLabel("")
        self.readout.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Fixed)
        self.readout.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.readout)
        layout.addStretch(1)

    def settings(self) -> LiveSettings:
        """The settings the controls show."""
        chosen = tuple(checked_names(self.member_boxes))
        return LiveSettings(
            members=chosen if len(chosen) < len(self.member_boxes) else (),
            tta=int(self.tta_combo.currentText()),
            overlap=round(float(self.overlap_spin.value()), 4),
            device=self.device_combo.currentText(),
            batch_size=int(self.batch_spin.value()),
            mode=self.mode_combo.currentText(),
            threshold=round(float(self.threshold_spin.value()), 4),
            preview=self.preview_box.isChecked(),
            stain=_STAIN_BY_LABEL[self.stain_combo.currentText()],
            # No control: kept as saved (live.json), for debugging jobs in-process.
            worker_process=self._worker_process,
        )

    def set_settings(self, settings: LiveSettings) -> None:
        """Show `settings` in the controls (and persist them)."""
        self._worker_process = settings.worker_process
        for name, box in self.member_boxes.items():
            box.setChecked(not settings.members or name in settings.members)
        self.tta_combo.setCurrentText(str(settings.tta))
        self.overlap_spin.setValue(settings.overlap)
        self.device_combo.setCurrentText(settings.device)
        self.batch_spin.setValue(settings.batch_size)
        self.mode_combo.setCurrentText(settings.mode)
        self.threshold_spin.setValue(settings.threshold)
        self.preview_box.setChecked(settings.preview)
        self.stain_combo.setCurrentText(STAIN_LABELS[settings.stain])
        self.preview_box.setToolTip(
            "First one member without TTA, then the full ensemble replaces it cell by cell; "
            "the probability layer's name says which is shown."
        )
        self._on_settings_changed()

    def set_status(self, text: str) -> None:
        self.status.setText(text)
