"""The "Nuclei" dock widget: nuclei of the view or a drawn region as a napari Labels layer.

A thin Qt shell over :mod:`napari_histo.nuclei.store`: it turns the view (or a
rectangle of a Shapes layer) into a level-0 region, runs
:func:`~napari_histo.nuclei.export.iter_region_nuclei` in the dock's worker process
(:class:`~napari_histo.live.worker.JobProcess`: the viewer keeps its GIL, and a
crash there is one line here), driven from a :class:`JobRunner` thread, and shows
the result as a Labels layer in µm, aligned with the slide, whose
``features`` (one row per nucleus, ``index`` = label) napari shows on hover.
Whole-slide nuclei written to the store by ``napari-histo nuclei`` are shown as
a multiscale Labels layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_histo.errors import HistoError
from napari_histo.frames import drawn_region_l0, grid_transform, layer_mpp, visible_region_l0
from napari_histo.nuclei.classical import METHODS
from napari_histo.nuclei.export import (
    RegionNuclei,
    check_region_size,
    export_csv,
    export_geojson,
    iter_region_nuclei,
    write_region_geojson,
)
from napari_histo.nuclei.features import write_nuclei_csv
from napari_histo.nuclei.run import NucleiRun, find_nuclei_runs
from napari_histo.widgets._common import (
    MppField,
    ShutdownMixin,
    WorkerProcessMixin,
    topmost_slide_layer,
)
from napari_histo.widgets.jobs import JobRunner

if TYPE_CHECKING:
    import napari

__all__ = ["LAYER_NAME", "SLIDE_LAYER_NAME", "NucleiWidget"]

LAYER_NAME = "nuclei"
SLIDE_LAYER_NAME = "nuclei (whole slide)"
_TAG = "napari_histo_nuclei"  # layer metadata key marking our layers


def _features(table: dict[str, np.ndarray]):
    """A napari features table: ``index`` (the label) first, then the measurements."""
    import pandas as pd

    columns = {"index": np.asarray(table["id"], np.int64)}
    columns.update({k: np.asarray(v) for k, v in table.items() if k != "id"})
    return pd.DataFrame(columns)


class NucleiWidget(WorkerProcessMixin, ShutdownMixin, QWidget):
    """Dock widget segmenting nuclei in the view or a drawn rectangle.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    out_dir : str or Path, optional
        Result store directory (default beside the slide): tumour probability
        and whole-slide nuclei are read from there.
    """

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, *, out_dir: str | Path | None = None
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._out_dir = out_dir
        self.jobs = JobRunner()
        self._closed = False
        self._slide_path: Path | None = None
        self.last_result: RegionNuclei | None = None
        self.last_seconds: float | None = None
        self.slide_run: NucleiRun | None = None
        self._build_ui()
        self._connect_viewer(self._on_layers_changed)
        self._on_layers_changed()

    # -- UI -------------------------------------------------------------------
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        self.slide_label = QLabel("no slide")
        self.slide_label.setWordWrap(True)
        layout.addWidget(self.slide_label)
        self.mpp_field = MppField(self.viewer, "Nuclei dock", self._on_layers_changed)
        layout.addWidget(self.mpp_field)
        row = QHBoxLayout()
        row.addWidget(QLabel("Method:"))
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHODS))
        row.addWidget(self.method_combo, 1)
        layout.addLayout(row)
        self.view_button = QPushButton("Run on view")
        self.view_button.clicked.connect(self.run_on_view)
        self.drawn_button = QPushButton("Run on drawn region")
        self.drawn_button.setToolTip(
            "the selected (or last) rectangle of the selected Shapes layer"
        )
        self.drawn_button.clicked.connect(self.run_on_drawn)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        for button in (self.view_button, self.drawn_button, self.cancel_button):
            row.addWidget(button)
        layout.addLayout(row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        layout.addWidget(self.progress_bar)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        row = QHBoxLayout()
        self.csv_button = QPushButton("Export CSV…")
        self.csv_button.clicked.connect(lambda: self.export_csv())
        self.geojson_button = QPushButton("Export GeoJSON…")
        self.geojson_button.clicked.connect(lambda: self.export_geojson())
        row.addWidget(self.csv_button)
        row.addWidget(self.geojson_button)
        layout.addLayout(row)
        self.slide_button = QPushButton("Show whole-slide nuclei from the store")
        self.slide_button.clicked.connect(self.show_stored)
        layout.addWidget(self.slide_button)
        layout.addStretch(1)

    def set_status(self, text: str) -> None:
        self.status_label.setText(text)

    @property
    def method(self) -> str:
        return self.method_combo.currentText()

    # -- slide ----------------------------------------------------------------
    def slide_layer(self):
        """The topmost layer opened by napari-histo's reader (metadata has ``path``), or None."""
        return topmost_slide_layer(self.viewer.layers, _TAG)

    def _slide_geometry(self) -> tuple[Path, tuple[float, float], tuple[int, int]] | None:
        layer = self.slide_layer()
        if layer is None:
            return None
        meta = layer.metadata
        mpp = layer_mpp(meta)
        slide = meta.get("slide")
        dims = tuple(slide.dimensions) if slide is not None else None
        if dims is None:
            h, w = layer.data[0].shape[:2]
            dims = (int(w), int(h))
        return Path(meta["path"]), mpp, dims

    def _on_layers_changed(self, *_: Any) -> None:
        if self._closed:
            return
        shown = topmost_slide_layer(self.viewer.layers, _TAG, need_mpp=False)
        self.mpp_field.bind(shown)
        found = self._slide_geometry()
        path = None if found is None else found[0]
        if path == self._slide_path:
            return
        self.cancel()
        self._slide_path = path
        self.slide_run = None
        if path is None:
            self.slide_label.setText(
                "no slide: open one with the napari-histo reader"
                if shown is None
                else f"Slide: {Path(shown.metadata['path']).name}: its µm/px is unknown; "
                "set it below to segment nuclei"
            )
            return
        self.slide_label.setText(f"Slide: {path.name}")
        try:
            runs = find_nuclei_runs(path, self._out_dir)
        except (HistoError, OSError) as err:
            runs = []
            self.set_status(f"result store not readable: {err}")
        if runs:  # shown once this layer event is over (not from inside it)
            QTimer.singleShot(0, self._show_stored_if_open)

    def _show_stored_if_open(self) -> None:
        if not self._closed and self._slide_path is not None:
            self.show_stored()

    # -- running ----------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True until the last job's thread is done and its signals are handled."""
        return self.jobs.busy

    def current_region(self) -> tuple[int, int, int, int] | None:
        """Level-0 ``(x, y, w, h)`` the canvas shows now, or None."""
        found = self._slide_geometry()
        if found is None:
            return None
        _, mpp, dims = found
        camera = self.viewer.scene.camera
        return visible_region_l0(camera.center, camera.zoom, self.viewer.canvas.size, mpp, dims)

    def drawn_region(self) -> tuple[int, int, int, int] | None:
        """Level-0 box of the selected (else last) shape of the active (else top) Shapes layer."""
        from napari.layers import Shapes

        found = self._slide_geometry()
        active = self.viewer.layers.selection.active
        shapes = [active] if isinstance(active, Shapes) else []
        shapes += [lyr for lyr in reversed(self.viewer.layers) if isinstance(lyr, Shapes)]
        layer = next((lyr for lyr in shapes if len(lyr.data)), None)
        if found is None or layer is None:
            return None
        index = max(layer.selected_data) if layer.selected_data else len(layer.data) - 1
        corners = np.asarray(layer.data[index], float)[:, -2:]
        world = np.array([layer.data_to_world(c) for c in corners])[:, -2:]
        return drawn_region_l0(world, found[1], found[2])

    def run_on_view(self) -> None:
        """Segment the nuclei of the region the canvas shows."""
        region = self.current_region()
        if region is None:
            self.set_status("no slide in view: open one with the napari-histo reader")
            return
        self.start(region)

    def run_on_drawn(self) -> None:
        """Segment the nuclei inside the drawn rectangle."""
        region = self.drawn_region()
        if region is None:
            self.set_status("draw a rectangle on the slide in a Shapes layer first")
            return
        self.start(region)

    def start(self, region: tuple[int, int, int, int]) -> None:
        """Start a background job on level-0 `region` (cancelling the one in flight)."""
        try:
            check_region_size(region)  # at once, not after the worker has started
        except ValueError as err:
            self.set_status(f"cannot run: {err}")
            return
        kwargs = {
            "slide_path": str(self._slide_path),
            "region_l0": tuple(int(v) for v in region),
            "method": self.method,
            "out_dir": None if self._out_dir is None else str(self._out_dir),
        }
        process = self.job_process
        try:
            self.jobs.start(
                lambda cancel: process.call(iter_region_nuclei, kwargs, cancel),
                on_yield=self._on_progress,
                on_return=self._on_returned,
                on_error=self._on_errored,
                on_finish=self._on_finished,
            )
        except (ValueError, OSError) as err:
            self.set_status(f"cannot run: {err}")
            return
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.cancel_button.setEnabled(True)
        self.set_status(f"segmenting nuclei in {region[2]} × {region[3]} px ({self.method})…")

    def cancel(self) -> None:
        """Stop the job in flight at its next tile."""
        self.jobs.cancel()
        self.cancel_button.setEnabled(False)

    def _on_progress(self, step: tuple[int, int]) -> None:
        done, total = step
        self.progress_bar.setRange(0, max(1, total))
        self.progress_bar.setValue(done)

    def _on_returned(self, result: RegionNuclei | None) -> None:
        seconds = self.jobs.elapsed_s
        if result is None:
            self.set_status("cancelled")
            return
        self.last_result, self.last_seconds = result, seconds
        self.show_result(result)
        n = len(result.table["id"])
        self.set_status(f"{n} nuclei in {seconds:.1f} s; hover one to see its measurements")

    def _on_errored(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        message = f"nuclei failed: {exc}"
        self.set_status(message)
        show_error(message)

    def _on_finished(self) -> None:
        self.cancel_button.setEnabled(False)

    # -- layers -------------------------------------------------------------------
    def _replace_layer(self, name: str, data, **kwargs) -> Any:
        if name in self.viewer.layers and self.viewer.layers[name].metadata.get(_TAG):
            self.viewer.layers.remove(name)
        slide = self.slide_layer()
        if slide is not None:
            kwargs["units"] = slide.units  # µm like the slide (napari warns on a mix)
        layer = self.viewer.add_labels(data, name=name, opacity=0.6, **kwargs)
        layer.metadata[_TAG] = True
        return layer

    def show_result(self, result: RegionNuclei):
        """Show `result` as the "nuclei" Labels layer (µm scale and translate on the slide)."""
        scale, translate = grid_transform(result.region_l0[:2], 1.0, result.mpp)
        return self._replace_layer(
            LAYER_NAME,
            result.labels,
            scale=scale,
            translate=translate,
            features=_features(result.table),
            metadata={"region_l0": result.region_l0},
        )

    def show_stored(self):
        """Show the largest complete nuclei run of the store as a multiscale Labels layer."""
        if self._slide_path is None:
            return None
        try:
            runs = find_nuclei_runs(self._slide_path, self._out_dir)
        except (HistoError, OSError) as err:
            self.set_status(f"result store not readable: {err}")
            return None
        if not runs:
            self.set_status("no whole-slide nuclei in the store: run `napari-histo nuclei SLIDE`")
            return None
        self.slide_run = run = runs[0]
        _, mpp, _ = self._slide_geometry()
        scale, translate = grid_transform(run.geometry.origin_l0, 1.0, mpp)
        layer = self._replace_layer(
            SLIDE_LAYER_NAME,
            run.levels(),
            multiscale=True,
            scale=scale,
            translate=translate,
            features=_features(run.features()),
            metadata={"run_id": run.run_id},
        )
        self.set_status(f"{len(layer.features)} stored nuclei ({run.method}, run {run.run_id})")
        return layer

    # -- export -----------------------------------------------------------------------
    def _export_source(self) -> RegionNuclei | NucleiRun | None:
        active = self.viewer.layers.selection.active
        if active is not None and active.name == SLIDE_LAYER_NAME and self.slide_run is not None:
            return self.slide_run
        return self.last_result or self.slide_run

    def _ask_path(self, title: str, pattern: str) -> str | None:
        path, _ = QFileDialog.getSaveFileName(self, title, "", pattern)
        return path or None

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the nuclei measurements to CSV (asks for a file when `path` is None)."""
        source = self._export_source()
        if source is None:
            self.set_status("nothing to export: run nuclei first")
            return None
        path = path or self._ask_path("Export nuclei measurements", "CSV (*.csv)")
        if path is None:
            return None
        if isinstance(source, NucleiRun):
            written = export_csv(source, path)
        else:
            written = write_nuclei_csv(path, source.table)
        self.set_status(f"wrote {written}")
        return written

    def export_geojson(self, path: str | Path | None = None) -> Path | None:
        """Write the nuclei as QuPath-style GeoJSON detections (asks when `path` is None)."""
        source = self._export_source()
        if source is None:
            self.set_status("nothing to export: run nuclei first")
            return None
        path = path or self._ask_path("Export nuclei detections", "GeoJSON (*.geojson *.json)")
        if path is None:
            return None
        if isinstance(source, NucleiRun):
            written = export_geojson(source, path)
        else:
            written = write_region_geojson(source, path)
        self.set_status(f"wrote {written}")
        return written

    # -- teardown ---------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Cancel every job, end the worker process, wait for the threads, and unbind
        from the viewer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._close_worker(timeout_s)
        self.jobs.shutdown(timeout_s)
        self.mpp_field.unbind()
        self._disconnect_viewer(self._on_layers_changed)
