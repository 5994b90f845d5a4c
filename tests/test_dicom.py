"""DICOM WSI: a series written with pydicom from the real CMU slide opens through
OpenSlide (file or folder), with pixels within JPEG error of the source, the
right µm scale in napari, and one-line errors for DICOM files that are no slide."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_histo.cli import main
from napari_histo.errors import SlideError
from napari_histo.io.dicom import WSI_SOP_CLASS, series_file, wsi_problem
from napari_histo.io.slide import Slide
from napari_histo.plugin.reader import napari_get_reader
from tests.slides import _reduce, write_dicom_ct, write_dicom_wsi

CMU_MPP = 0.499


@pytest.fixture(scope="module")
def cmu_rgb(cmu_svs) -> np.ndarray:
    """Level 0 of the real CMU-1-Small-Region slide, (2967, 2220, 3) uint8."""
    with Slide(cmu_svs) as slide:
        width, height = slide.dimensions
        return slide.read_region(0, 0, 0, width, height)


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory, cmu_rgb):
    """The CMU slide as a 3-level DICOM WSI series (one .dcm per level), mpp 0.499."""
    folder = tmp_path_factory.mktemp("dicom") / "cmu-dicom"
    write_dicom_wsi(folder, cmu_rgb, levels=3, tile=256, mpp=CMU_MPP)
    return folder


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    return write_dicom_ct(tmp_path_factory.mktemp("ct") / "ct.dcm")


def test_folder_resolves_to_level_0_and_file_opens_whole_series(dicom_dir):
    with Slide(dicom_dir) as slide:
        assert slide.path == dicom_dir / "level-0.dcm"
        assert slide.source == dicom_dir and slide.name == "cmu-dicom"
        assert repr(slide) == f"Slide({str(dicom_dir)!r})"
        assert slide.vendor == "dicom"
        assert slide.level_dimensions == ((2220, 2967), (1110, 1483), (555, 741))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0), rel=1e-3)
        # DICOM PixelSpacing is in mm: 0.000499 mm -> 0.499 µm/px.
        assert slide.mpp_x == pytest.approx(CMU_MPP) and slide.mpp_y == pytest.approx(CMU_MPP)
        assert slide.tile_size(0) == (256, 256)
    # OpenSlide finds the other levels from any one file of the series.
    with Slide(dicom_dir / "level-2.dcm") as slide:
        assert slide.level_count == 3 and slide.dimensions == (2220, 2967)


def test_pixels_match_source_within_jpeg_error(dicom_dir, cmu_rgb):
    with Slide(dicom_dir) as slide:
        for level in range(slide.level_count):
            width, height = slide.level_dimensions[level]
            got = slide.read_level_region(level, 0, 0, width, height).astype(np.float64)
            source = (cmu_rgb if level == 0 else _reduce(cmu_rgb, 2**level))[:height, :width]
            error = got - source
            psnr_db = 10 * np.log10(255**2 / np.mean(error**2))
            # Quality 95 with 4:2:0 chroma on real tissue measures ~34 dB, mean |error| ~2.6.
            assert psnr_db > 30 and np.abs(error).mean() < 3.5, (level, psnr_db)
            # Aligned: one pixel of shift costs far more than the JPEG error.
            shifted = np.abs(got[:, 1:] - source[:, :-1]).mean()
            assert shifted > 2 * np.abs(error).mean(), (level, shifted)


def test_reader_file_and_folder_give_multiscale_rgb_in_um(dicom_dir):
    for path in (dicom_dir, dicom_dir / "level-0.dcm", dicom_dir / "level-1.dcm"):
        reader = napari_get_reader(str(path))
        assert reader is not None, path
        ((data, kwargs, kind),) = reader(str(path))
        assert kind == "image"
        assert kwargs["rgb"] is True and kwargs["multiscale"] is True
        assert [a.shape for a in data] == [(2967, 2220, 3), (1483, 1110, 3), (741, 555, 3)]
        assert kwargs["scale"] == pytest.approx((CMU_MPP, CMU_MPP))
        assert kwargs["units"] == ("micrometer", "micrometer")
        assert kwargs["metadata"]["vendor"] == "dicom"
        kwargs["metadata"]["slide"].close()
    ((_, kwargs, _),) = napari_get_reader(str(dicom_dir))(str(dicom_dir))
    assert kwargs["name"] == "cmu-dicom"
    assert kwargs["metadata"]["source"] == str(dicom_dir)
    assert kwargs["metadata"]["path"] == str(dicom_dir / "level-0.dcm")
    kwargs["metadata"]["slide"].close()


def test_ct_image_is_no_slide(ct_file):
    assert wsi_problem(ct_file) is not None
    assert napari_get_reader(str(ct_file)) is None
    reason = r"is a DICOM CT Image Storage object .*not a whole-slide image"
    with pytest.raises(SlideError, match=reason) as info:
        Slide(ct_file)
    assert str(ct_file) in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def bad_dicoms(tmp_path_factory, dicom_dir, ct_file):
    root = tmp_path_factory.mktemp("baddcm")
    data = (dicom_dir / "level-0.dcm").read_bytes()
    cases = {
        "truncated_pixels": (data[: len(data) // 2], "corrupt or truncated"),
        "truncated_header": (data[:300], "corrupt or truncated"),
        "garbage_after_magic": (
            data[:132] + np.random.default_rng(0).bytes(5000), "is a corrupt DICOM file"
        ),
    }
    files = {}
    for name, (blob, reason) in cases.items():
        folder = root / name  # its own folder: OpenSlide scans the file's folder
        folder.mkdir()
        (folder / f"{name}.dcm").write_bytes(blob)
        files[name] = (folder / f"{name}.dcm", reason)
    return files


@pytest.mark.parametrize("case", ["truncated_pixels", "truncated_header", "garbage_after_magic"])
def test_corrupt_dicom_one_line_error(bad_dicoms, case):
    path, reason = bad_dicoms[case]
    with pytest.raises(SlideError, match=reason) as info:
        Slide(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert napari_get_reader(str(path)) is None


def test_folders_without_exactly_one_series(tmp_path, dicom_dir, ct_file, cmu_rgb):
    empty = tmp_path / "empty"
    empty.mkdir()
    only_ct = tmp_path / "only_ct"
    only_ct.mkdir()
    shutil.copy(ct_file, only_ct / "ct.dcm")
    two = tmp_path / "two"
    shutil.copytree(dicom_dir, two)
    write_dicom_wsi(two / "other", cmu_rgb[:512, :512], levels=1)
    shutil.move(two / "other" / "level-0.dcm", two / "other-level-0.dcm")
    for folder, reason in [
        (empty, "is a directory with no DICOM WSI files"),
        (only_ct, "is a directory with no DICOM WSI files"),
        (two, r"holds 2 DICOM WSI series .*open one of its \.dcm files"),
    ]:
        with pytest.raises(SlideError, match=reason) as info:
            series_file(folder)
        assert str(info.value).startswith(f"{folder}: ") and "\n" not in str(info.value)
    assert napari_get_reader(str(empty)) is None
    assert napari_get_reader(str(only_ct)) is None
    assert napari_get_reader(str(two)) is None


def test_series_files_carry_the_wsi_sop_class(dicom_dir):
    from pydicom.filereader import read_file_meta_info

    for path in sorted(dicom_dir.glob("*.dcm")):
        assert read_file_meta_info(path).MediaStorageSOPClassUID == WSI_SOP_CLASS


def test_cli_info_on_dicom_folder(dicom_dir, capsys):
    assert main(["info", str(dicom_dir)]) == 0
    out = capsys.readouterr().out
    assert "vendor:     dicom" in out
    assert "0.4990 x 0.4990 µm/px" in out
    assert "2220    2967" in out and "555     741" in out


def test_manifest_offers_dcm_and_folders():
    npe2 = pytest.importorskip("npe2")
    from importlib.resources import files

    manifest = npe2.PluginManifest.from_file(files("napari_histo") / "napari.yaml")
    reader = manifest.contributions.readers[0]
    assert "*.dcm" in reader.filename_patterns and reader.accepts_directories


def test_cli_info_on_ct_is_one_line_exit_2(ct_file):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "napari_histo.cli", "info", str(ct_file)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(ct_file) in lines[0] and "not a whole-slide image" in lines[0]


def test_frames_decode_directly_and_equal_openslide(dicom_dir):
    import openslide

    from napari_histo.io.dicom_tiles import find_dicom_level_tiles

    with Slide(dicom_dir) as slide:
        # Levels 1-2 downsample by 2.0007 in y (1483 of 2967 rows): OpenSlide's level-0
        # addressing is exact only at the origin there.
        windows = [(0, 300, 517, 700, 450), (1, 0, 0, 1110, 1483), (2, 0, 0, 300, 200)]
        got = [slide.read_level_region(*w) for w in windows]
        assert slide.fast_levels == (True, True, True)  # verified against OpenSlide per level
        assert slide.tile_cache.bytes > 0
        with openslide.OpenSlide(slide.path) as osr:
            for (level, x, y, w, h), image in zip(windows, got, strict=True):
                ds = osr.level_downsamples[level]
                region = osr.read_region((round(x * ds), round(y * ds)), level, (w, h))
                np.testing.assert_array_equal(image, np.asarray(region.convert("RGB")))
    # A level whose frames cannot be found (truncated file) gets no direct path.
    broken = dicom_dir.parent / "broken"
    shutil.copytree(dicom_dir, broken)
    level2 = broken / "level-2.dcm"
    level2.write_bytes(level2.read_bytes()[:-5000])
    tables = find_dicom_level_tiles(
        broken / "level-0.dcm", ((2220, 2967), (1110, 1483), (555, 741)), ((256, 256),) * 3
    )
    assert [t is not None for t in tables] == [True, True, False]


def test_cohort_task_takes_a_dicom_folder(dicom_dir, tmp_path):
    from napari_histo.analysis.cohort import (
        CohortConfig,
        _completed_row,
        fingerprint,
        process_slide,
    )
    from tests.test_engine import make_member

    cards = (str(make_member(tmp_path / "m", "resunet", 1)),)
    config = CohortConfig(out_dir=str(tmp_path / "out"), cards=cards, outputs=False)
    outcome = process_slide(str(dicom_dir), config)
    assert outcome.status == "done", outcome.error
    assert outcome.row["tissue_area_mm2"] > 0
    folder = tmp_path / "out" / dicom_dir.name
    assert _completed_row(folder, fingerprint(config), str(dicom_dir)) is not None
