"""Retrain dock widget: fine-tune the ensemble on a slide's annotations.

A thin shell over :func:`napari_histo.training.finetune.finetune_ensemble`: it
collects the slide, the annotations (autosave file, a chosen file or a Shapes
layer), granularity, members and epochs, runs the generator in the dock's worker
process (:class:`~napari_histo.live.worker.JobProcess`), driven from the dock's
:class:`~napari_histo.widgets.jobs.JobRunner`, with napari progress, a
live loss / held-out Dice plot and Cancel, then lists each member's versions
(the choice persists, see :mod:`napari_histo.models.versions`, and the Tumor
inference widget runs it)
and shows the parent and active versions' probability side by side.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QPointF
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_histo.annotations.model import Annotation
from napari_histo.errors import HistoError
from napari_histo.frames import layer_mpp, overlay_transform, visible_region_l0
from napari_histo.training.annotations import TRAIN_GRANULARITIES
from napari_histo.widgets._common import (
    ShutdownMixin,
    WorkerProcessMixin,
    checked_names,
    member_checkboxes,
    run_cancel_buttons,
)
from napari_histo.widgets._overlays import tumor_colormap
from napari_histo.widgets.jobs import JobRunner

if TYPE_CHECKING:
    import napari

__all__ = ["LossPlot", "RetrainWidget", "shapes_to_annotations"]

_AUTOSAVE = "autosave file beside the slide"
_CLASSES = ("tumor", "non-tumor", "ignore")
_ERRORS = (HistoError, ValueError, OSError, RuntimeError)


def _one_line(err: BaseException) -> str:
    return " ".join((str(err) or type(err).__name__).split())


def shapes_to_annotations(layer: Any, mpp: tuple[float, float]) -> list[Annotation]:
    """Level-0 annotations of a napari Shapes layer drawn over a slide layer.

    Uses the GeoJSON writer's conversion (:func:`napari_histo.plugin.writer.shapes_annotations`:
    class from the ``label`` feature, else the layer's ``default_label``); a
    layer without mpp metadata gets the slide's `mpp` ``(mpp_y, mpp_x)``.
    """
    from napari_histo.plugin.writer import shapes_annotations

    meta = dict(layer.metadata or {})
    if meta.get("mpp") is None and not (meta.get("mpp_y") and meta.get("mpp_x")):
        meta["mpp"] = tuple(mpp)
    if "default_label" not in meta and layer.name in _CLASSES:
        meta["default_label"] = layer.name
    attributes = {
        "scale": tuple(layer.scale), "translate": tuple(layer.translate), "metadata": meta,
        "shape_type": list(layer.shape_type), "features": layer.features,
    }  # fmt: skip
    return shapes_annotations(layer.data, attributes)


class LossPlot(QWidget):
    """Training loss per step (one curve per member) and held-out Dice points, via QPainter."""

    COLOURS = ("#e6553a", "#3a8fe6", "#3ac46b", "#c43ab8")

    def __init__(self) -> None:
        super().__init__()
        self.setMinimumHeight(130)
        self.losses: dict[str, list[tuple[int, float]]] = {}
        self.dice: dict[str, list[tuple[int, float]]] = {}
        self.steps = 1

    def clear(self, steps: int = 1) -> None:
        self.losses, self.dice, self.steps = {}, {}, max(1, steps)
        self.update()

    def add(self, member: str, step: int, loss: float, dice: float | None) -> None:
        if math.isfinite(loss):
            self.losses.setdefault(member, []).append((step, loss))
        if dice is not None:
            self.dice.setdefault(member, []).append((step, dice))
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.fillRect(self.rect(), QColor("#262930"))
        left, top, right, bottom = 34, 8, self.width() - 34, self.height() - 18
        painter.setPen(QPen(QColor("#888888"), 1))
        painter.drawRect(left, top, right - left, bottom - top)
        values = [v for curve in self.losses.values() for _, v in curve]
        peak = max(values, default=1.0) or 1.0
        painter.drawText(2, top + 10, f"{peak:.2f}")
        painter.drawText(2, bottom, "0")
        painter.drawText(right + 4, top + 10, "1.0")
        painter.drawText(left, self.height() - 3, "loss (lines), held-out Dice (dots)")
        painter.drawText(right - 60, self.height() - 3, f"{self.steps} steps")

        def point(step: int, value: float, top_value: float) -> QPointF:
            x = left + (right - left) * step / self.steps
            return QPointF(x, bottom - (bottom - top) * min(value / top_value, 1.0))

        for index, (member, curve) in enumerate(self.losses.items()):
            colour = QColor(self.COLOURS[index % len(self.COLOURS)])
            painter.setPen(QPen(colour, 1.5))
            painter.drawPolyline(QPolygonF([point(s, v, peak) for s, v in curve]))
            painter.setBrush(colour)
            for step, dice in self.dice.get(member, []):
                painter.drawEllipse(point(step, dice, 1.0), 3, 3)
        painter.end()


class RetrainWidget(WorkerProcessMixin, ShutdownMixin, QWidget):
    """Dock widget: fine-tune the ensemble on annotations; switch and compare versions.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    out_dir : str or Path, optional
        Where new versions are written (default
        :func:`napari_histo.models.versions.user_models_dir`).
    """

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, *, out_dir: str | Path | None = None
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._out_dir = out_dir
        self.jobs = JobRunner(progress_desc="Retraining")
        self._closed = False
        self.last_cards: list[Path] | None = None
        self._build_ui()
        self._connect_viewer(self._refresh_layers)
        self._refresh_layers()

    # -- UI -------------------------------------------------------------------
    def _build_ui(self) -> None:
        from napari_histo.models.versions import active_cards

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.slide_combo = QComboBox()
        self.source_combo = QComboBox()
        self.file_edit = QLineEdit()
        self.file_edit.setPlaceholderText("annotation file (empty: <slide>.annotations.geojson)")
        self.granularity_combo = QComboBox()
        self.granularity_combo.addItems(TRAIN_GRANULARITIES)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(5)
        self.freeze_spin = QSpinBox()
        self.freeze_spin.setRange(0, 1000)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 100000)
        self.steps_spin.setSpecialValueText("from epochs")
        self.steps_spin.setToolTip("optimiser steps per member (overrides epochs when > 0)")
        form.addRow("Slide layer", self.slide_combo)
        form.addRow("Annotations", self.source_combo)
        form.addRow("", self.file_edit)
        form.addRow("Granularity", self.granularity_combo)
        form.addRow("Epochs", self.epochs_spin)
        form.addRow("Encoder frozen (epochs)", self.freeze_spin)
        form.addRow("Steps per member", self.steps_spin)
        layout.addLayout(form)

        members, self.member_boxes = member_checkboxes(
            "Members to fine-tune", {name: name for name in active_cards()}, lambda _: True
        )
        layout.addWidget(members)

        buttons, self.run_button, self.cancel_button = run_cancel_buttons(self.run, self.cancel)
        layout.addLayout(buttons)
        self.plot = LossPlot()
        layout.addWidget(self.plot)

        self.versions_box = QGroupBox("Active version (used by Tumor inference)")
        self.versions_layout = QFormLayout(self.versions_box)
        self.version_combos: dict[str, QComboBox] = {}
        layout.addWidget(self.versions_box)
        self.compare_button = QPushButton("Before / after on the visible region")
        self.compare_button.clicked.connect(self.compare)
        layout.addWidget(self.compare_button)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.refresh_versions()

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def _refresh_layers(self, *_: Any) -> None:
        if self._closed:
            return
        slide, source = self.slide_combo.currentText(), self.source_combo.currentText()
        self.slide_combo.clear()
        self.source_combo.clear()
        self.source_combo.addItem(_AUTOSAVE)
        for layer in self.viewer.layers:
            meta = getattr(layer, "metadata", {}) or {}
            if layer._type_string == "image" and meta.get("path") and meta.get("mpp"):
                self.slide_combo.addItem(layer.name)
            elif layer._type_string == "shapes":
                self.source_combo.addItem(layer.name)
        for combo, text in ((self.slide_combo, slide), (self.source_combo, source)):
            if combo.findText(text) >= 0:
                combo.setCurrentText(text)

    def refresh_versions(self) -> None:
        """Rebuild the per-member version choosers from the cards on disk."""
        from napari_histo.models.versions import active_cards, all_versions

        while self.versions_layout.rowCount():
            self.versions_layout.removeRow(0)
        self.version_combos = {}
        active = active_cards()
        for name, versions in all_versions().items():
            combo = QComboBox()
            for v in versions:
                after = v.metrics.get("heldout_dice_after")
                combo.addItem(v.version + (f"  (Dice {after:.3f})" if after is not None else ""))
                combo.setItemData(combo.count() - 1, v.version)
                if v.card_path == active.get(name):
                    combo.setCurrentIndex(combo.count() - 1)
            combo.currentIndexChanged.connect(lambda _, n=name: self._on_version_chosen(n))
            self.versions_layout.addRow(name, combo)
            self.version_combos[name] = combo

    def _on_version_chosen(self, name: str) -> None:
        from napari_histo.models.versions import set_active_version

        combo = self.version_combos[name]
        version = combo.currentData()
        try:
            set_active_version(name, version)
        except _ERRORS as err:
            self.set_status(f"error: {_one_line(err)}")
            return
        self.set_status(f"{name}: version {version} is active")

    # -- inputs ---------------------------------------------------------------
    def _slide_layer(self) -> Any:
        name = self.slide_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise HistoError("no slide layer: open a slide (File > Open) first")
        return self.viewer.layers[name]

    def _mpp(self, layer: Any) -> tuple[float, float]:
        return layer_mpp(layer.metadata)

    def _annotations(self, slide_path: Path) -> tuple[list[Annotation], str]:
        from napari_histo.training.retrain import read_slide_annotations

        source = self.source_combo.currentText()
        if source and source != _AUTOSAVE and source in self.viewer.layers:
            anns = shapes_to_annotations(self.viewer.layers[source], self._mpp(self._slide_layer()))
            if not anns:
                raise HistoError(f"Shapes layer {source!r}: no annotations to train from")
            return anns, f"layer {source!r}"
        anns, path, _ = read_slide_annotations(slide_path, self.file_edit.text().strip() or None)
        return anns, path.name

    def chosen_members(self) -> list[str]:
        return checked_names(self.member_boxes)

    # -- training -------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while a fine-tuning or comparison job runs."""
        return self.jobs.running

    def run(self) -> None:
        """Start fine-tuning with the chosen settings (errors go to the status line)."""
        from napari_histo.models.versions import user_models_dir
        from napari_histo.training.retrain import finetune_in_worker, resolve_cards, steps_per_epoch
        from napari_histo.training.settings import FinetuneConfig

        if self.running or self._closed:
            return
        try:
            slide_path = Path(self._slide_layer().metadata["path"])
            annotations, source = self._annotations(slide_path)
            names = self.chosen_members()
            if not names:
                raise ValueError("no members chosen: tick at least one model")
            cards = resolve_cards(names)
        except _ERRORS as err:
            self.set_status(f"error: {_one_line(err)}")
            return
        config = FinetuneConfig()
        per_epoch = steps_per_epoch(config)
        steps = self.steps_spin.value() or self.epochs_spin.value() * per_epoch
        frozen = min(steps, self.freeze_spin.value() * per_epoch)
        out = Path(self._out_dir) if self._out_dir else user_models_dir()
        granularity = self.granularity_combo.currentText()
        self._offsets = {}
        self.plot.clear(steps)
        self.set_status(
            f"preparing {len(cards)} member(s), {steps} steps each, from {len(annotations)} "
            f"annotations ({source})…"
        )
        self._set_buttons(running=True)
        kwargs = {
            "card_paths": [str(card) for card in cards],
            "slide_path": str(slide_path),
            "annotations": list(annotations),
            "out_dir": str(out),
            "steps": steps,
            "granularity": granularity,
            "freeze_encoder_steps": frozen,
            "config": config,
        }
        process = self.job_process
        self._start_job(
            # In the dock's worker process: the viewer keeps its GIL, a crash is one line.
            lambda cancel: process.call(finetune_in_worker, kwargs, cancel),
            on_yield=self._on_step,
            on_return=self._on_returned,
            on_error=self._on_errored,
            on_finish=self._on_finished,
            total=steps * len(cards),
        )

    def _start_job(self, make_job, **callbacks: Any) -> None:
        try:
            self.jobs.start(make_job, **callbacks)
        except _ERRORS as err:
            self._set_buttons(running=False)
            self.set_status(f"error: {_one_line(err)}")

    def _set_buttons(self, *, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_step(self, step: tuple[str, Any]) -> None:
        member, event = step
        offset = self._offsets.setdefault(member, len(self._offsets) * event.steps)
        self.plot.add(member, event.step, event.loss, event.val_dice)
        self.jobs.report(offset + event.step, desc=f"Retraining {member} (loss {event.loss:.3f})")
        dice = f", held-out Dice {event.val_dice:.3f}" if event.val_dice is not None else ""
        self.set_status(f"{member}: step {event.step}/{event.steps}, loss {event.loss:.3f}{dice}")

    def _on_returned(self, cards: list[Path]) -> None:
        from napari_histo.models import read_card
        from napari_histo.models.versions import set_active_version

        self.last_cards = list(cards)
        if not cards:
            self.set_status("cancelled: no new model version was written")
            return
        lines = []
        try:
            for path in cards:
                card = read_card(path)
                set_active_version(card.name, card.version)
                m = card.metrics
                lines.append(
                    f"{card.name} {card.parent_version} → {card.version}: held-out Dice "
                    f"{m['heldout_dice_before']:.3f} → {m['heldout_dice_after']:.3f}"
                )
        except _ERRORS as err:
            lines.append(f"error: {_one_line(err)}")
        self.refresh_versions()
        self._summary = "\n".join(lines)
        self.set_status(self._summary)

    def _on_errored(self, err: BaseException) -> None:
        self.last_cards = []
        self.set_status(f"error: {_one_line(err)}; no new model version was written")

    def _on_finished(self) -> None:
        self._set_buttons(running=False)

    def cancel(self) -> None:
        """Stop training after the current step; nothing is written."""
        if self.jobs.cancel():
            self.set_status("cancelling…")

    # -- before / after -------------------------------------------------------
    def compare(self) -> None:
        """Run the parent and the active versions on the visible region; two layers."""
        from napari_histo.models.versions import active_cards
        from napari_histo.training.retrain import parent_card, region_probability

        if self.running or self._closed:
            return
        try:
            layer = self._slide_layer()
            active = active_cards()
            names = [n for n in self.chosen_members() if n in active]
            if not names:
                raise ValueError("no members chosen: tick at least one model")
            after = [active[n] for n in names]
            before = [parent_card(c) for c in after]
            if any(b is None for b in before):
                missing = [n for n, b in zip(names, before, strict=True) if b is None]
                raise HistoError(f"{', '.join(missing)}: the active version has no parent")
            camera = self.viewer.scene.camera
            slide = layer.metadata["slide"]
            region = visible_region_l0(
                camera.center, camera.zoom, self.viewer.canvas.size, self._mpp(layer),
                slide.dimensions,
            )  # fmt: skip
            if region is None:
                raise HistoError("the view does not show the slide")
        except _ERRORS as err:
            self.set_status(f"error: {_one_line(err)}")
            return
        slide_path = layer.metadata["path"]

        def body(cancel):
            outputs = []
            for cards in (before, after):
                yield None
                outputs.append(region_probability(cards, slide_path, region, cancel=cancel))
            return layer, outputs, [_label(c) for c in before], [_label(c) for c in after]

        self._set_buttons(running=True)
        self.set_status(f"running both versions on the {region[2]}×{region[3]} px view…")
        self._start_job(
            body,
            on_return=self._show_compare,
            on_error=self._on_errored,
            on_finish=self._on_finished,
            torch=True,  # both versions run here, in the viewer process
        )

    def _show_compare(self, result: tuple[Any, list, list, list]) -> None:
        layer, outputs, before, after = result
        if any(o is None for o in outputs):
            self.set_status("cancelled")
            return
        tumor = tumor_colormap("histo tumor (compare)")  # the Tumor inference dock's colours
        mpp = self._mpp(layer)
        shift = None
        for (prob, geometry), versions in zip(outputs, (before, after), strict=True):
            scale, translate = overlay_transform(geometry, mpp)
            name = f"tumor probability ({', '.join(sorted(set(versions)))})"
            if shift is None:  # the "before" layer sits on the slide; "after" right of it
                shift = prob.shape[1] * scale[1] * 1.05
            else:
                translate = (translate[0], translate[1] + shift)
                self._add_region_rgb(layer, geometry, scale, translate)
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_image(
                prob, name=name, scale=scale, translate=translate, colormap=tumor,
                contrast_limits=(0, 1), opacity=0.7, metadata={"napari_histo_compare": True},
                units=layer.units,
            )  # fmt: skip
        self.viewer.reset_view()
        summary = getattr(self, "_summary", "")
        self.set_status(
            f"left: version {', '.join(before)}; right: version {', '.join(after)}"
            + (f"\n{summary}" if summary else "")
        )

    def _add_region_rgb(self, layer: Any, geometry: Any, scale: Any, translate: Any) -> None:
        from napari_histo.training.data import read_patch

        slide = layer.metadata["slide"]
        h, w = geometry.shape
        ox, oy = geometry.origin_l0
        ds = geometry.downsample
        size = round(max(h, w) * ds)
        rgb = read_patch(slide, int(ox), int(oy), size, max(h, w))[:h, :w]
        name = "slide region (copy)"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_image(
            rgb, name=name, rgb=True, scale=scale, translate=translate, units=layer.units
        )

    # -- teardown -------------------------------------------------------------
    def shutdown(self, timeout_s: float = 60.0) -> bool:
        """Cancel any run, end the worker process and wait for the job's thread; unbind
        from the viewer (idempotent)."""
        self._close_worker(timeout_s)
        joined = self.jobs.shutdown(timeout_s)
        if self._closed:
            return joined
        self._closed = True
        self._disconnect_viewer(self._refresh_layers)
        return joined


def _label(card_path: Path) -> str:
    from napari_histo.models import read_card

    card = read_card(card_path)
    return f"{card.version}"
