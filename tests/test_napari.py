"""Real napari (under Xvfb): the npe2 reader opens slides as µm-scaled pyramids."""

from __future__ import annotations

import numpy as np
import pytest

from napari_histo.plugin.reader import napari_get_reader

npe2 = pytest.importorskip("npe2")


def test_manifest_is_valid():
    from importlib.resources import files

    manifest = npe2.PluginManifest.from_file(files("napari_histo") / "napari.yaml")
    assert manifest.name == "napari-histo"
    patterns = manifest.contributions.readers[0].filename_patterns
    for suffix in ("svs", "tif", "tiff", "ndpi", "mrxs", "scn", "svslide", "bif", "vms", "vmu"):
        assert f"*.{suffix}" in patterns
    samples = {s.key: s.display_name for s in manifest.contributions.sample_data}
    assert samples == {"synthetic_he": "Synthetic H&E slide"}


def test_layer_data_tuple(small_svs):
    reader = napari_get_reader(str(small_svs))
    assert reader is not None
    (data, kwargs, kind), = reader(str(small_svs))
    assert kind == "image"
    assert [a.shape for a in data] == [(2000, 3000, 3), (500, 750, 3)]
    assert kwargs["name"] == "small.svs"
    assert kwargs["rgb"] is True and kwargs["multiscale"] is True
    assert kwargs["scale"] == (0.25, 0.25)
    meta = kwargs["metadata"]
    assert meta["mpp"] == pytest.approx(0.25) and meta["vendor"] == "aperio"
    assert meta["objective_power"] == 40


def _screenshot(viewer, qtbot) -> np.ndarray:
    qtbot.wait(50)
    return viewer.screenshot(canvas_only=True, flash=False)


def test_viewer_opens_pans_zooms_and_renders(make_napari_viewer, qtbot, cmu_svs):
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(cmu_svs, plugin="napari-histo")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.multiscale and layer.rgb
    np.testing.assert_allclose(layer.scale, (0.499, 0.499))
    assert layer.name == "cmu_small_region.svs"
    # The slide spans its physical size in µm in world coordinates.
    extent = layer.extent.world
    np.testing.assert_allclose(extent[1] - extent[0], np.array([2967, 2220]) * 0.499, rtol=1e-3)

    viewer.reset_view()
    whole = _screenshot(viewer, qtbot)
    assert whole.std() > 10, "screenshot looks blank"
    rgb = whole[..., :3].astype(int)
    pinkish = (rgb[..., 0] > rgb[..., 1] + 30) & (rgb[..., 2] > rgb[..., 1] + 10)
    assert pinkish.mean() > 0.02, "no H&E-coloured pixels on screen"

    # Zoom in on tissue near the centre (µm) and pan: the view changes, still not blank.
    viewer.scene.camera.center = (700.0, 560.0)
    viewer.scene.camera.zoom = viewer.scene.camera.zoom * 8
    zoomed = _screenshot(viewer, qtbot)
    assert zoomed.std() > 10
    assert not np.array_equal(zoomed, whole)
    viewer.scene.camera.center = (900.0, 600.0)
    panned = _screenshot(viewer, qtbot)
    assert panned.std() > 10
    assert not np.array_equal(panned, zoomed)


def test_viewer_pyramid_levels_follow_zoom(make_napari_viewer, qtbot, wide_tiff):
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(wide_tiff, plugin="napari-histo")
    assert len(layer.data) == 3  # one file level + two synthetic ones
    viewer.reset_view()
    qtbot.wait(50)
    coarse = layer.data_level
    viewer.scene.camera.zoom = viewer.scene.camera.zoom * 16
    qtbot.wait(50)
    _screenshot(viewer, qtbot)
    assert layer.data_level < coarse


def test_sample_data_generated_once_and_opens(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_HISTO_CACHE", str(tmp_path))
    monkeypatch.setenv("NAPARI_HISTO_SAMPLE_PX", "2048")
    viewer = make_napari_viewer(show=True)
    layers = viewer.open_sample("napari-histo", "synthetic_he")
    assert len(layers) == 1 and layers[0].rgb and layers[0].multiscale
    np.testing.assert_allclose(layers[0].scale, (0.25, 0.25))
    (path,) = (tmp_path / "samples").glob("*.svs")
    stamp = path.stat().st_mtime_ns
    viewer.open_sample("napari-histo", "synthetic_he")
    assert path.stat().st_mtime_ns == stamp  # cached, not regenerated
    viewer.reset_view()
    assert _screenshot(viewer, qtbot)[..., :3].std() > 10


def test_sample_size_setting_rejects_bad_values(monkeypatch):
    from napari_histo.plugin.sample_data import sample_size_px

    monkeypatch.setenv("NAPARI_HISTO_SAMPLE_PX", "huge")
    with pytest.raises(ValueError, match="NAPARI_HISTO_SAMPLE_PX must be an integer, got 'huge'"):
        sample_size_px()
    monkeypatch.setenv("NAPARI_HISTO_SAMPLE_PX", "10")
    with pytest.raises(ValueError, match=r"must be in \[1024, 131072\], got 10"):
        sample_size_px()


def test_viewer_opens_dicom_folder_and_16_bit_tiff(make_napari_viewer, qtbot, tmp_path):
    """npe2 routes a folder (accepts_directories) and a .dcm file to our reader;
    a 16-bit fluorescence TIFF renders with limits from the data, not black."""
    from tests.slides import (
        fluorescence_like,
        textured_rgb,
        write_dicom_wsi,
        write_single_channel_tiff,
    )

    folder = tmp_path / "series"
    write_dicom_wsi(folder, textured_rgb(700, 900, seed=4), levels=2, mpp=0.5)
    viewer = make_napari_viewer(show=True)
    for path in (folder, folder / "level-1.dcm"):
        (layer,) = viewer.open(path, plugin="napari-histo")
        assert layer.multiscale and layer.rgb
        np.testing.assert_allclose(layer.scale, (0.5, 0.5))
        viewer.layers.clear()

    image = fluorescence_like(600, 800, peak=4000, dtype=np.uint16, seed=5)
    path = tmp_path / "fluo16.tif"
    write_single_channel_tiff(path, [image], mpp=0.5)
    (layer,) = viewer.open(path, plugin="napari-histo")
    assert not layer.rgb and layer.dtype == np.uint16
    assert 1000 < layer.contrast_limits[1] <= 4000
    viewer.reset_view()
    shot = _screenshot(viewer, qtbot)
    assert shot[..., :3].max() > 200, "bright spots should reach near white"
