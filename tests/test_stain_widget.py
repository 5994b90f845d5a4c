"""The Tumor inference dock's "Stain normalisation" setting (Qt; needs a display, e.g. xvfb-run)."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")


def test_dock_has_a_stain_setting(make_napari_viewer, tmp_path, monkeypatch):
    from napari_histo.live.controller import LiveSettings, load_settings
    from napari_histo.widgets.inference import InferenceWidget

    monkeypatch.setenv("NAPARI_HISTO_CONFIG", str(tmp_path / "config"))
    widget = InferenceWidget(make_napari_viewer())
    combo = widget.stain_combo
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert labels == ["card default", "none", "Macenko", "Reinhard"]
    assert combo.currentText() == "card default" and widget.settings().stain == "card"
    combo.setCurrentText("Macenko")
    assert widget.settings().stain == "macenko" and load_settings().stain == "macenko"
    widget.set_settings(LiveSettings(stain="reinhard"))
    assert combo.currentText() == "Reinhard"
    assert widget.settings().engine_config().stain == "reinhard"
    widget.shutdown()
