"""The "Annotate" dock widget: classes, granularity tools, model → annotations, autosave.

A thin Qt shell over :mod:`napari_histo.annotations.layers` (layer data ↔
annotations) and :mod:`napari_histo.io.annotations`. Its boxes live beside it:
:class:`~napari_histo.widgets.annotation_classes.ClassesBox` (the class list),
:class:`~napari_histo.widgets.annotation_crop.DrawBox` (granularity, pixel crop,
"From model") and :class:`~napari_histo.widgets.nuclei_edit.NucleiEditBox`
(instance editing, re-exported here); the widget keeps the slide, the Shapes
layer, the crop state and autosaving, and offers the boxes' actions as methods.

Layers it manages, all lined up with the slide layer (world µm):

``annotations``
    One Shapes layer (world µm, scale 1) holding every vector annotation of the
    slide: bbox (rectangle), ellipse, polygon and the outlines of pixel
    annotations. Built with one ``add_shapes`` call however many there are.
``pixel annotation crop``
    A Labels crop of the visible region (≤ 2048 px a side) for brush, fill,
    eraser and polygon painting; "Commit crop" turns it into pixel annotations.
    napari cannot paint a multiscale Labels layer, hence the crop.

Every change of the Shapes layer is saved within about a second to
``<slide>.annotations.geojson`` (or the project directory) by an
:class:`~napari_histo.io.annotations.autosave.Autosaver`; the class list goes to
``<slide>.annotations.classes.json``. Opening the slide again restores both.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QGroupBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from napari_histo.annotations.layers import (
    FEATURE_COLUMNS,
    CropGeometry,
    annotations_to_shapes,
    classes_path,
    load_classes,
    shapes_to_annotations,
)
from napari_histo.annotations.model import DEFAULT_CLASSES, Annotation, AnnotationClass, class_index
from napari_histo.errors import HistoError
from napari_histo.frames import layer_mpp, visible_region_l0
from napari_histo.io.annotations import read_annotations, write_annotations
from napari_histo.io.annotations.autosave import Autosaver, autosave_path
from napari_histo.widgets.annotation_classes import ClassesBox
from napari_histo.widgets.annotation_crop import CROP_LAYER, LAYER_TAG, PROBABILITY_LAYER, DrawBox
from napari_histo.widgets.jobs import JobRunner
from napari_histo.widgets.nuclei_edit import NucleiEditBox, button

if TYPE_CHECKING:
    import napari

# CROP_LAYER and PROBABILITY_LAYER are defined in annotation_crop and importable from here too
__all__ = ["CROP_LAYER", "PROBABILITY_LAYER", "SHAPES_LAYER", "AnnotationWidget", "NucleiEditBox"]

SHAPES_LAYER = "annotations"
_MODES = {"bbox": "add_rectangle", "ellipse": "add_ellipse", "polygon": "add_polygon"}
#: Shapes layers with more shapes than this are built on a worker thread.
BACKGROUND_ABOVE = 500
#: Annotation files larger than this (bytes; 10k polygons ≈ 16 MB) are read on a worker thread.
READ_IN_BACKGROUND_ABOVE = 2_000_000
_SETTLE_MS = 150  # coalesce a burst of layer events before taking a snapshot


class AnnotationWidget(QWidget):
    """Dock widget: annotate the topmost napari-histo slide layer (see module docstring).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
    project_dir : path, optional
        Save annotations there instead of beside the slide.
    autosave_delay_s : float
        Autosaver delay after the snapshot (the snapshot itself waits ~0.15 s).
    """

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, project_dir: str | Path | None = None,
        autosave_delay_s: float = 0.5,
    ) -> None:  # fmt: skip
        super().__init__()
        self.viewer = viewer = napari_viewer
        self.project_dir = Path(project_dir) if project_dir is not None else None
        self.autosave_delay_s = autosave_delay_s
        self.classes: list[AnnotationClass] = list(DEFAULT_CLASSES)
        self.slide_path: Path | None = None
        self._scale_source: Any = None  # the slide layer whose scale changes we follow
        self.mpp: tuple[float, float] | None = None
        self.slide_dims: tuple[int, int] | None = None  # level-0 (width, height)
        self.units: tuple[str, ...] | None = None
        self.autosaver: Autosaver | None = None
        self.crop: CropGeometry | None = None
        self._held: list[Annotation] = []  # hidden from Shapes: points, pixel ones in the crop
        self._cache: dict[str, Annotation] = {}
        self._shapes = None
        self._stale: list[Any] = []  # replaced Shapes layers, removed once the new one is shown
        self._building = False
        self._blocked: str | None = None  # why autosave is off
        self._save_error: str | None = None  # set on the autosave thread
        self._snapshot: list[Annotation] = []
        self.crop_ids: set[str] = set()  # pixel annotations held by the open crop
        self._generation = self._shown_generation = 0
        self.jobs = JobRunner()  # reading files and building layers off the Qt thread
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.snapshot)
        self._build_ui()
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layers_changed)
        self._on_layers_changed()

    # -- UI ------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.slide_label = QLabel("no slide: open one with the napari-histo reader")
        self.slide_label.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.classes_box = ClassesBox(self)
        self.draw_box = DrawBox(self)
        # the boxes' fields, on the widget too: it reads them everywhere (and so do scripts)
        self.class_combo = self.classes_box.class_combo
        self.new_class = self.classes_box.new_class
        self.author = self.classes_box.author
        self.granularity = self.draw_box.granularity
        self.threshold = self.draw_box.threshold
        self.model_output = self.draw_box.model_output

        files = QGroupBox("Files")
        row = QHBoxLayout(files)
        row.addWidget(button("Import…", self._import_dialog, "GeoJSON (QuPath) or ASAP XML"))
        row.addWidget(button("Export…", self._export_dialog, "GeoJSON or ASAP XML (.xml)"))
        row.addWidget(button("Project dir…", self._project_dialog, "save annotations there"))

        layout = QVBoxLayout(self)
        layout.addWidget(self.slide_label)
        layout.addWidget(self.classes_box)
        layout.addWidget(self.draw_box)
        layout.addWidget(files)
        self.nuclei_box = NucleiEditBox(self, exclude=(CROP_LAYER,))
        layout.addWidget(self.nuclei_box)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def set_status(self, message: str, error: bool = False) -> None:
        """Show one line in the widget (and as a napari notification for errors)."""
        self.status.setText(message)
        if error:
            from napari.utils.notifications import show_error

            show_error(message)

    # -- slide attachment ---------------------------------------------------------------
    def slide_layer(self):
        """The topmost layer opened by napari-histo's reader (metadata has path and mpp)."""
        for layer in reversed(self.viewer.layers):
            meta = layer.metadata
            if meta.get("path") and meta.get("mpp") and not meta.get(LAYER_TAG):
                return layer
        return None

    @property
    def annotation_path(self) -> Path | None:
        """Where annotations of the current slide are saved."""
        return None if self.slide_path is None else autosave_path(self.slide_path, self.project_dir)

    def _on_layers_changed(self, *_: Any) -> None:
        if self._shapes is not None and self._shapes not in self.viewer.layers:
            self._shapes = None
        if self.crop is not None and CROP_LAYER not in self.viewer.layers:
            self.discard_crop()
        layer = self.slide_layer()
        path = Path(layer.metadata["path"]) if layer is not None else None
        if path == self.slide_path:
            return
        self._detach()
        if layer is not None:
            self._attach(layer)

    def _on_slide_scale(self, *_: Any) -> None:
        """The slide's µm/px changed (a dock's µm/px field): rebuild the layers at the new one.

        Everything is saved (in level-0 px) and shown again from the file, so the
        shapes, the crop and the visible-region arithmetic all use the new scale.
        """
        layer = self._scale_source
        if layer is None or self.mpp is None or layer_mpp(layer.metadata) == self.mpp:
            return
        self._detach()
        self._attach(layer)

    def _attach(self, layer) -> None:
        meta = layer.metadata
        self._scale_source = layer
        layer.events.scale.connect(self._on_slide_scale)
        self.slide_path = Path(meta["path"])
        self.mpp = layer_mpp(meta)
        self.units = tuple(str(u) for u in layer.units)
        level0 = layer.data[0] if layer.multiscale else layer.data
        self.slide_dims = (int(level0.shape[1]), int(level0.shape[0]))
        self._start(restore=True)

    def _start(self, restore: bool) -> None:
        path = self.annotation_path
        assert path is not None
        self.slide_label.setText(f"{self.slide_path.name}: saving to {path}")
        self._blocked = None
        anns: list[Annotation] = []
        try:
            self.classes = load_classes(classes_path(path))
        except HistoError as exc:
            self.set_status(str(exc), error=True)
        self.classes_box.refresh()
        if restore and path.exists():
            try:
                found = read_annotations(path)
            except HistoError as exc:
                self._blocked = f"autosave off: {exc}; fix or move the file"
                self.set_status(self._blocked, error=True)
            else:
                anns = found.annotations
                note = f" ({len(found.problems)} problems)" if found.problems else ""
                self.set_status(f"restored {len(anns)} annotations from {path.name}{note}")
        self.set_annotations(anns)
        self.autosaver = Autosaver(
            path, self.annotations, self.autosave_delay_s, on_error=self._on_save_error
        )

    def _detach(self) -> None:
        """Save everything (an open crop is committed) and drop the slide's layers."""
        if self.crop is not None and self.mpp is not None:
            self.commit_crop()
        self._detach_saver()
        if self._scale_source is not None:
            self._scale_source.events.scale.disconnect(self._on_slide_scale)
            self._scale_source = None
        self.slide_path = self.mpp = self.slide_dims = None
        self.crop, self.crop_ids = None, set()
        if self._crop_layer() is not None:
            self.viewer.layers.remove(CROP_LAYER)
        self.set_annotations([])  # removes the Shapes layer (no slide: none is built)
        self.slide_label.setText("no slide: open one with the napari-histo reader")

    def _on_save_error(self, exc: Exception) -> None:  # autosave thread: no Qt here
        self._save_error = f"autosave failed: {exc}"

    def set_project_dir(self, project_dir: str | Path | None) -> None:
        """Save to `project_dir` from now on (the current annotations are saved there)."""
        anns = self.annotations() if self.slide_path is not None else []
        self._detach_saver()
        self.project_dir = Path(project_dir) if project_dir is not None else None
        if self.slide_path is not None:
            self._start(restore=False)
            self.set_annotations(anns)
            self.notify_changed()

    def _detach_saver(self) -> None:
        self._flush()
        if self.autosaver is not None:
            self.autosaver.close()
            self.autosaver = None

    def close(self) -> bool:
        """Save what is pending and stop autosaving; undo the viewer bindings."""
        self.viewer.layers.events.inserted.disconnect(self._on_layers_changed)
        self.viewer.layers.events.removed.disconnect(self._on_layers_changed)
        self.nuclei_box.unbind()
        self.jobs.shutdown()
        self._detach()
        return super().close()

    # -- annotations <-> Shapes layer ---------------------------------------------------
    def annotations(self) -> list[Annotation]:
        """The last snapshot of the slide's annotations (layer order, then held ones)."""
        return list(self._snapshot)

    def set_annotations(self, anns: list[Annotation], background: bool | None = None) -> None:
        """Show `anns` in one freshly built Shapes layer (bulk) and take them as the snapshot.

        More than :data:`BACKGROUND_ABOVE` shapes are built on a worker thread
        (10k polygons: ~2.5 s with napari's compiled triangulation, ``bermuda``);
        the viewer stays responsive and :attr:`building` is True meanwhile.
        """
        self._held = [a for a in anns if a.kind == "point" or a.id in self.crop_ids]
        shown = [a for a in anns if a.kind != "point" and a.id not in self.crop_ids]
        self._cache = {a.id: a for a in shown}
        self._snapshot = shown + self._held
        self._generation += 1
        if self._shapes is not None:  # stays on show until the new layer replaces it
            self._shapes.events.data.disconnect(self._on_data)
            self._shapes.events.features.disconnect(self._on_data)
            self._shapes.mode = "pan_zoom"
            self._shapes.editable = False  # its edits would be lost
            self._stale.append(self._shapes)
        self._shapes = None
        if self.mpp is None:
            self._remove_stale()
            return
        from napari.layers import Shapes

        kwargs = annotations_to_shapes(shown, self.mpp, self.classes)
        kwargs.update(ndim=2, name=SHAPES_LAYER, edge_width=self._edge_width(), units=self.units,
                      metadata={LAYER_TAG: True, "mpp": self.mpp})  # fmt: skip
        generation = self._generation
        if not (len(shown) > BACKGROUND_ABOVE if background is None else background):
            self._add_layer(Shapes(**kwargs), generation)
            return
        self.set_status(f"building {len(shown)} annotations in the background…")
        self._in_background("building the layer", lambda: Shapes(**kwargs),
                            partial(self._add_layer, generation=generation))  # fmt: skip

    def _in_background(self, what: str, func, done) -> None:
        """``done(func())`` on the Qt thread, `func` on a worker; errors go to the status line.

        `func` must be a plain function: napari puts ``f"{func}"`` in its task
        status, and the repr of a ``partial`` holding 10k arrays takes seconds.
        """
        self.jobs.call(
            func,
            on_return=done,
            on_error=lambda exc: self.set_status(f"{what} failed: {exc}", error=True),
        )

    def _remove_stale(self) -> None:
        stale, self._stale = self._stale, []
        for layer in stale:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)

    @property
    def building(self) -> bool:
        """True while annotations are read or a Shapes layer is built on a worker thread."""
        return self.jobs.busy or self._shown_generation != self._generation

    def _add_layer(self, layer, generation: int) -> None:
        if generation != self._generation:  # superseded while it was built
            return
        self._building = True
        try:  # add before removing: drawing no Shapes layer in between crashes software GL
            self.viewer.add_layer(layer)
            self._remove_stale()
            layer.name = SHAPES_LAYER  # napari renamed it while the old one was there
        finally:
            self._building = False
        self._shapes = layer
        self._shown_generation = generation
        layer.events.data.connect(self._on_data)
        layer.events.features.connect(self._on_data)
        self.on_class_changed(self.class_combo.currentText())
        if len(layer.data) > BACKGROUND_ABOVE:
            self.set_status(f"{len(layer.data)} annotations shown")

    def _edge_width(self) -> float:
        """About 2 screen px at the current zoom, in world µm."""
        return 2.0 / max(float(self.viewer.scene.camera.zoom), 1e-9)

    def _on_data(self, event=None) -> None:
        action = str(getattr(event, "action", "changed"))
        if self._building or action.endswith("ing"):
            return
        if not self._timer.isActive():
            self._timer.start(_SETTLE_MS)

    def notify_changed(self) -> None:
        """Hand the current snapshot to the autosaver (unless a bulk change is in progress)."""
        if self.autosaver is not None and self._blocked is None:
            self.autosaver.changed(self._snapshot)

    def snapshot(self) -> list[Annotation]:
        """Read the Shapes layer into annotations now and hand them to the autosaver."""
        self._timer.stop()
        layer = self._shapes
        if layer is None or self.mpp is None:
            return self.annotations()
        feats = layer.features
        columns = {k: list(feats[k]) if k in feats else [] for k in FEATURE_COLUMNS}
        anns = shapes_to_annotations(
            layer.data, layer.shape_type, columns, self.mpp,
            default_label=self.class_combo.currentText() or "tumor",
            default_author=self.author.text(), previous=self._cache,
        )  # fmt: skip
        if len(anns) == len(layer.data) and any(
            columns["id"][i] != a.id for i, a in enumerate(anns)
        ):  # newly drawn shapes: keep the ids and times they got
            self._building = True
            try:
                for key, attr in (
                    ("id", "id"),
                    ("created", "created"),
                    ("author", "author"),
                    ("label", "label"),
                    ("granularity", "granularity"),
                ):
                    feats[key] = [getattr(a, attr) for a in anns]
                layer.features = feats
            finally:
                self._building = False
        self._cache = {a.id: a for a in anns}
        self._snapshot = anns + self._held
        self.notify_changed()
        if self._save_error is not None:
            self.set_status(self._save_error, error=True)
            self._save_error = None
        return self.annotations()

    def _flush(self) -> None:
        if self._timer.isActive():
            self.snapshot()
        if self.autosaver is not None:
            self.autosaver.flush()

    # -- classes (the list and its file: ClassesBox) ----------------------------------------
    def add_class(self, name: str, color: tuple[int, int, int] | None = None) -> None:
        """Add a user class (saved with the slide's annotations) and select it."""
        self.classes_box.add(name, color)

    def remove_current_class(self) -> None:
        """Remove the selected class unless it is a default one or still in use."""
        self.classes_box.remove_current()

    def set_class_color(self, name: str, color: tuple[int, int, int]) -> None:
        """Change a class colour (saved) and repaint its shapes."""
        self.classes_box.set_color(name, color)

    def on_class_changed(self, name: str) -> None:
        if not name:
            return
        rgb = np.array(self.classes_box.color_of(name)) / 255.0
        if self._shapes is not None:
            defaults = {"id": "", "label": name, "granularity": self._shape_granularity(),
                        "author": self.author.text(), "created": ""}  # fmt: skip
            selected = set(self._shapes.selected_data)
            self._building = True
            try:  # napari applies "current" colours to the selection: keep it out of this
                self._shapes.selected_data = set()
                self._shapes.feature_defaults = defaults
                self._shapes.current_edge_color = [*rgb, 1.0]
                self._shapes.current_face_color = [*rgb, 0.3]
                self._shapes.selected_data = selected
            finally:
                self._building = False
        crop = self._crop_layer()
        if crop is not None:
            crop.selected_label = class_index(self.classes)[name]

    def _shape_granularity(self) -> str:
        gran = self.granularity.currentText()
        return "polygon" if gran == "pixel" else gran

    def apply_class_to_selection(self) -> None:
        """Give the selected shapes the current class (and its colour)."""
        layer, name = self._shapes, self.class_combo.currentText()
        if layer is None or not layer.selected_data:
            self.set_status("select shapes in the annotations layer first")
            return
        feats = layer.features
        rows = sorted(layer.selected_data)
        feats.loc[rows, "label"] = name
        layer.features = feats
        rgb = np.array(self.classes_box.color_of(name)) / 255.0
        layer.current_edge_color = [*rgb, 1.0]  # applies to the selection
        layer.current_face_color = [*rgb, 0.3]
        self.snapshot()

    # -- drawing --------------------------------------------------------------------------
    def activate(self) -> None:
        """Start drawing at the chosen granularity."""
        gran = self.granularity.currentText()
        if self.mpp is None:
            self.set_status("open a slide first")
            return
        if gran == "pixel":
            self.start_crop()
            return
        if self._shapes is None:
            self.set_annotations(self.annotations())
        self.on_class_changed(self.class_combo.currentText())
        self.viewer.layers.selection.active = self._shapes
        self._shapes.mode = _MODES[gran]
        self.set_status(f"drawing {gran}: {self.class_combo.currentText()}")

    def visible_region(self) -> tuple[int, int, int, int] | None:
        """Level-0 ``(x, y, w, h)`` of the view, clipped to the slide."""
        if self.mpp is None or self.slide_dims is None:
            return None
        camera = self.viewer.scene.camera
        return visible_region_l0(camera.center, camera.zoom, self.viewer.canvas.size, self.mpp,
                                 self.slide_dims)  # fmt: skip

    # -- pixel crop and "From model" (DrawBox; the crop state stays here) -------------------
    def _crop_layer(self):
        return self.draw_box.crop_layer()

    def start_crop(
        self, labels: np.ndarray | None = None, crop: CropGeometry | None = None
    ) -> None:
        """Open a pixel crop of the visible region; pixel annotations inside become editable."""
        self.draw_box.start_crop(labels, crop)

    def commit_crop(self) -> None:
        """Turn the crop into pixel annotations (replacing those it was opened with)."""
        self.draw_box.commit_crop()

    def discard_crop(self) -> None:
        """Close the crop without changes (the annotations it held come back)."""
        self.draw_box.discard_crop()

    def from_model(self) -> None:
        """Probability ≥ threshold in the visible region → editable polygons or a pixel crop."""
        self.draw_box.from_model()

    # -- files -------------------------------------------------------------------------------
    def import_file(self, path: str | Path) -> bool:
        """Add the annotations of a GeoJSON / ASAP XML file; on error nothing changes.

        Files over :data:`READ_IN_BACKGROUND_ABOVE` bytes are read on a worker
        thread (:attr:`building` is True until they are shown); errors then
        appear in the status line and False means a small file failed.
        """
        if self.mpp is None:
            self.set_status("open a slide first")
            return False
        path = Path(path)
        if path.is_file() and path.stat().st_size > READ_IN_BACKGROUND_ABOVE:
            self.set_status(f"reading {path.name}…")
            # Never unpickle, not even from our own child process: the worker thread
            # holds the GIL in json.loads for ~0.5-1 s on 10k polygons (measured).
            read = partial(read_annotations, path)  # a small partial: its repr is cheap
            self._in_background("import", read, partial(self._imported, path))
            return True
        try:
            found = read_annotations(path)
        except HistoError as exc:
            self.set_status(f"import failed: {exc}", error=True)
            return False
        self._imported(path, found)
        return True

    def _imported(self, path: Path, found) -> None:
        self.classes_box.add_labels(a.label for a in found.annotations)
        self.set_annotations(self.snapshot() + found.annotations)
        self.notify_changed()
        note = f"; {len(found.problems)} problems: {found.problems[0]}" if found.problems else ""
        more = "; building the layer…" if self.building else ""
        self.set_status(f"imported {len(found.annotations)} from {path.name}{note}{more}")

    def export_file(self, path: str | Path) -> Path | None:
        """Write all annotations to GeoJSON, or ASAP XML for ``.xml``."""
        try:
            out = write_annotations(path, self.snapshot())
        except (HistoError, OSError) as exc:
            self.set_status(f"export failed: {exc}", error=True)
            return None
        self.set_status(f"exported to {out}")
        return out

    def _import_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import annotations", "",
                                              "Annotations (*.geojson *.json *.xml)")  # fmt: skip
        if path:
            self.import_file(path)

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export annotations", "",
                                              "GeoJSON (*.geojson);;ASAP XML (*.xml)")  # fmt: skip
        if path:
            self.export_file(path)

    def _project_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Project directory")
        if path:
            self.set_project_dir(path)
