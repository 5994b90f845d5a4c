"""Bad slide files: a SlideError naming the path and reason, the reader says None,
the CLI prints one line and exits 2, and nothing hangs."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from napari_histo.errors import HistoError, SlideError
from napari_histo.io.slide import Slide
from napari_histo.plugin.reader import napari_get_reader


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, small_svs):
    root = tmp_path_factory.mktemp("bad")
    data = small_svs.read_bytes()
    files = {}
    files["nonexistent"] = (root / "missing.svs", "no such file")
    (root / "folder.svs").mkdir()
    files["directory"] = (root / "folder.svs", "is a directory")
    (root / "empty.svs").write_bytes(b"")
    files["empty"] = (root / "empty.svs", r"is empty \(0 bytes\)")
    (root / "half.svs").write_bytes(data[: len(data) // 2])
    files["truncated_half"] = (root / "half.svs", "truncated")
    (root / "almost.svs").write_bytes(data[: len(data) - 1000])
    files["truncated_tail"] = (root / "almost.svs", "truncated")
    (root / "random.svs").write_bytes(np.random.default_rng(0).bytes(200_000))
    files["random_bytes"] = (root / "random.svs", "not a slide format")
    Image.new("RGB", (64, 64), "red").save(root / "picture.png")
    (root / "picture.png").rename(root / "picture.svs")
    files["png_renamed"] = (root / "picture.svs", "is a PNG image")
    (root / "notes.svs").write_text("this is not a slide\n")
    files["text"] = (root / "notes.svs", "not a slide format")
    garbage = bytearray(data)
    garbage[len(garbage) // 3 : len(garbage) // 3 + 200_000] = bytes(200_000)
    (root / "zeroed.svs").write_bytes(bytes(garbage))
    files["zeroed_tiles"] = (root / "zeroed.svs", "")
    return files


CASES = [
    "nonexistent", "directory", "empty", "truncated_half", "truncated_tail",
    "random_bytes", "png_renamed", "text",
]


@pytest.mark.parametrize("case", CASES)
def test_slide_error_names_path_and_reason(bad_files, case):
    path, reason = bad_files[case]
    start = time.monotonic()
    with pytest.raises(SlideError, match=reason) as info:
        Slide(path)
    assert time.monotonic() - start < 10
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, HistoError)


@pytest.mark.parametrize("case", CASES)
def test_reader_returns_none(bad_files, case):
    path, _ = bad_files[case]
    assert napari_get_reader(str(path)) is None


def test_zeroed_tile_data_fails_on_read_not_silently(bad_files):
    """Corrupt tile bytes inside a structurally whole file: an error, never garbage."""
    path, _ = bad_files["zeroed_tiles"]
    with Slide(path) as slide:
        width, height = slide.dimensions
        with pytest.raises(SlideError, match=r"level 0 region .*(JPEG|marker)") as info:
            slide.read_region(0, 0, 0, width, height)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("case", ["nonexistent", "directory", "empty", "truncated_half",
                                  "random_bytes", "png_renamed"])
def test_cli_info_one_line_exit_2(bad_files, case):
    path, _ = bad_files[case]
    proc = subprocess.run(
        [sys.executable, "-m", "napari_histo.cli", "info", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_aperio_file_cut_before_its_pages_is_one_line_naming_it(tmp_path):
    # Aperio writes its page tables at the end: a file cut short has no page at
    # all. One line saying so (tifffile's own log line does not leak), and the
    # demo refuses it before opening a window.
    from pathlib import Path

    from napari_histo.demo import run_demo

    real = Path(__file__).parent / "data" / "cmu_small_region.svs"
    cut = tmp_path / "cut.svs"
    cut.write_bytes(real.read_bytes()[:300_000])
    proc = subprocess.run(
        [sys.executable, "-m", "napari_histo.cli", "info", str(cut)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"napari-histo info: error: {cut}: is truncated: its first page starts at byte "
        f"1275950, file has 300000"
    ]
    with pytest.raises(SlideError, match="is truncated"):
        run_demo(slide=str(cut), screenshot=str(tmp_path / "never.png"))
    assert not (tmp_path / "never.png").exists()


def test_tifffile_log_lines_are_dropped_only_inside_open_tiff(tmp_path):
    # A TIFF header pointing at page 0: tifffile logs "contains no pages". Inside
    # open_tiff (tiff_truncation) nothing reaches the log; outside it, as before.
    import logging
    import threading

    import tifffile

    from napari_histo.io.tiff_tiles import tiff_truncation

    path = tmp_path / "nopages.tif"
    path.write_bytes(b"II*\x00" + bytes(104))
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logging.getLogger("tifffile").addHandler(handler)
    try:
        assert tiff_truncation(path) == "is a corrupt or truncated TIFF (no readable page)"
        assert seen == []

        def plain():
            with tifffile.TiffFile(path):
                pass

        thread = threading.Thread(target=plain)
        thread.start()
        thread.join()
        assert any("contains no pages" in line for line in seen)
    finally:
        logging.getLogger("tifffile").removeHandler(handler)


def test_cli_info_without_mpp_warns_not_fails(generic_tiff):
    proc = subprocess.run(
        [sys.executable, "-m", "napari_histo.cli", "info", str(generic_tiff)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0
    assert "unknown (no microns-per-pixel metadata" in proc.stdout


def test_reader_warns_once_without_mpp(generic_tiff):
    reader = napari_get_reader(str(generic_tiff))
    assert reader is not None
    with pytest.warns(UserWarning, match="no microns-per-pixel") as record:
        ((_, kwargs, _),) = reader(str(generic_tiff))
    assert len(record) == 1
    assert kwargs["scale"] == (1.0, 1.0) and kwargs["units"] == ("pixel", "pixel")


def test_reader_ignores_other_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    assert napari_get_reader(str(tmp_path / "a.png")) is None
    assert napari_get_reader([]) is None
    assert napari_get_reader(str(tmp_path)) is None


@pytest.mark.parametrize("mpp", ["1e9", "0.0001", "nan"])
@pytest.mark.parametrize("command", ["infer", "nuclei"])
def test_cli_mpp_outside_the_plausible_range_is_refused(small_svs, command, mpp):
    # 1e9 µm/px once made `infer` allocate tens of GB (the OOM killer ended it).
    proc = subprocess.run(
        [sys.executable, "-m", "napari_histo.cli", command, str(small_svs), "--mpp", mpp],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--mpp" in proc.stderr and "Traceback" not in proc.stderr
    # One line, as for a bad file: the usage block stays in --help.
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"napari-histo {command}: error: argument")
    assert lines[0].endswith(f"(see napari-histo {command} --help)")


def test_cli_nuclei_never_writes_its_outputs_over_the_slide_or_into_a_store(small_svs, tmp_path):
    slide = tmp_path / small_svs.name
    slide.write_bytes(small_svs.read_bytes())
    before = slide.read_bytes()
    store_file = tmp_path / f"{slide.name}.histo.zarr" / "zarr.json"
    for option, target, reason in [
        ("--csv", slide, "is an input"),
        ("--geojson", slide, "is an input"),
        ("--csv", store_file, "inside a zarr store"),
        ("--csv", tmp_path, "is a folder"),
        ("--geojson", tmp_path / "missing" / "x.geojson", "does not exist"),
    ]:
        proc = subprocess.run(
            [sys.executable, "-m", "napari_histo.cli", "nuclei", str(slide), "--quiet",
             option, str(target)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0] and str(target) in lines[0], proc.stderr
    assert slide.read_bytes() == before
    assert not store_file.parent.exists()  # refused before any work
