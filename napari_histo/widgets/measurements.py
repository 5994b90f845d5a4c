"""The "Slide measurements" dock: measure the open slide's tumor run, list its lesions.

A thin Qt shell over :mod:`napari_histo.analysis`: Measure runs
:func:`~napari_histo.analysis.measure.measure_run` on the slide's latest complete
tumor run through a :class:`JobRunner` (off the Qt thread), then shows the
summary and one table row per lesion; clicking a row centres and zooms the view
on that lesion. "Save report…" writes the HTML slide report
(:func:`~napari_histo.analysis.report.slide_report`) and "Export lesions
(GeoJSON)…" the lesions as QuPath annotations
(:func:`~napari_histo.analysis.export.write_lesions_geojson`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QAbstractItemView,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_histo.analysis.export import write_lesions_geojson
from napari_histo.analysis.report import area_text, slide_report
from napari_histo.analysis.results import Lesion, SlideMeasurements
from napari_histo.errors import HistoError, NoRunError
from napari_histo.frames import l0_to_world, layer_mpp
from napari_histo.io.store import ResultRun, latest_complete_run
from napari_histo.widgets._common import ShutdownMixin, SlideLayerMixin
from napari_histo.widgets.jobs import JobRunner

if TYPE_CHECKING:
    import napari

__all__ = ["LAYER_NAME", "LESION_COLUMNS", "MeasurementsWidget", "lesion_polygons", "summary_text"]

LAYER_NAME = "lesions"
_TAG = "napari_histo_measurements"  # layer metadata key marking our layers
#: Outline colour of the lesions layer.
OUTLINE_COLOR = "cyan"
#: Lesion table header.
LESION_COLUMNS = ("#", "Area mm²", "Longest mm", "Class", "Mean p", "Mean epistemic")
#: Fraction of the canvas a lesion fills after a jump to it.
JUMP_FILL = 0.5


def summary_text(m: SlideMeasurements) -> str:
    """Plain-text summary of `m`: areas in mm², burden, size class, nuclei when counted."""
    burden = "–" if not math.isfinite(m.tumor_burden) else f"{100 * m.tumor_burden:.1f} %"
    lines = [
        f"Tissue {m.tissue_area_mm2:.3f} mm², tumor {m.tumor_area_mm2:.3f} mm² "
        f"(bed {m.tumor_bed_area_mm2:.3f} mm², burden {burden})",
        f"Slide class: {m.size_class}, {len(m.lesions)} lesion(s) at p ≥ {m.threshold:.2f}",
    ]
    if m.nuclei_tumor is not None and m.nuclei_non_tumor is not None:
        density = ""
        if m.nuclei_density_tumor is not None and m.nuclei_density_non_tumor is not None:
            density = f" ({m.nuclei_density_tumor:.0f} / {m.nuclei_density_non_tumor:.0f} per mm²)"
        lines.append(
            f"Nuclei in tumor / non-tumor: {m.nuclei_tumor} / {m.nuclei_non_tumor}{density}"
        )
    return "\n".join(lines)


def _lesion_cells(lesion: Lesion) -> tuple[str, ...]:
    epistemic = "–" if lesion.mean_epistemic is None else f"{lesion.mean_epistemic:.4f}"
    return (
        str(lesion.label),
        area_text(lesion.area_mm2),
        f"{lesion.longest_diameter_mm:.3f}",
        lesion.size_class,
        f"{lesion.mean_probability:.2f}",
        epistemic,
    )


def lesion_polygons(lesions: Sequence[Lesion], mpp: Any) -> list[np.ndarray]:
    """Lesion outlines as napari world ``(row, col)`` µm polygons (a box where degenerate).

    Parameters
    ----------
    lesions : sequence of Lesion
        Outlines in level-0 px ``(x, y)``.
    mpp : float or (float, float)
        Level-0 µm per px of the slide layer, ``(mpp_y, mpp_x)``.
    """
    polygons = []
    for lesion in lesions:
        outline = np.asarray(lesion.outline_l0, np.float64).reshape(-1, 2)
        if len(np.unique(outline, axis=0)) < 3:
            x, y, w, h = lesion.bbox_l0
            outline = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
        polygons.append(l0_to_world(outline, mpp))
    return polygons


def _measure_job(
    cancel: threading.Event, run: ResultRun, slide_path: Path, threshold: float, out_dir: Any
) -> Generator[str, None, SlideMeasurements | None]:
    """Background job: the complete nuclei run if any, then ``measure_run`` of `run`."""
    from napari_histo.analysis.stored import measure_run
    from napari_histo.nuclei.run import find_nuclei_runs

    yield "measuring"
    nuclei = find_nuclei_runs(slide_path, out_dir)
    if cancel.is_set():
        return None
    from napari_histo.review.run import run_temperature

    measured = measure_run(
        run,
        slide_path,
        threshold=threshold,
        nuclei_run=nuclei[0] if nuclei else None,
        temperature=run_temperature(run),
    )
    return None if cancel.is_set() else measured


class MeasurementsWidget(ShutdownMixin, SlideLayerMixin, QWidget):
    """Dock widget measuring the open slide's latest complete tumor run.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    out_dir : str or Path, optional
        Result store directory (default beside the slide).
    """

    layer_tag = _TAG  # our own layers are never the slide

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, *, out_dir: str | Path | None = None
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._out_dir = out_dir
        self.jobs = JobRunner(progress_desc="Measuring slide")
        self._closed = False
        self._slide_path: Path | None = None
        self.run: ResultRun | None = None
        self.measurements: SlideMeasurements | None = None
        self._build_ui()
        self._connect_viewer(self._on_layers_changed)
        self._slide_path = self._open_slide_path()
        self.refresh_run()

    # -- UI -------------------------------------------------------------------
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        self.slide_label = QLabel("")
        self.slide_label.setWordWrap(True)
        layout.addWidget(self.slide_label)
        row = QHBoxLayout()
        row.addWidget(QLabel("Threshold:"))
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.05, 0.95)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setDecimals(2)
        self.threshold_spin.setValue(0.5)
        self.threshold_spin.setToolTip("tumor probability of tumor pixels and lesions")
        row.addWidget(self.threshold_spin)
        self.measure_button = QPushButton("Measure")
        self.measure_button.clicked.connect(self.measure)
        row.addWidget(self.measure_button, 1)
        layout.addLayout(row)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        layout.addWidget(self.summary_label)
        self.table = QTableWidget(0, len(LESION_COLUMNS))
        self.table.setHorizontalHeaderLabels(list(LESION_COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.cellClicked.connect(lambda row, _col: self.jump_to(row))
        layout.addWidget(self.table, 1)
        row = QHBoxLayout()
        self.report_button = QPushButton("Save report…")
        self.report_button.clicked.connect(lambda: self.save_report())
        self.geojson_button = QPushButton("Export lesions (GeoJSON)…")
        self.geojson_button.clicked.connect(lambda: self.export_lesions())
        row.addWidget(self.report_button)
        row.addWidget(self.geojson_button)
        layout.addLayout(row)
        self._enable()

    def set_status(self, text: str) -> None:
        self.status_label.setText(text)

    def _enable(self) -> None:
        running = self.jobs.running
        self.measure_button.setEnabled(self._slide_path is not None and not running)
        done = self.measurements is not None and not running
        self.report_button.setEnabled(done)
        self.geojson_button.setEnabled(done)

    @property
    def busy(self) -> bool:
        """True while a measurement or a report is being made."""
        return self.jobs.busy

    # -- slide ----------------------------------------------------------------
    def _on_layers_changed(self, *_: Any) -> None:
        if self._closed:
            return
        path = self._open_slide_path()
        if path == self._slide_path:
            return
        self.jobs.cancel()
        self._slide_path = path
        self.refresh_run()

    def refresh_run(self) -> ResultRun | None:
        """Find the open slide's latest complete tumor run; one line says what is missing."""
        self.run = None
        self._show(None)
        path = self._slide_path
        if path is None:
            self.slide_label.setText("no slide: open one with the napari-histo reader")
        else:
            try:
                self.run = latest_complete_run(path, out_dir=self._out_dir)
            except NoRunError:
                self.run = None
                self.slide_label.setText(self._run_text(path, None))
            except (HistoError, OSError) as err:
                self.slide_label.setText(f"{path.name}: result store not readable: {err}")
            else:
                self.slide_label.setText(self._run_text(path, self.run))
        self._enable()
        return self.run

    @staticmethod
    def _run_text(path: Path, run: ResultRun | None) -> str:
        if run is None:
            return (
                f"{path.name}: no complete tumor run; run Tumor inference on the whole "
                "slide, then press Measure"
            )
        models = ", ".join(
            f"{m.get('name')} {m.get('version')}" for m in run.settings.get("models", [])
        )
        return f"{path.name}: run {run.run_id} ({models})"

    # -- measuring --------------------------------------------------------------
    def measure(self) -> None:
        """Measure the slide's latest complete tumor run (looked up again) in the background."""
        if self.refresh_run() is None:
            self.set_status("nothing to measure: " + self.slide_label.text())
            return
        measured_for = (self._slide_path, self.run.run_id)

        def on_return(result: SlideMeasurements | None) -> None:
            # The slide (or its run) changed while measuring: the result is not this one's.
            current = (self._slide_path, self.run.run_id if self.run is not None else None)
            self._on_measured(result if current == measured_for else None)

        # Read on the Qt thread, now: the job runs on a worker thread.
        run_, path, threshold, out_dir = (
            self.run,
            self._slide_path,
            self.threshold_spin.value(),
            self._out_dir,
        )
        self.jobs.start(
            lambda cancel: _measure_job(cancel, run_, path, threshold, out_dir),
            on_return=on_return,
            on_error=self._on_errored,
            on_finish=self._enable,
        )
        self.set_status("measuring…")
        self._enable()

    def _on_measured(self, result: SlideMeasurements | None) -> None:
        if result is None:
            self.set_status("cancelled")
            return
        self._show(result)
        self.show_lesions()
        self.set_status(f"measured in {self.jobs.elapsed_s:.1f} s; click a lesion to go to it")

    def _on_errored(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        message = f"measuring failed: {exc}"
        self.set_status(message)
        show_error(message)

    def _show(self, measurements: SlideMeasurements | None) -> None:
        """Fill the summary and the lesion table (empty them for None)."""
        self.measurements = measurements
        self.summary_label.setText("" if measurements is None else summary_text(measurements))
        lesions = () if measurements is None else measurements.lesions
        self.table.setRowCount(len(lesions))
        for row, lesion in enumerate(lesions):
            for col, text in enumerate(_lesion_cells(lesion)):
                self.table.setItem(row, col, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self._fit_table()
        self._enable()

    def _fit_table(self) -> None:
        """Widen the table (and so the dock) to show every column."""
        header = self.table.horizontalHeader()
        width = header.length() + self.table.verticalScrollBar().sizeHint().width()
        self.table.setMinimumWidth(min(width + 2 * self.table.frameWidth(), 640))

    def show_lesions(self):
        """Show the lesion outlines as the "lesions" Shapes layer, numbered; returns it."""
        layer = self.slide_layer()
        if self.measurements is None or layer is None:
            return None
        lesions = self.measurements.lesions
        if LAYER_NAME in self.viewer.layers and self.viewer.layers[LAYER_NAME].metadata.get(_TAG):
            self.viewer.layers.remove(LAYER_NAME)
        if not lesions:
            return None
        mpp = layer_mpp(layer.metadata)
        shapes = self.viewer.add_shapes(
            lesion_polygons(lesions, mpp),
            shape_type="polygon",
            name=LAYER_NAME,
            edge_color=OUTLINE_COLOR,
            face_color="transparent",
            edge_width=self.measurements.mpp_um,  # one measurement-grid px, µm
            features={"lesion": [lesion.label for lesion in lesions]},
            text={"string": "{lesion}", "color": OUTLINE_COLOR, "size": 10, "anchor": "upper_left"},
            units=layer.units,
            metadata={_TAG: True},
        )
        self.viewer.layers.selection.active = layer  # keep clicks on the slide, not the shapes
        return shapes

    # -- navigation ---------------------------------------------------------------
    def jump_to(self, row: int) -> None:
        """Centre the view on lesion `row` of the table, zoomed so it fills about half of it."""
        layer = self.slide_layer()
        if self.measurements is None or layer is None:
            return
        if not 0 <= row < len(self.measurements.lesions):
            return
        x, y, w, h = self.measurements.lesions[row].bbox_l0
        mpp_y, mpp_x = layer_mpp(layer.metadata)
        camera = self.viewer.scene.camera
        camera.center = ((y + h / 2 - 0.5) * mpp_y, (x + w / 2 - 0.5) * mpp_x)
        height_px, width_px = self.viewer.canvas.size
        zoom = JUMP_FILL * min(height_px / max(h * mpp_y, 1e-9), width_px / max(w * mpp_x, 1e-9))
        camera.zoom = zoom
        self.table.selectRow(row)

    # -- files ----------------------------------------------------------------------
    def _ask_path(self, title: str, suggestion: str, pattern: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(self, title, suggestion, pattern)
        return path or None

    def _suggest(self, suffix: str) -> str:
        if self._slide_path is None:
            return ""
        return str(self._slide_path.with_name(self._slide_path.name + suffix))

    def save_report(self, path: str | Path | None = None) -> None:
        """Write the HTML report in the background (asks for a file when `path` is None)."""
        run, m, slide_path = self.run, self.measurements, self._slide_path
        if m is None or run is None or slide_path is None:
            self.set_status("nothing to report: press Measure first")
            return
        path = path or self._ask_path("Save slide report", self._suggest(".report.html"),
                                      "HTML (*.html)")  # fmt: skip
        if path is None:
            return

        def write() -> Path:
            return slide_report(run, slide_path, m, path)

        self.set_status(f"writing {path}…")
        self.jobs.call(write, on_return=self._on_written, on_error=self._on_write_failed)

    def export_lesions(self, path: str | Path | None = None) -> Path | None:
        """Write the lesions as QuPath GeoJSON annotations (asks when `path` is None)."""
        if self.measurements is None:
            self.set_status("nothing to export: press Measure first")
            return None
        path = path or self._ask_path("Export lesions", self._suggest(".lesions.geojson"),
                                      "GeoJSON (*.geojson *.json)")  # fmt: skip
        if path is None:
            return None
        try:
            written = write_lesions_geojson(path, self.measurements)
        except HistoError as err:
            self._on_write_failed(err)
            return None
        self._on_written(written)
        return written

    def _on_written(self, path: Path) -> None:
        self.set_status(f"wrote {path}")

    def _on_write_failed(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        self.set_status(str(exc))
        show_error(str(exc))

    # -- teardown ---------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Cancel the job, wait for its thread, and unbind from the viewer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.jobs.shutdown(timeout_s)
        self._disconnect_viewer(self._on_layers_changed)
