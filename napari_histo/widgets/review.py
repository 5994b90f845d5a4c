"""The "Review" dock: walk the open slide's most uncertain regions, decide, correct, calibrate.

A thin Qt shell over :mod:`napari_histo.review`. "Rank" ranks the latest
complete tumor run of the open slide (:func:`~napari_histo.review.rank_run`,
off the Qt thread) into a list with a thumbnail, score, area and decision per
region; a :class:`~napari_histo.review.ReviewQueue` keeps the position and the
decisions in ``SLIDE.review.json``, restored (ranked again) when the slide is
opened again. Keys (on the dock, and on the viewer where free): ``n`` / ``p``
next / previous, ``a`` accept, ``c`` correct, ``s`` skip, ``u`` undo (dock
only). Each move centres and zooms the view on the region and outlines it.

"Correct" turns the model's thresholded probability in the region into
annotations at the chosen granularity in the Annotate dock (opened when
needed), where they are edited and autosaved. The tabs below: member
disagreement of the current region, the error map against the slide's
annotations (Dice / precision / recall, CSV), calibration (reliability
diagram, calibrated model versions, calibrated probability layer) and what
to annotate next.
"""

from __future__ import annotations

import getpass
import threading
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtGui import QIcon
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_histo.errors import HistoError
from napari_histo.frames import layer_mpp
from napari_histo.io.store import ResultRun
from napari_histo.review import (
    GRANULARITIES,
    REGION_UM,
    SCORES,
    NoRunError,
    Region,
    ReviewQueue,
    ReviewStateWarning,
    latest_complete_run,
    rank_run,
    region_annotations,
    review_state_path,
    run_temperature,
    saved_ranking,
)
from napari_histo.widgets._common import ShutdownMixin, SlideLayerMixin
from napari_histo.widgets.jobs import JobRunner
from napari_histo.widgets.review_panels import (
    LAYER_NAMES,
    TAG,
    THUMB_PX,
    array_pixmap,
    button,
    placed,
    read_thumbnails,
    rect_polygons,
    remove_layers,
    replace_layer,
)
from napari_histo.widgets.review_tabs import ReviewTabsMixin, read_slide_annotations

if TYPE_CHECKING:
    import napari

__all__ = ["KEYS", "NO_SLIDE", "RANK_TOP", "ReviewWidget"]

#: Regions kept from a ranking (the list, the thumbnails and the suggestions draw on them).
RANK_TOP = 200
#: Key → action of the dock; all but undo are bound on the viewer too where free.
KEYS = {"n": "next_region", "p": "previous_region", "a": "accept", "c": "correct",
        "s": "skip", "u": "undo"}  # fmt: skip
VIEWER_KEYS = ("n", "p", "a", "c", "s")
NO_SLIDE = "no slide: open one with the napari-histo reader"
#: Fraction of the canvas the current region fills after a jump to it.
JUMP_FILL = 0.5


def _rank_job(
    cancel: threading.Event, generation: int, run: ResultRun, slide_path: Path, score: str,
    region_um: float, temperature: float | None,
) -> Generator[str, None, tuple[int, str, list[Region]] | None]:  # fmt: skip
    """Background job: ``(generation, score, regions)`` of :func:`rank_run` (None if cancelled)."""
    yield "ranking"
    annotations = read_slide_annotations(slide_path) if score == "annotations" else None
    if cancel.is_set():
        return None
    regions = rank_run(run, score=score, region_um=region_um, top=RANK_TOP,
                       annotations=annotations, temperature=temperature)  # fmt: skip
    return generation, score, regions


class ReviewWidget(ShutdownMixin, SlideLayerMixin, ReviewTabsMixin, QWidget):
    """Dock widget reviewing the open slide's latest complete tumor run (see module docstring).

    Parameters
    ----------
    napari_viewer : napari.Viewer
    out_dir : str or Path, optional
        Result store directory (default beside the slide).
    bind_viewer_keys : bool
        Also bind n / p / a / c / s on the viewer (those not bound already).
    """

    layer_tag = TAG  # our own layers are never the slide

    def __init__(
        self, napari_viewer: napari.viewer.Viewer, *, out_dir: str | Path | None = None,
        bind_viewer_keys: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.viewer = napari_viewer
        self._out_dir = out_dir
        self.jobs = JobRunner(progress_desc="Ranking regions")
        self.member_jobs = JobRunner(progress_desc="Member disagreement")
        self.files = JobRunner()  # thumbnails, error map, calibration, writing (calls)
        self._closed = False
        self._generation = 0  # bumped on every slide change: late results are dropped
        self.slide_path: Path | None = None
        self.mpp: tuple[float, float] | None = None
        self.run: ResultRun | None = None
        self.temperature: float | None = None
        self.queue: ReviewQueue | None = None
        self.suggestions: list[Region] = []
        self.error_scores = None
        self.calibration = None
        self.disagreement = None
        self.viewer_keys: list[tuple[str, Any]] = []
        self._build_ui()
        self._connect_viewer(self._on_layers_changed)
        if bind_viewer_keys:
            self._bind_viewer_keys()
        self._attach(self._open_slide_path())

    # -- UI -------------------------------------------------------------------------
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        self.slide_label = QLabel(NO_SLIDE)
        self.slide_label.setWordWrap(True)
        layout.addWidget(self.slide_label)
        row = QHBoxLayout()
        self.score_combo = QComboBox()
        self.score_combo.addItems(SCORES)
        self.score_combo.setToolTip("uncertainty: ensemble entropy; annotations: |p - label|")
        self.region_spin = QDoubleSpinBox()
        self.region_spin.setRange(16, 2048)  # correct / members read the region whole
        self.region_spin.setDecimals(0)
        self.region_spin.setSingleStep(64)
        self.region_spin.setValue(REGION_UM)
        self.region_spin.setSuffix(" µm")
        self.rank_button = button("Rank", self.rank, "rank regions of the latest complete run")
        row.addWidget(self.score_combo, 1)
        row.addWidget(self.region_spin)
        row.addWidget(self.rank_button)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(QLabel("Author"))
        self.author_edit = QLineEdit(getpass.getuser())
        self.author_edit.editingFinished.connect(self._on_author)
        row.addWidget(self.author_edit, 1)
        row.addWidget(QLabel("Correct as"))
        self.granularity = QComboBox()
        self.granularity.addItems(GRANULARITIES)
        row.addWidget(self.granularity)
        layout.addLayout(row)
        self.region_list = QListWidget()
        self.region_list.setIconSize(QSize(THUMB_PX, THUMB_PX))
        self.region_list.setMinimumHeight(180)
        self.region_list.currentRowChanged.connect(self._on_row)
        self.region_list.installEventFilter(self)
        layout.addWidget(self.region_list, 2)
        row = QHBoxLayout()
        self.nav_buttons = [
            button("◀ p", self.previous_region, "previous region (p)"),
            button("n ▶", self.next_region, "next region (n)"),
            button("Accept a", self.accept, "the model is right here (a)"),
            button("Correct c", self.correct, "model → annotations here, to edit (c)"),
            button("Skip s", self.skip, "decide later (s)"),
            button("Undo u", self.undo, "forget the decision here (u)"),
        ]
        for b in self.nav_buttons:
            row.addWidget(b)
        layout.addLayout(row)
        self.counts_label = QLabel("")
        layout.addWidget(self.counts_label)
        self.tabs = QTabWidget()
        self.tabs.addTab(self._members_tab(), "Members")
        self.tabs.addTab(self._errors_tab(), "Errors")
        self.tabs.addTab(self._calibration_tab(), "Calibration")
        self.tabs.addTab(self._suggest_tab(), "Next")
        layout.addWidget(self.tabs, 3)
        # suggestions at least two regions apart by default
        self.region_spin.valueChanged.connect(lambda v: self.distance_spin.setValue(2 * v))
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout.addWidget(self.status_label)
        self._enable()

    def set_status(self, text: str) -> None:
        """One line in the dock."""
        self.status_label.setText(text)

    def _enable(self) -> None:
        has_run = self.run is not None
        has_queue = self.queue is not None and len(self.queue) > 0
        self.rank_button.setEnabled(self.slide_path is not None and not self.jobs.running)
        for b in self.nav_buttons:
            b.setEnabled(has_queue)
        self.members_button.setEnabled(has_queue and not self.member_jobs.running)
        self.error_button.setEnabled(has_run)
        self.calibrate_button.setEnabled(has_run)
        self.csv_button.setEnabled(self.error_scores is not None)
        self.save_button.setEnabled(self.calibration is not None)
        self.suggest_button.setEnabled(has_queue)

    @property
    def busy(self) -> bool:
        """True while a ranking, member run, file read or write is in flight."""
        return self.jobs.busy or self.member_jobs.busy or self.files.busy

    # -- keys -----------------------------------------------------------------------
    def eventFilter(self, obj, event) -> bool:  # the region list: its letters are ours
        if event.type() == QEvent.KeyPress and self._key(event):
            return True
        return super().eventFilter(obj, event)

    def keyPressEvent(self, event) -> None:
        if not self._key(event):
            super().keyPressEvent(event)

    def _key(self, event) -> bool:
        action = KEYS.get(event.text().lower()) if event.modifiers() in (
            Qt.NoModifier, Qt.KeypadModifier) else None  # fmt: skip
        if action is None:
            return False
        getattr(self, action)()
        return True

    def _bind_viewer_keys(self) -> None:
        """Bind n / p / a / c / s on the viewer, each only where nothing is bound yet."""
        for key in VIEWER_KEYS:
            action = KEYS[key]

            def on_key(_viewer, action=action) -> None:
                if not self._closed:
                    getattr(self, action)()

            try:
                self.viewer.bind_key(key, on_key)
            except ValueError:  # already bound by someone else: leave theirs
                continue
            self.viewer_keys.append((key, on_key))

    def _unbind_viewer_keys(self) -> None:
        for key, func in self.viewer_keys:
            unbound = self.viewer.bind_key(key, None)
            if unbound is not None and unbound is not func:  # not ours any more: put it back
                self.viewer.bind_key(key, unbound)
        self.viewer_keys = []

    # -- slide and run ----------------------------------------------------------------
    def _on_layers_changed(self, *_: Any) -> None:
        if self._closed:
            return
        path = self._open_slide_path()
        if path != self.slide_path:
            self._attach(path)

    def _attach(self, path: Path | None) -> None:
        """Forget the previous slide's review; find `path`'s run and restore its saved review."""
        self.jobs.cancel()
        self.member_jobs.cancel()
        self._generation += 1
        if self.queue is not None:
            self.queue.disconnect(self._on_queue_changed)
        self.queue, self.suggestions = None, []
        self.error_scores = self.calibration = self.disagreement = None
        self.region_list.clear()
        self.suggest_list.clear()
        self.members_view.show_result(None)
        self.reliability.show_result(None)
        for label in (self.counts_label, self.scores_label, self.ece_label, self.status_label):
            label.setText("")
        remove_layers(self.viewer)
        self.slide_path = path
        layer = self.slide_layer()
        self.mpp = None if layer is None else layer_mpp(layer.metadata)
        self.refresh_run()
        if self.run is not None:
            self._restore()

    def refresh_run(self) -> ResultRun | None:
        """Find the open slide's latest complete run and its temperature; one line says which."""
        self.run, self.temperature = None, None
        path = self.slide_path
        if path is None:
            self.slide_label.setText(NO_SLIDE)
        else:
            try:
                self.run = latest_complete_run(path, out_dir=self._out_dir)
                self.temperature = run_temperature(self.run)
            except NoRunError:
                self.slide_label.setText(
                    f"{path.name}: no complete tumor run; run Tumor inference first"
                )
            except (HistoError, OSError) as err:
                self.slide_label.setText(f"{path.name}: result store not readable: {err}")
            else:
                self._show_run_label()
                self.show_calibrated()
        self._enable()
        return self.run

    def _show_run_label(self) -> None:
        models = ", ".join(f"{m.get('name')} {m.get('version')}"
                           for m in self.run.settings.get("models", []))  # fmt: skip
        calibrated = "" if self.temperature is None else f"; calibrated, T = {self.temperature:.2f}"
        self.slide_label.setText(f"{self.slide_path.name}: run {self.run.run_id} ({models})"
                                 f"{calibrated}")  # fmt: skip

    def _restore(self) -> None:
        """Rank again as the saved review of this slide was ranked (its decisions come back)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReviewStateWarning)
            saved = saved_ranking(review_state_path(self.slide_path))
        if caught:
            self.set_status(str(caught[0].message))
        if saved is None or self.mpp is None:
            return
        score, side_px = saved
        if score in SCORES:
            self.score_combo.setCurrentText(score)
        self.region_spin.setValue(round(side_px * self.mpp[1]))
        self.rank()

    # -- ranking ------------------------------------------------------------------------
    def rank(self) -> None:
        """Rank the latest complete run's regions by the chosen score, in the background."""
        if self.run is None:
            self.set_status("nothing to rank: " + self.slide_label.text())
            return
        score, region_um = self.score_combo.currentText(), float(self.region_spin.value())
        run, path, temperature, generation = (self.run, self.slide_path, self.temperature,
                                              self._generation)  # fmt: skip
        self.jobs.start(
            lambda cancel: _rank_job(cancel, generation, run, path, score, region_um, temperature),
            on_return=self._on_ranked,
            on_error=self._on_failed,
            on_finish=self._enable,
        )
        self.set_status(f"ranking by {score}…")
        self._enable()

    def _on_ranked(self, found: tuple[int, str, list[Region]] | None) -> None:
        if found is None or found[0] != self._generation:  # cancelled, or another slide now
            return
        score, regions = found[1:]
        if self.queue is not None:
            self.queue.disconnect(self._on_queue_changed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReviewStateWarning)
            self.queue = ReviewQueue(regions, review_state_path(self.slide_path),
                                     author=self.author_edit.text(),
                                     score=score)  # fmt: skip
        self.queue.connect(self._on_queue_changed)
        self.region_list.blockSignals(True)
        self.region_list.clear()
        for _ in regions:
            self.region_list.addItem(QListWidgetItem(""))
        self.region_list.blockSignals(False)
        self._load_thumbnails(regions)
        self._on_queue_changed(self.queue)
        note = f"; {caught[0].message}" if caught else ""
        self.set_status(f"{len(regions)} regions ranked by {self.queue.score}; n / p to move, "
                        f"a accept, c correct, s skip{note}")  # fmt: skip
        self._enable()

    def _load_thumbnails(self, regions: list[Region]) -> None:
        path, generation = self.slide_path, self._generation
        rects = [r.rect_l0 for r in regions]

        def read() -> tuple[int, list]:
            return generation, read_thumbnails(path, rects)

        # callbacks are bound methods: the runner holds them weakly (no dock kept alive)
        self.files.call(read, on_return=self._on_thumbnails, on_error=self._on_failed)

    def _on_thumbnails(self, found: tuple[int, list]) -> None:
        generation, thumbs = found
        if generation != self._generation or self.region_list.count() != len(thumbs):
            return
        for row, image in enumerate(thumbs):
            self.region_list.item(row).setIcon(QIcon(array_pixmap(image)))

    def _item_text(self, row: int, region: Region) -> str:
        decision = self.queue.decision(region)
        state = decision.status if decision is not None else "undecided"
        return (f"#{row + 1}  score {region.score:.3g}  ·  {region.area_um2:,.0f} µm²\n"
                f"mean {region.mean:.2f}  ·  {state}")  # fmt: skip

    def _on_queue_changed(self, queue: ReviewQueue) -> None:
        """Refresh the list, the counts and the view after every move or decision."""
        for row, region in enumerate(queue.regions):
            self.region_list.item(row).setText(self._item_text(row, region))
        self.region_list.blockSignals(True)
        self.region_list.setCurrentRow(queue.index)
        self.region_list.blockSignals(False)
        counts = queue.counts()
        self.counts_label.setText(", ".join(f"{v} {k}" for k, v in counts.items()))
        if queue.current is not None:
            self.jump_to(queue.current)

    def _on_row(self, row: int) -> None:
        if self.queue is not None and 0 <= row < len(self.queue) and row != self.queue.index:
            self.queue.go(row)

    def _on_author(self) -> None:
        if self.queue is not None:
            self.queue.author = self.author_edit.text()

    # -- moves and decisions --------------------------------------------------------------
    def go(self, index: int) -> None:
        """Move to region `index` of the ranking."""
        if self.queue is not None and 0 <= index < len(self.queue):
            self.queue.go(index)

    def next_region(self) -> None:
        if self.queue is not None:
            self.queue.next()

    def previous_region(self) -> None:
        if self.queue is not None:
            self.queue.previous()

    def _decide(self, status: str) -> None:
        if self.queue is None or not len(self.queue):
            self.set_status("nothing to review: press Rank first")
            return
        self.queue.decide(status, author=self.author_edit.text())

    def accept(self) -> None:
        """The model is right in the current region; move on."""
        self._decide("accepted")

    def skip(self) -> None:
        """Leave the current region for later; move on."""
        self._decide("skipped")

    def undo(self) -> None:
        """Forget the decision about the current region."""
        if self.queue is not None:
            self.queue.undo()

    def correct(self) -> None:
        """Model probability in the current region → annotations in the Annotate dock, to edit."""
        region = None if self.queue is None else self.queue.current
        if region is None or self.run is None:
            self.set_status("nothing to correct: press Rank first")
            return
        granularity, author = self.granularity.currentText(), self.author_edit.text()
        try:
            anns = region_annotations(self.run, region.rect_l0, granularity,
                                      temperature=self.temperature, author=author)  # fmt: skip
        except (HistoError, OSError, ValueError) as err:
            self.set_status(f"correct failed: {err}")
            return
        annotate = self.annotate_dock()
        if annotate is None or annotate.slide_path != self.slide_path:
            self.set_status("the Annotate dock is not on this slide: open it, then correct")
            return
        annotate.granularity.setCurrentText(granularity)
        self.queue.decide("corrected", author=author, advance=False)
        if not anns:
            annotate.activate()  # draw it by hand at this granularity
            self.set_status(f"no tumor by the model in region #{self.queue.index + 1}: draw it "
                            f"({granularity}) with the Annotate tools")  # fmt: skip
            return
        annotate.set_annotations(annotate.snapshot() + anns)
        annotate.notify_changed()
        from napari_histo.widgets.annotation import SHAPES_LAYER

        if SHAPES_LAYER in self.viewer.layers:
            shapes = self.viewer.layers[SHAPES_LAYER]
            self.viewer.layers.selection.active = shapes
            shapes.mode = "direct" if granularity in ("polygon", "pixel") else "select"
        self.set_status(f"{len(anns)} {granularity} annotation(s) from the model in region "
                        f"#{self.queue.index + 1}: edit them with the Annotate tools")  # fmt: skip

    def annotate_dock(self):
        """The open Annotate dock (opened through napari's plugin API when none is)."""
        from napari_histo.widgets.annotation import AnnotationWidget

        for widget in self.viewer.window.dock_widgets.values():
            if isinstance(widget, AnnotationWidget):
                return widget
        try:
            _, widget = self.viewer.window.add_plugin_dock_widget("napari-histo", "Annotate")
        except (KeyError, ValueError, RuntimeError):  # plugin not registered (e.g. a script)
            widget = AnnotationWidget(self.viewer)
            self.viewer.window.add_dock_widget(widget, name="Annotate")
        return widget

    # -- the view ---------------------------------------------------------------------------
    def jump_to(self, region: Region) -> None:
        """Centre the view on `region`, zoomed to fill about half of it, and outline it."""
        if self.mpp is None:
            return
        x, y, w, h = region.rect_l0
        mpp_y, mpp_x = self.mpp
        camera = self.viewer.scene.camera
        camera.center = ((y + h / 2 - 0.5) * mpp_y, (x + w / 2 - 0.5) * mpp_x)
        height_px, width_px = self.viewer.canvas.size
        camera.zoom = JUMP_FILL * min(height_px / max(h * mpp_y, 1e-9),
                                      width_px / max(w * mpp_x, 1e-9))  # fmt: skip
        self._outline("current", [region], "yellow", 3.0 / camera.zoom)

    def _outline(self, role: str, regions: list[Region], colour: str, width_um: float,
                 numbered: bool = False):  # fmt: skip
        layer = self.slide_layer()
        data = rect_polygons(regions, self.mpp)
        existing = [lyr for lyr in self.viewer.layers if lyr.metadata.get(TAG) == role]
        if existing and not numbered and len(data) == len(existing[0].data):
            existing[0].data = data  # move it: no layer churn on every key press
            existing[0].edge_width = width_um
            return existing[0]
        extra = {}
        if numbered:
            extra = {"features": {"rank": list(range(1, len(data) + 1))},
                     "text": {"string": "{rank}", "color": colour, "size": 12,
                              "anchor": "upper_left"}}  # fmt: skip
        return replace_layer(self.viewer, role, lambda: self.viewer.add_shapes(
            data, shape_type="rectangle", name=LAYER_NAMES[role], edge_color=colour,
            face_color="transparent", edge_width=width_um, metadata={TAG: role},
            units=None if layer is None else layer.units, **extra))  # fmt: skip

    def _add_image(self, role: str, data: Any, origin_l0, downsample: float, **kwargs):
        layer = self.slide_layer()
        units = None if layer is None else layer.units
        where = placed(origin_l0, downsample, self.mpp)
        return replace_layer(self.viewer, role, lambda: self.viewer.add_image(
            data, name=LAYER_NAMES[role], metadata={TAG: role}, units=units,
            blending="translucent", **where, **kwargs))  # fmt: skip

    # -- errors and teardown ---------------------------------------------------------------
    def _on_failed(self, exc: BaseException) -> None:
        text = str(exc).strip().splitlines()
        self.set_status(text[0] if text else type(exc).__name__)
        self._enable()

    def close(self) -> bool:
        self.shutdown()
        return super().close()

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Cancel the jobs, wait for their threads, unbind keys and viewer events (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for runner in (self.jobs, self.member_jobs, self.files):
            runner.shutdown(timeout_s)
        self._unbind_viewer_keys()
        if self.queue is not None:
            self.queue.disconnect(self._on_queue_changed)
        self._disconnect_viewer(self._on_layers_changed)
