"""The Tumor inference dock's overlays show calibrated probability when the members carry a
temperature (real napari viewer under Xvfb, a real stored run)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histo.live.pyramid import outline_mask
from napari_histo.review.calibration import calibrate
from tests.test_report import make_run

pytest.importorskip("napari")


def test_overlays_show_a_stored_run_calibrated(make_napari_viewer, tmp_path):
    from napari_histo.widgets._overlays import OverlayLayers

    _, run_ = make_run(tmp_path)
    stored = np.asarray(run_.levels("probability")[1][...])
    viewer = make_napari_viewer()
    mpp = (run_.geometry.mpp / run_.geometry.downsample,) * 2
    plain, calibrated = OverlayLayers(viewer, mpp), OverlayLayers(viewer, mpp)
    plain.show_run(run_)
    shown = np.asarray(plain.layer("probability").data[1])
    np.testing.assert_array_equal(shown, stored)
    for layer in [plain.layer(k) for k in ("probability", "outline")]:
        viewer.layers.remove(layer)
    calibrated.temperature = 0.5
    calibrated.show_run(run_)
    shown = np.asarray(calibrated.layer("probability").data[1])
    np.testing.assert_allclose(shown, calibrate(stored, 0.5), atol=1e-6)
    # The outline at 0.5 is the same with or without calibration (T keeps logit 0 at 0).
    outline = np.asarray(calibrated.layer("outline").data[1])
    np.testing.assert_array_equal(outline, outline_mask(stored >= 0.5).astype(np.uint8))
    # Writable buffers made from an unfinished run's arrays are calibrated too.
    calibrated.ensure(run_.geometry, arrays={k: run_.array(k) for k in ("probability",
                      "aleatoric", "epistemic")})  # fmt: skip
    level0 = np.asarray(calibrated.pyramids["probability"].levels[0], np.float32)
    expected = calibrate(np.asarray(run_.array("probability")[...]), 0.5)
    np.testing.assert_allclose(level0, expected, atol=1e-3)  # display buffers are float16
