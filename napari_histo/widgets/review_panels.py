"""Parts of the "Review" dock: small images, the reliability figure, layer builders.

Plain helpers for :mod:`napari_histo.widgets.review`: turning arrays into Qt
pixmaps, thumbnails read from a slide's pyramid, the matplotlib reliability
canvas, and the napari layers the dock shows (current region, suggestions,
error map, agreement map, calibrated probability). Numbers come from
:mod:`napari_histo.review`; nothing here computes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QGridLayout, QLabel, QPushButton, QSizePolicy, QWidget

from napari_histo.frames import grid_transform, l0_to_world
from napari_histo.review import ERROR_CLASSES, CalibrationResult, MemberDisagreement, Region

__all__ = [
    "ERROR_COLORS",
    "LAYER_NAMES",
    "TAG",
    "MembersView",
    "ReliabilityCanvas",
    "array_pixmap",
    "button",
    "disagreement_colormap",
    "read_thumbnails",
    "rect_polygons",
]

#: Layer metadata key marking the Review dock's layers; its value names the layer's job.
TAG = "napari_histo_review"
#: RGBA of the error classes (TN and unknown transparent).
ERROR_COLORS = {
    None: (0, 0, 0, 0),
    ERROR_CLASSES["unknown"]: (0, 0, 0, 0),
    ERROR_CLASSES["TP"]: (0.1, 0.8, 0.2, 0.6),
    ERROR_CLASSES["FP"]: (1.0, 0.1, 0.6, 0.7),
    ERROR_CLASSES["FN"]: (0.1, 0.5, 1.0, 0.7),
    ERROR_CLASSES["TN"]: (0, 0, 0, 0),
}
#: Name of each layer the dock shows, by role (``layer.metadata[TAG]``).
LAYER_NAMES = {
    "current": "review region",
    "suggestions": "annotate next",
    "errors": "review errors",
    "agreement": "member agreement",
    "calibrated": "tumor probability (calibrated)",
}
#: Side of a region thumbnail in the list, px.
THUMB_PX = 64


def array_pixmap(image: np.ndarray, side: int | None = None) -> QPixmap:
    """A QPixmap of an RGB uint8 ``(rows, cols, 3)`` array (scaled to `side` px when given)."""
    rgb = np.ascontiguousarray(np.asarray(image, dtype=np.uint8)[..., :3])
    rows, cols = rgb.shape[:2]
    qimage = QImage(rgb.data, cols, rows, 3 * cols, QImage.Format_RGB888).copy()
    pixmap = QPixmap.fromImage(qimage)
    return pixmap if side is None else pixmap.scaled(side, side)


def disagreement_colormap():
    """Agreement 0.5 (members split) magenta → 1 (all agree) transparent, for the slide."""
    from napari.utils.colormaps import Colormap

    return Colormap(colors=[[1, 0, 1, 0.55], [1, 0.3, 1, 0.3], [1, 1, 1, 0]],
                    controls=[0, 0.5, 1], name="histo member disagreement")  # fmt: skip


def _colour(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    from matplotlib import colormaps

    scaled = np.clip((np.asarray(values, np.float32) - vmin) / max(vmax - vmin, 1e-9), 0, 1)
    return (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)


def read_thumbnails(
    slide_path: str | Path, rects_l0: Sequence[Sequence[int]], side: int = THUMB_PX
) -> list[np.ndarray]:
    """RGB ``(side, side, 3)`` thumbnails of level-0 rectangles, read at a coarse level.

    Opens the slide once; each rectangle is read from the level nearest to
    ``max(w, h) / side`` and sampled to `side` px (nearest). For a worker thread.
    """
    from napari_histo.io.slide import Slide

    out = []
    with Slide(slide_path) as slide:
        for x, y, w, h in rects_l0:
            level = slide.best_level_for_downsample(max(w, h) / side)
            ds = slide.level_downsamples[level]
            lw, lh = max(1, round(w / ds)), max(1, round(h / ds))
            rgb = slide.read_region(level, int(x), int(y), lw, lh)
            rows = np.minimum((np.arange(side) * lh / side).astype(int), rgb.shape[0] - 1)
            cols = np.minimum((np.arange(side) * lw / side).astype(int), rgb.shape[1] - 1)
            out.append(np.ascontiguousarray(rgb[np.ix_(rows, cols)][..., :3]))
    return out


def rect_polygons(regions: Sequence[Region], mpp: Any) -> list[np.ndarray]:
    """Regions' rectangles as napari world ``(row, col)`` µm corner arrays."""
    out = []
    for r in regions:
        x, y, w, h = r.rect_l0
        corners = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
        out.append(l0_to_world(corners - 0.5, mpp))  # pixel edges, not centres
    return out


class MembersView(QWidget):
    """Each member's probability and the agreement map side by side, small, with names."""

    def __init__(self, side: int = 96) -> None:
        super().__init__()
        self.side = side
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.labels: list[QLabel] = []

    def clear(self) -> None:
        for label in self.labels:
            self.grid.removeWidget(label)
            label.deleteLater()
        self.labels = []

    def show_result(self, result: MemberDisagreement | None) -> None:
        """One column per member (probability, 0 black → 1 yellow) and one for the agreement."""
        self.clear()
        if result is None:
            return
        images = [_colour(p, "inferno", 0, 1) for p in result.probabilities]
        captions = [
            f"{name}\nmean p {m:.2f}"
            for name, m in zip(result.names, result.mean_probability, strict=True)
        ]
        images.append(_colour(result.agreement, "viridis", 0.5, 1))
        captions.append(f"agreement\nmean {float(result.agreement.mean()):.2f}")
        for col, (image, caption) in enumerate(zip(images, captions, strict=True)):
            picture = QLabel()
            picture.setPixmap(array_pixmap(image, self.side))
            text = QLabel(caption)
            text.setWordWrap(True)
            text.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
            self.grid.addWidget(picture, 0, col)
            self.grid.addWidget(text, 1, col)
            self.labels += [picture, text]


class ReliabilityCanvas:
    """A matplotlib figure in Qt showing a calibration's reliability diagram."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.6, 3.4), dpi=90)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(300)
        self.result: CalibrationResult | None = None

    def show_result(self, result: CalibrationResult | None) -> None:
        from napari_histo.review import draw_reliability

        self.result = result
        self.figure.clear()
        if result is not None:
            draw_reliability(self.figure, result)
        self.canvas.draw_idle()


# -- layers -----------------------------------------------------------------------------
def replace_layer(viewer: Any, role: str, make: Any) -> Any:
    """Remove our layer playing `role` (if any), add ``make()``; keeps the active layer."""
    active = viewer.layers.selection.active
    for layer in [lyr for lyr in viewer.layers if lyr.metadata.get(TAG) == role]:
        viewer.layers.remove(layer)
    layer = make()
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


def remove_layers(viewer: Any, roles: Sequence[str] | None = None) -> None:
    """Remove the dock's layers (all, or those playing `roles`)."""
    for layer in [lyr for lyr in viewer.layers if lyr.metadata.get(TAG)]:
        if roles is None or layer.metadata[TAG] in roles:
            viewer.layers.remove(layer)


def placed(origin_l0: Sequence[float], downsample: float, mpp: Any) -> dict[str, Any]:
    """``scale`` and ``translate`` keywords placing a level-0-anchored grid on the slide."""
    scale, translate = grid_transform(origin_l0, downsample, mpp)
    return {"scale": scale, "translate": translate}


def button(text: str, slot: Any, tip: str = "") -> QPushButton:
    """A push button calling ``slot()`` (whatever the clicked signal passes)."""
    b = QPushButton(text)
    b.clicked.connect(lambda *_: slot())
    if tip:
        b.setToolTip(tip)
    return b
