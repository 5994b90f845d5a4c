"""``napari-histo demo``: napari with the sample slide (or a given one)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = [
    "dock_inference",
    "dock_tools",
    "run_demo",
    "start_viewport_run",
    "wait_for_inference",
    "wait_for_render",
]


def wait_for_render(viewer, rounds: int = 20) -> None:
    """Process Qt events until napari has drawn the current view."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    for _ in range(rounds):
        app.processEvents()
    viewer.window._qt_viewer.canvas.native.update()
    for _ in range(rounds):
        app.processEvents()


def dock_inference(viewer, *, start: bool = True):
    """Dock the Tumor inference widget; with `start`, run it on the current view."""
    from napari_histo.widgets.inference import InferenceWidget

    widget = InferenceWidget(viewer)
    widget.dock = viewer.window.add_dock_widget(widget, name="Tumor inference", area="right")
    if start:
        start_viewport_run(widget)
    return widget


def start_viewport_run(widget) -> None:
    """Start a viewport run of an inference widget (when it has a slide)."""
    if widget.controller is not None:
        widget.mode_combo.setCurrentText("viewport")
        widget.run()


def dock_tools(viewer) -> list:
    """Dock the other tools as tabs beside the inference dock."""
    from napari_histo.widgets.annotation import AnnotationWidget
    from napari_histo.widgets.measurements import MeasurementsWidget
    from napari_histo.widgets.nuclei import NucleiWidget
    from napari_histo.widgets.review import ReviewWidget
    from napari_histo.widgets.training import RetrainWidget

    widgets = []
    for name, cls in (("Nuclei", NucleiWidget), ("Annotate", AnnotationWidget),
                      ("Retrain", RetrainWidget), ("Review", ReviewWidget),
                      ("Slide measurements", MeasurementsWidget)):  # fmt: skip
        widget = cls(viewer)
        viewer.window.add_dock_widget(widget, name=name, area="right", tabify=True)
        widgets.append(widget)
    return widgets


def wait_for_inference(widget, timeout_s: float = 120.0) -> bool:
    """Process Qt events until `widget`'s job has finished (True) or `timeout_s` passed."""
    import time

    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    deadline = time.monotonic() + timeout_s
    while widget.busy:
        if time.monotonic() > deadline:
            return False
        app.processEvents()
        time.sleep(0.02)
    app.processEvents()
    return True


def check_slide(slide: str | os.PathLike[str]) -> None:
    """Open `slide` once: a bad file raises a one-line SlideError naming it and why.

    Its warnings (e.g. no µm/px) are left to the reader that opens it for napari.
    """
    import warnings

    from napari_histo.io.slide import Slide

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Slide(slide):
            pass


def run_demo(
    slide: str | None = None, screenshot: str | None = None, size_px: int | None = None
) -> int:
    """Open napari with `slide` (default: the synthetic sample, generated once).

    Parameters
    ----------
    slide : str, optional
        Slide to open instead of the sample.
    screenshot : str, optional
        Save a PNG of the window there and exit instead of running the event loop.
    size_px : int, optional
        Size of the synthetic sample slide in px.

    Returns
    -------
    int
        Exit status.
    """
    if screenshot is not None:
        # Headless screenshot: keep notification toasts (e.g. napari's PyQt5
        # deprecation notice) from covering the canvas. Environment, not the
        # settings file, so the user's own settings are untouched.
        os.environ.setdefault("NAPARI_APPLICATION_GUI_NOTIFICATION_LEVEL", "error")
    if slide is not None:
        check_slide(slide)  # before napari loads
    import napari

    from napari_histo._progress import TextProgress
    from napari_histo.plugin.sample_data import sample_slide_path

    if slide is None:
        path = sample_slide_path(size_px, progress=TextProgress("sample slide"))
    else:
        path = Path(slide)
    viewer = napari.Viewer(title=f"napari-histo — {path.name}")
    viewer.window.resize(1280, 900)
    layers = viewer.open(path, plugin="napari-histo")
    viewer.canvas.overlays["scale_bar"].visible = True
    viewer.reset_view()
    widget = dock_inference(viewer, start=False)
    dock_tools(viewer)
    widget.dock.raise_()  # the inference tab in front
    wait_for_render(viewer, rounds=5)
    viewer.reset_view()  # fit the slide to the canvas the docks left
    start_viewport_run(widget)
    if screenshot is None:
        napari.run()
        return 0
    if not wait_for_inference(widget):
        print(
            "inference did not finish within 120 s; screenshot shows it in progress",
            file=sys.stderr,
        )
    widget.dock.raise_()  # docking the others may have brought their tab forward
    wait_for_render(viewer)
    out = Path(screenshot)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(out), canvas_only=False, flash=False)
    print(f"opened {path} ({len(layers)} layer); screenshot saved to {out}", file=sys.stderr)
    viewer.close()
    return 0
