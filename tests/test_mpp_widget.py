"""The µm/px field of the docks in real napari (under Xvfb): set, saved, layers follow."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_histo.frames import overlay_transform
from napari_histo.io.mpp_choice import mpp_choice_path

pytest.importorskip("napari")


@pytest.fixture(scope="module")
def dpi72_master(tmp_path_factory):
    """A tiled TIFF whose resolution tags say 72 dpi (352.8 µm/px): shown in px."""
    from tests.slides import textured_rgb, write_generic_tiff

    path = tmp_path_factory.mktemp("dpi72") / "dpi72.tif"
    write_generic_tiff(path, textured_rgb(2048, 2048, seed=4), levels=2, tile=256, mpp=25400 / 72)
    return path


@pytest.fixture
def dpi72(dpi72_master, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_HISTO_CONFIG", str(tmp_path / "config"))
    path = tmp_path / "dpi72.tif"
    shutil.copy(dpi72_master, path)
    return path


def test_dock_field_sets_saves_and_realigns(make_napari_viewer, qtbot, dpi72):
    from napari_histo.widgets.inference import InferenceWidget
    from napari_histo.widgets.nuclei import NucleiWidget

    viewer = make_napari_viewer(show=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        (slide_layer,) = viewer.open(dpi72, plugin="napari-histo")
    messages = {str(w.message).split(": ", 1)[1] for w in seen}
    assert any("352.8 µm/px" in m and "treated as missing" in m for m in messages)
    assert any("showing the slide in pixels (set its µm/px in the Tumor" in m for m in messages)
    widget = InferenceWidget(viewer)
    nuclei = NucleiWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Tumor inference")
    viewer.window.add_dock_widget(nuclei, name="Nuclei")
    field = widget.mpp_field
    assert field.layer is slide_layer and nuclei.mpp_field.layer is slide_layer
    assert "µm/px unknown" in field.message.text() and field.edit.text() == ""
    assert widget.controller is None and "its µm/px is unknown" in widget.slide_label.text()
    assert tuple(slide_layer.scale) == (1.0, 1.0)

    # Bad entries: one line in the dock, nothing saved, nothing moved.
    for bad in ("0", "-1", "abc", "72", "", "0.01"):
        assert not field.set_mpp(bad)
        assert field.message.text().startswith("not set: `µm/px` must be a number in 0.05–50")
        assert "\n" not in field.message.text()
    assert not mpp_choice_path(dpi72).exists() and tuple(slide_layer.scale) == (1.0, 1.0)

    # A shape drawn on the tissue (in px: the slide has no scale yet).
    shapes = viewer.add_shapes([[[100, 200], [300, 400]]], shape_type="rectangle",
                               units=slide_layer.units)  # fmt: skip
    field.edit.setText("0.5")
    qtbot.mouseClick(field.set_button, Qt.MouseButton.LeftButton)
    saved = json.loads(mpp_choice_path(dpi72).read_text())
    assert saved["mpp"] == 0.5 and saved["set_by"] == "Tumor inference dock"
    assert tuple(slide_layer.scale) == (0.5, 0.5)
    assert tuple(str(u) for u in slide_layer.units) == ("micrometer", "micrometer")
    assert slide_layer.metadata["mpp"] == 0.5 and slide_layer.metadata["mpp_source"] == "saved"
    assert "saved in dpi72.tif.mpp.json" in field.message.text()
    # The shape stays on the same tissue; the docks now run at 0.5 µm/px.
    np.testing.assert_allclose(shapes.data_to_world([100, 200]), [50, 100])
    assert widget.controller is not None and widget.controller.mpp == (0.5, 0.5)
    assert "0.5 µm/px, saved beside the slide" in nuclei.mpp_field.message.text()
    assert nuclei.slide_layer() is slide_layer

    def placed(mpp):
        return overlay_transform(widget.controller.expected_geometry(), mpp)

    probability = widget.overlays.layer("probability")
    np.testing.assert_allclose(probability.scale, placed(0.5)[0])
    np.testing.assert_allclose(probability.translate, placed(0.5)[1])

    # The Annotate dock draws a rectangle at 0.5 µm/px (saved in level-0 px).
    from napari_histo.frames import l0_to_world
    from napari_histo.io.annotations import read_annotations
    from napari_histo.io.annotations.autosave import autosave_path
    from napari_histo.widgets.annotation import SHAPES_LAYER, AnnotationWidget

    annotate = AnnotationWidget(viewer, autosave_delay_s=0)
    viewer.window.add_dock_widget(annotate, name="Annotate")
    assert annotate.mpp == (0.5, 0.5)
    corners = [[400, 300], [800, 300], [800, 500], [400, 500]]
    viewer.layers[SHAPES_LAYER].add(l0_to_world(corners, 0.5), shape_type="rectangle")
    qtbot.waitUntil(lambda: autosave_path(dpi72).exists(), timeout=5000)

    # Changed again from the other dock: overlays for the new grid, the shape and this field follow.
    assert nuclei.mpp_field.set_mpp("0.25")
    assert json.loads(mpp_choice_path(dpi72).read_text())["set_by"] == "Nuclei dock"
    assert tuple(slide_layer.scale) == (0.25, 0.25)
    assert widget.controller.mpp == (0.25, 0.25) and field.edit.text() == "0.25"
    probability = widget.overlays.layer("probability")
    np.testing.assert_allclose(probability.scale, placed(0.25)[0])
    np.testing.assert_allclose(probability.translate, placed(0.25)[1])
    np.testing.assert_allclose(shapes.data_to_world([100, 200]), [25, 50])
    # The Annotate dock rebuilt its layer at 0.25 µm/px: the rectangle is on the same tissue.
    assert annotate.mpp == (0.25, 0.25)
    qtbot.waitUntil(lambda: SHAPES_LAYER in viewer.layers and len(viewer.layers[SHAPES_LAYER].data), timeout=5000)  # noqa: E501
    rect = viewer.layers[SHAPES_LAYER]
    world = np.array([rect.data_to_world(v) for v in rect.data[0]])
    np.testing.assert_allclose(np.sort(world, axis=0), np.sort(l0_to_world(corners, 0.25), axis=0))
    (ann,) = read_annotations(autosave_path(dpi72)).annotations
    np.testing.assert_allclose(ann.bounds, (400, 300, 800, 500), atol=1e-6)

    # A new viewer of the same slide opens at the saved scale, without the 72-dpi warning.
    from napari_histo.plugin.reader import read_slides

    ((_, kwargs, _),) = read_slides(str(dpi72))
    assert kwargs["scale"] == (0.25, 0.25) and kwargs["metadata"]["mpp_source"] == "saved"
    kwargs["metadata"]["slide"].close()
    widget.shutdown()
    nuclei.shutdown()
    annotate.close()
