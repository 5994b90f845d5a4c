"""The "Draw" box of the Annotate dock: granularity, the pixel crop and "From model".

The pixel crop is a Labels layer (``pixel annotation crop``) of the visible
region, ≤ 2048 px a side, for brush, fill, eraser and polygon painting: napari
cannot paint a multiscale Labels layer. "Commit crop" turns it into pixel
annotations. "From model" turns the tumour probability ≥ a threshold in the
view into editable polygons or into such a crop.

A thin Qt shell over :mod:`napari_histo.annotations.layers` (crop geometry,
rasterising) and :mod:`napari_histo.annotations.from_probability`. The owner is the
:class:`~napari_histo.widgets.annotation.AnnotationWidget` it sits in: it holds
the crop state (``crop``, ``crop_ids``) and provides ``viewer``, ``mpp``,
``classes``, ``snapshot()``, ``set_annotations(anns)``, ``notify_changed()``,
``visible_region()``, ``set_status(message)`` and the class and author fields.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout

from napari_histo.annotations.from_probability import (
    probability_to_annotations,
    probability_to_crop,
    probability_window,
    stored_probability,
)
from napari_histo.annotations.layers import (
    CropGeometry,
    crop_for_region,
    crop_to_annotations,
    label_colors,
    rasterize_crop,
)
from napari_histo.annotations.model import class_index
from napari_histo.errors import HistoError
from napari_histo.frames import layer_l0_transform
from napari_histo.widgets.nuclei_edit import button

__all__ = ["CROP_LAYER", "LAYER_TAG", "PROBABILITY_LAYER", "DrawBox"]

CROP_LAYER = "pixel annotation crop"
PROBABILITY_LAYER = "tumor probability"
#: Layer metadata key marking the Annotate widget's own layers (never taken for the slide).
LAYER_TAG = "napari_histo_annotations"


class DrawBox(QGroupBox):
    """Granularity, Draw, Commit / Discard crop, and threshold + output of "From model".

    Parameters
    ----------
    owner : AnnotationWidget
        The dock widget; "Draw" is its :meth:`~AnnotationWidget.activate`.
    """

    def __init__(self, owner: Any) -> None:  # the AnnotationWidget (not imported: no cycle)
        super().__init__("Draw")
        self.owner = owner
        self.granularity = QComboBox()
        self.granularity.addItems(["bbox", "ellipse", "polygon", "pixel"])
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 1.0)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.model_output = QComboBox()
        self.model_output.addItems(["polygons", "pixel crop"])
        form = QFormLayout(self)
        form.addRow("granularity", self.granularity)
        row = QHBoxLayout()
        tip = "rectangle/ellipse/polygon tool, or a pixel crop of the visible region"
        row.addWidget(button("Draw", owner.activate, tip))
        row.addWidget(button("Commit crop", self.commit_crop, "pixel crop → pixel annotations"))
        row.addWidget(button("Discard crop", self.discard_crop))
        form.addRow(row)
        row = QHBoxLayout()
        row.addWidget(self.threshold)
        row.addWidget(self.model_output)
        tip = "tumor probability ≥ threshold in the visible region → editable"
        row.addWidget(button("From model", self.from_model, tip))
        form.addRow("threshold", row)

    # -- pixel crop -------------------------------------------------------------------------
    def crop_layer(self):
        """The open crop's Labels layer, or None."""
        layers = self.owner.viewer.layers
        return layers[CROP_LAYER] if CROP_LAYER in layers else None

    def start_crop(
        self, labels: np.ndarray | None = None, crop: CropGeometry | None = None
    ) -> None:
        """Open a pixel crop of the visible region; pixel annotations inside become editable."""
        owner = self.owner
        if owner.crop is not None:
            self.commit_crop()
        if crop is None:
            region = owner.visible_region()
            if region is None:
                owner.set_status("the view shows no part of the slide")
                return
            crop = crop_for_region(region)
        x0, y0, x1, y1 = crop.bounds_l0
        anns = owner.snapshot()
        inside = [a for a in anns if a.granularity == "pixel" and a.kind == "polygon"
                  and x0 <= a.bounds[0] and a.bounds[2] <= x1
                  and y0 <= a.bounds[1] and a.bounds[3] <= y1]  # fmt: skip
        drawn = rasterize_crop(inside, crop, owner.classes)
        if labels is not None:
            drawn = np.where(labels > 0, labels, drawn).astype(np.uint8)
        owner.crop_ids = {a.id for a in inside}
        owner.set_annotations(anns)  # hides them from the Shapes layer while the crop is open
        owner.crop = crop
        scale, translate = crop.layer_transform(owner.mpp)
        from napari.utils.colormaps import DirectLabelColormap

        layer = owner.viewer.add_labels(
            drawn, name=CROP_LAYER, scale=scale, translate=translate, opacity=0.7,
            units=owner.units, colormap=DirectLabelColormap(color_dict=label_colors(owner.classes)),
            metadata={LAYER_TAG: True, "mpp": owner.mpp, "author": owner.author.text(),
                      "classes": [{"name": c.name, "color": list(c.color)}
                                  for c in owner.classes]},
        )  # fmt: skip
        layer.selected_label = class_index(owner.classes)[owner.class_combo.currentText()]
        layer.mode = "paint"
        owner.viewer.layers.selection.active = layer
        owner.set_status(f"pixel crop {crop.shape[1]}×{crop.shape[0]} px at 1/{crop.downsample:g}: "
                         "paint, fill, erase; then Commit crop")  # fmt: skip

    def commit_crop(self) -> None:
        """Turn the crop into pixel annotations (replacing those it was opened with)."""
        owner = self.owner
        layer, crop = self.crop_layer(), owner.crop
        if layer is None or crop is None:
            owner.set_status("no pixel crop open")
            return
        try:
            new = crop_to_annotations(np.asarray(layer.data), crop, owner.classes,
                                      author=owner.author.text())  # fmt: skip
        except ValueError as exc:
            owner.set_status(f"commit crop: {exc}; paint with class labels only")
            return
        held, owner.crop_ids = owner.crop_ids, set()
        owner.crop = None
        owner.viewer.layers.remove(layer)
        kept = [a for a in owner.snapshot() if a.id not in held]
        owner.set_annotations(kept + new)
        owner.notify_changed()
        owner.set_status(f"committed {len(new)} pixel annotations")

    def discard_crop(self) -> None:
        """Close the crop without changes (the annotations it held come back)."""
        owner = self.owner
        if owner.crop is None:
            return
        owner.crop = None
        owner.crop_ids = set()
        layer = self.crop_layer()
        if layer is not None:
            owner.viewer.layers.remove(layer)
        owner.set_annotations(owner.snapshot())

    # -- model → annotations ----------------------------------------------------------------
    def probability(self, region: tuple[int, int, int, int]):
        """``(window, origin_l0, downsample)`` of the model probability under `region`, or None.

        From the "tumor probability" layer, else from the slide's default result
        store (the run with most finished cells); only the window is read.
        """
        owner = self.owner
        if PROBABILITY_LAYER in owner.viewer.layers:
            layer = owner.viewer.layers[PROBABILITY_LAYER]
            geometry = layer.metadata.get("geometry")
            if geometry:  # the inference widget's ResultGeometry
                origin, ds = geometry["origin_l0"], float(geometry["downsample"])
            else:
                origin, ds = layer_l0_transform(layer.scale, layer.translate, owner.mpp)
            array = layer.data
        else:
            try:
                found = stored_probability(owner.slide_path, owner.slide_dims,
                                           float(owner.slide_layer().metadata["mpp"]))  # fmt: skip
            except (HistoError, OSError) as exc:
                owner.set_status(f"result store unreadable: {exc}", error=True)
                return None
            if found is None:
                return None
            array, origin, ds = found
        window, window_origin = probability_window(array, origin, ds, region)
        return window, window_origin, ds

    def from_model(self) -> None:
        """Probability ≥ threshold in the visible region → editable polygons or a pixel crop."""
        owner = self.owner
        region = owner.visible_region()
        if region is None:
            owner.set_status("the view shows no part of the slide")
            return
        found = self.probability(region)
        if found is None:
            owner.set_status(f"no {PROBABILITY_LAYER!r} layer or result store: run Tumor inference")
            return
        prob, origin, ds = found
        t, name = float(self.threshold.value()), owner.class_combo.currentText()
        if self.model_output.currentText() == "pixel crop":
            crop = crop_for_region(region)
            label = class_index(owner.classes)[name]
            labels = probability_to_crop(prob, t, origin, ds, crop, label)
            self.start_crop(labels=labels, crop=crop)
            return
        author, min_area = owner.author.text(), 4 * ds * ds  # drop specks under 4 probability cells
        polys = probability_to_annotations(prob, t, origin, ds, region, label=name,
                                           author=author, min_area_px=min_area)  # fmt: skip
        owner.set_annotations(owner.snapshot() + polys)
        owner.notify_changed()
        owner.set_status(f"{len(polys)} polygons from the model at threshold {t:g}: edit them")
