"""The tabs of the "Review" dock: members, error map, calibration, what to annotate next.

A mixin of :class:`~napari_histo.widgets.review.ReviewWidget` (kept apart so
each module holds one job): each tab's controls and actions. The numbers come
from :mod:`napari_histo.review`, computed on worker threads through the dock's
job runners; results are dropped when the slide changed meanwhile.

The dock provides ``viewer``, ``run``, ``slide_path``, ``mpp``, ``temperature``,
``queue``, ``files`` and ``member_jobs`` (job runners), ``_generation``,
``set_status``, ``_enable``, ``_on_failed``, ``_show_run_label``, ``jump_to``,
``_outline`` and ``_add_image``.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_histo.errors import HistoError
from napari_histo.io.store import ResultRun
from napari_histo.review import (
    REGION_UM,
    Region,
    calibrated_levels,
    map_level,
    run_temperature,
    suggest_regions,
    write_error_csv,
)
from napari_histo.widgets.review_panels import (
    ERROR_COLORS,
    LAYER_NAMES,
    TAG,
    MembersView,
    ReliabilityCanvas,
    button,
    disagreement_colormap,
    placed,
    remove_layers,
    replace_layer,
)

__all__ = ["ReviewTabsMixin", "read_slide_annotations"]


def _members_job(
    cancel: threading.Event, generation: int, run: ResultRun, slide_path: Path,
    rect_l0: tuple[int, ...],
) -> Generator[str, None, Any]:  # fmt: skip
    """Background job: ``(generation, MemberDisagreement)`` of the region (None when cancelled)."""
    from napari_histo.io.slide import Slide
    from napari_histo.models import load_model
    from napari_histo.review import region_disagreement, run_member_cards

    yield "loading members"
    members = [load_model(card) for card in run_member_cards(run)]
    if cancel.is_set():
        return None
    yield "running members"
    with Slide(slide_path) as slide:
        return generation, region_disagreement(slide, rect_l0, members, tta=1)


def read_slide_annotations(slide_path: Path) -> list:
    """Region annotations of the slide (its autosaved file); one-line error without them."""
    from napari_histo.io.annotations import read_annotations
    from napari_histo.io.annotations.autosave import autosave_path

    path = autosave_path(slide_path)
    if not path.is_file():
        raise HistoError(f"no annotations ({path.name}): draw tumor / non-tumor regions in "
                         "the Annotate dock first")  # fmt: skip
    return [a for a in read_annotations(path).annotations if a.kind != "point"]


class ReviewTabsMixin:
    """Members, Errors, Calibration and Next tabs of the Review dock (see module docstring)."""

    def _members_tab(self) -> QWidget:
        tab = QWidget()
        box = QVBoxLayout(tab)
        self.members_button = button("Members", self.show_members,
                                     "run each member alone on the current region")  # fmt: skip
        box.addWidget(self.members_button)
        self.members_view = MembersView()
        box.addWidget(self.members_view)
        box.addStretch(1)
        return tab

    def _errors_tab(self) -> QWidget:
        tab = QWidget()
        box = QVBoxLayout(tab)
        row = QHBoxLayout()
        self.error_button = button("Error map", self.error_map,
                                   "TP / FP / FN against the slide's annotations")  # fmt: skip
        self.csv_button = button("Export CSV…", lambda: self.export_csv())
        row.addWidget(self.error_button)
        row.addWidget(self.csv_button)
        box.addLayout(row)
        self.scores_label = QLabel("")
        self.scores_label.setWordWrap(True)
        box.addWidget(self.scores_label)
        legend = QLabel("<span style='color:#1ccc33'>■</span> TP &nbsp; "
                        "<span style='color:#ff1a99'>■</span> FP (model says tumor) &nbsp; "
                        "<span style='color:#1a80ff'>■</span> FN (model misses tumor)")  # fmt: skip
        box.addWidget(legend)
        box.addStretch(1)
        return tab

    def _calibration_tab(self) -> QWidget:
        tab = QWidget()
        box = QVBoxLayout(tab)
        row = QHBoxLayout()
        self.calibrate_button = button("Calibrate", self.calibrate,
                                       "fit a temperature on the slide's annotations")  # fmt: skip
        tip = "new versions of the run's models with this temperature"
        self.save_button = button("Save calibrated version", lambda: self.save_calibrated(), tip)
        row.addWidget(self.calibrate_button)
        row.addWidget(self.save_button)
        box.addLayout(row)
        self.ece_label = QLabel("")
        self.ece_label.setWordWrap(True)
        box.addWidget(self.ece_label)
        self.reliability = ReliabilityCanvas()
        box.addWidget(self.reliability.canvas, 1)
        return tab

    def _suggest_tab(self) -> QWidget:
        tab = QWidget()
        box = QVBoxLayout(tab)
        row = QHBoxLayout()
        self.count_spin = QSpinBox()
        self.count_spin.setRange(1, 100)
        self.count_spin.setValue(5)
        self.distance_spin = QDoubleSpinBox()
        self.distance_spin.setRange(0, 100_000)
        self.distance_spin.setDecimals(0)
        self.distance_spin.setValue(2 * REGION_UM)
        self.distance_spin.setSuffix(" µm apart")
        tip = "high-scoring regions, spread out, to annotate next"
        self.suggest_button = button("Suggest", self.suggest, tip)
        row.addWidget(self.count_spin)
        row.addWidget(self.distance_spin)
        row.addWidget(self.suggest_button)
        box.addLayout(row)
        self.suggest_list = QListWidget()
        self.suggest_list.currentRowChanged.connect(self._on_suggestion_row)
        box.addWidget(self.suggest_list, 1)
        return tab

    # -- members ------------------------------------------------------------------------------
    def show_members(self) -> None:
        """Run each member alone on the current region (background); show them and agreement."""
        region = None if self.queue is None else self.queue.current
        if region is None or self.run is None:
            self.set_status("no region: press Rank first")
            return
        run, path, rect, generation = self.run, self.slide_path, region.rect_l0, self._generation
        self.member_jobs.start(
            lambda cancel: _members_job(cancel, generation, run, path, rect),
            on_return=self._on_members,
            on_error=self._on_failed,
            on_finish=self._enable,
            torch=True,
        )
        self.set_status("running each member on the region…")
        self._enable()

    def _on_members(self, found) -> None:
        if found is None or found[0] != self._generation:  # cancelled, or another slide now
            return
        result = found[1]
        self.disagreement = result
        self.members_view.show_result(result)
        cols = result.agreement.shape[1]
        self._add_image("agreement", result.agreement, result.rect_l0[:2],
                        result.rect_l0[2] / cols, colormap=disagreement_colormap(),
                        contrast_limits=(0.5, 1))  # fmt: skip
        means = ", ".join(f"{n}: {m:.2f}" for n, m in zip(result.names, result.mean_probability,
                                                          strict=True))  # fmt: skip
        self.set_status(f"member mean probabilities {means}; agreement "
                        f"{float(result.agreement.mean()):.2f}")  # fmt: skip

    # -- error map ----------------------------------------------------------------------------
    def error_map(self) -> None:
        """Compare the run with the slide's annotations (background): Labels layer and scores."""
        from napari_histo.review import run_error_map

        if self.run is None:
            self.set_status("no run: " + self.slide_label.text())
            return
        run, path, temperature = self.run, self.slide_path, self.temperature
        generation = self._generation

        def compute():
            anns = read_slide_annotations(path)
            level = map_level(run)
            return generation, run_error_map(run, anns, level=level, temperature=temperature)

        self.set_status("comparing with the annotations…")
        self.files.call(compute, on_return=self._show_errors, on_error=self._on_failed)

    def _show_errors(self, found) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        generation, (errors, scores, geometry) = found
        if generation != self._generation:
            return

        self.error_scores = scores
        layer = self.slide_layer()
        replace_layer(self.viewer, "errors", lambda: self.viewer.add_labels(
            errors, name=LAYER_NAMES["errors"], metadata={TAG: "errors"}, opacity=0.8,
            colormap=DirectLabelColormap(color_dict=ERROR_COLORS),
            units=None if layer is None else layer.units,
            **placed(geometry.origin_l0, geometry.downsample, self.mpp)))  # fmt: skip
        self.scores_label.setText(
            f"Dice {scores.dice:.3f} · precision {scores.precision:.3f} · recall "
            f"{scores.recall:.3f}\nTP {scores.tp_px:,} · FP {scores.fp_px:,} · FN "
            f"{scores.fn_px:,} · TN {scores.tn_px:,} px of {geometry.mpp:g} µm "
            "(annotated pixels only)"
        )
        self.set_status("error map shown (TN and unannotated pixels transparent)")
        self._enable()

    def export_csv(self, path: str | Path | None = None) -> Path | None:
        """Write the slide's error scores as CSV (asks for a file when `path` is None)."""
        if self.error_scores is None or self.slide_path is None:
            self.set_status("nothing to export: press Error map first")
            return None
        if path is None:
            suggestion = str(self.slide_path.with_name(self.slide_path.name + ".errors.csv"))
            path, _ = QFileDialog.getSaveFileName(self, "Export error scores", suggestion,
                                                  "CSV (*.csv)")  # fmt: skip
            if not path:
                return None
        try:
            written = write_error_csv([(self.slide_path.name, self.error_scores)], path)
        except (HistoError, OSError) as err:
            self.set_status(f"export failed: {err}")
            return None
        self.set_status(f"wrote {written}")
        return written

    # -- calibration -----------------------------------------------------------------------------
    def calibrate(self) -> None:
        """Fit the ensemble's temperature on the slide's annotations (background); show it."""
        from napari_histo.review import run_calibration

        if self.run is None:
            self.set_status("no run: " + self.slide_label.text())
            return
        run, path, generation = self.run, self.slide_path, self._generation

        def compute():
            anns = read_slide_annotations(path)
            return generation, run_calibration(run, anns, level=map_level(run))

        self.set_status("fitting the temperature…")
        self.files.call(compute, on_return=self._show_calibration, on_error=self._on_failed)

    def _show_calibration(self, found) -> None:
        generation, result = found
        if generation != self._generation:
            return
        self.calibration = result
        self.reliability.show_result(result)
        self.ece_label.setText(
            f"ECE {result.ece_before:.3f} → {result.ece_after:.3f} with T = "
            f"{result.temperature:.2f} (fitted on {result.fit_px:,} px, measured on "
            f"{result.held_px:,} held-out px)"
        )
        self.set_status("calibrated: Save calibrated version to use it from now on")
        self._enable()

    def save_calibrated(self, out_dir: str | Path | None = None) -> None:
        """Write calibrated versions of the run's models (default: the user models folder)."""
        from napari_histo.paths import user_models_dir
        from napari_histo.review import run_member_cards, write_calibrated_versions

        if self.calibration is None or self.run is None:
            self.set_status("nothing to save: press Calibrate first")
            return
        run, result = self.run, self.calibration
        out = Path(out_dir) if out_dir is not None else user_models_dir()
        note = f"Review dock, annotations of {self.slide_path.name}."

        def write() -> tuple[ResultRun, Path, list[Path]]:
            paths = write_calibrated_versions(run_member_cards(run), result, out, note=note)
            return run, out, paths

        self.set_status(f"writing calibrated versions to {out}…")
        self.files.call(write, on_return=self._on_calibrated_written, on_error=self._on_failed)

    def _on_calibrated_written(self, found: tuple[ResultRun, Path, list[Path]]) -> None:
        run, out, paths = found
        if run is not self.run:
            return
        self.temperature = run_temperature(run) or run_temperature(run, [out])
        self._show_run_label()
        self.show_calibrated()
        self.set_status(f"wrote {len(paths)} calibrated model version(s) to {out}; "
                        "probability shown and ranked calibrated")  # fmt: skip

    def show_calibrated(self) -> None:
        """The "calibrated" probability layer of the run (when it has a temperature)."""
        if self.run is None or self.temperature is None or self.mpp is None:
            remove_layers(self.viewer, ["calibrated"])
            return
        from napari_histo.widgets._overlays import TAG as LIVE_TAG
        from napari_histo.widgets._overlays import tumor_colormap

        geometry = self.run.geometry
        layer = self._add_image(
            "calibrated", calibrated_levels(self.run, self.temperature), geometry.origin_l0,
            geometry.downsample, multiscale=True, colormap=tumor_colormap("histo tumor calibrated"),
            contrast_limits=(0, 1), opacity=0.7)  # fmt: skip
        layer.name = f"{LAYER_NAMES['calibrated']}, T = {self.temperature:.2f}"
        for other in self.viewer.layers:  # the uncalibrated one would hide it
            if other.metadata.get(LIVE_TAG) == "probability":
                other.visible = False

    # -- suggestions -----------------------------------------------------------------------
    def suggest(self) -> list[Region]:
        """What to annotate next: the chosen number of high-scoring, spread-out regions."""
        if self.queue is None or not len(self.queue) or self.mpp is None:
            self.set_status("nothing to suggest from: press Rank first")
            return []
        count, distance_um = int(self.count_spin.value()), float(self.distance_spin.value())
        self.suggestions = suggest_regions(self.queue.regions, count, distance_um, self.mpp[1])
        self.suggest_list.blockSignals(True)
        self.suggest_list.clear()
        for i, r in enumerate(self.suggestions, 1):
            x, y = r.rect_l0[:2]
            self.suggest_list.addItem(f"{i}. at ({x}, {y}) px, score {r.score:.3g}")
        self.suggest_list.blockSignals(False)
        if self.suggestions:
            zoom = max(float(self.viewer.scene.camera.zoom), 1e-9)
            self._outline("suggestions", self.suggestions, "cyan", 3.0 / zoom, numbered=True)
        self.set_status(f"{len(self.suggestions)} region(s) to annotate next, outlined in cyan")
        return self.suggestions

    def _on_suggestion_row(self, row: int) -> None:
        if 0 <= row < len(self.suggestions):
            self.jump_to(self.suggestions[row])
