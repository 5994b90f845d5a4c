"""µm/px you can trust: the saved choice beside the slide, its precedence, CLI and dock field."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import pytest

from napari_histo.frames import check_mpp, rescale_world
from napari_histo.io.mpp_choice import (
    clear_mpp_choice,
    mpp_choice_path,
    read_mpp_choice,
    save_mpp_choice,
)
from napari_histo.io.slide import Slide


@pytest.fixture(scope="module")
def dpi72_master(tmp_path_factory):
    """A tiled TIFF whose resolution tags say 72 dpi (352.8 µm/px): a scanner default."""
    from tests.slides import textured_rgb, write_generic_tiff

    path = tmp_path_factory.mktemp("dpi72") / "dpi72.tif"
    write_generic_tiff(path, textured_rgb(1024, 1024, seed=4), levels=1, tile=256, mpp=25400 / 72)
    return path


@pytest.fixture
def dpi72(dpi72_master, tmp_path):
    """A private copy (each test writes its own sidecar beside it)."""
    path = tmp_path / "dpi72.tif"
    shutil.copy(dpi72_master, path)
    return path


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "napari_histo.cli", *args],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


# -- sidecar and precedence -----------------------------------------------------------
def test_sidecar_round_trip_and_precedence_on_a_72_dpi_tiff(dpi72):
    with pytest.warns(UserWarning, match=r"352\.8 µm/px .* treated as missing"):
        with Slide(dpi72) as slide:
            assert slide.mpp is None and slide.mpp_source is None and slide.file_mpp is None

    path = save_mpp_choice(dpi72, "0.5", set_by="test", file_mpp=None)
    assert path == mpp_choice_path(dpi72) == dpi72.with_name("dpi72.tif.mpp.json")
    data = json.loads(path.read_text())
    assert data["format"] == 1 and data["mpp"] == 0.5 and data["set_by"] == "test"
    assert data["saved_at"].endswith("+00:00")
    choice = read_mpp_choice(dpi72)
    assert choice.mpp == 0.5 and choice.set_by == "test"
    assert not list(dpi72.parent.glob(".*tmp"))  # written atomically: no temp left over

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved choice fills the gap: no warning
        with Slide(dpi72) as slide:
            assert (slide.mpp, slide.mpp_x, slide.mpp_y, slide.mpp_source) == (
                0.5, 0.5, 0.5, "saved")  # fmt: skip
            assert slide.require_mpp() == 0.5
        with Slide(dpi72, mpp=0.25) as slide:  # an explicit argument beats the saved choice
            assert (slide.mpp, slide.mpp_source) == (0.25, "argument")

    assert clear_mpp_choice(dpi72) == path and not path.exists()
    assert clear_mpp_choice(dpi72) is None


def test_saved_choice_beats_a_plausible_file_value(small_svs, tmp_path):
    copy = tmp_path / "small.svs"
    shutil.copy(small_svs, copy)
    with Slide(copy) as slide:
        assert (slide.mpp, slide.mpp_source, slide.file_mpp) == (pytest.approx(0.25), "file",
                                                                 pytest.approx(0.25))  # fmt: skip
    save_mpp_choice(copy, 0.5, set_by="test", file_mpp=0.25)
    with Slide(copy) as slide:
        assert (slide.mpp, slide.mpp_source) == (0.5, "saved")
        assert slide.file_mpp == pytest.approx(0.25)  # what the file says stays visible


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "is not JSON"),
        ("[0.5]", "must hold a JSON object"),
        ('{"mpp": 352.8}', r"`mpp` must be a number in 0\.05–50 µm/px, got 352\.8"),
        ('{"mpp": "abc"}', "`mpp` must be a number in"),
        ('{"format": 9, "mpp": 0.5}', "has format 9"),
    ],
)
def test_corrupt_sidecar_is_ignored_with_one_warning(small_svs, tmp_path, text, reason):
    copy = tmp_path / "small.svs"
    shutil.copy(small_svs, copy)
    mpp_choice_path(copy).write_text(text)
    with pytest.warns(UserWarning, match=rf"small\.svs\.mpp\.json: saved µm/px ignored: {reason}") as seen:  # noqa: E501
        with Slide(copy) as slide:
            assert (slide.mpp, slide.mpp_source) == (pytest.approx(0.25), "file")
    assert len(seen) == 1


@pytest.mark.parametrize("bad", [0, -1, "0", "abc", "", 0.01, 72, "nan", float("inf"), None, True])
def test_bad_values_are_refused(bad, tmp_path):
    with pytest.raises(ValueError, match=r"`mpp` must be a number in 0\.05–50 µm/px, got"):
        check_mpp(bad)
    with pytest.raises(ValueError, match="must be a number in"):
        save_mpp_choice(tmp_path / "x.svs", bad, set_by="test")
    assert not mpp_choice_path(tmp_path / "x.svs").exists()


def test_rescale_world_keeps_overlays_on_the_tissue():
    from napari_histo.frames import grid_transform

    old, new = (0.25, 0.25), (0.5, 0.4)
    got = rescale_world(*grid_transform((100, 40), 8.0, old), old, new)
    want = grid_transform((100, 40), 8.0, new)
    assert got[0] == pytest.approx(want[0]) and got[1] == pytest.approx(want[1])
    scale, translate = rescale_world((1.0, 2.0, 2.0), (5.0, 1.0, 1.0), old, new)
    assert scale == pytest.approx((1.0, 4.0, 3.2)) and translate == pytest.approx((5.0, 2.0, 1.6))


def test_reader_scale_follows_the_saved_choice(dpi72):
    from napari_histo.plugin.reader import read_slides

    save_mpp_choice(dpi72, 0.5, set_by="test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ((_, kwargs, _),) = read_slides(str(dpi72))
    assert kwargs["scale"] == (0.5, 0.5) and kwargs["units"] == ("micrometer", "micrometer")
    assert kwargs["metadata"]["mpp_source"] == "saved"
    kwargs["metadata"]["slide"].close()


# -- CLI ------------------------------------------------------------------------------
def test_info_set_mpp_then_infer_uses_it(dpi72, tmp_path):
    proc = run_cli("info", str(dpi72), "--set-mpp", "0.5")
    assert proc.returncode == 0, proc.stderr
    sidecar = mpp_choice_path(dpi72)
    assert f"saved 0.5 µm/px in {sidecar}" in proc.stdout
    assert f"0.5000 x 0.5000 µm/px (saved in {sidecar})" in proc.stdout
    assert proc.stderr == ""  # the file's 72 dpi is not warned about once a choice fills it
    assert json.loads(sidecar.read_text())["set_by"] == "napari-histo info --set-mpp"

    proc = run_cli("info", str(dpi72), "--json")
    info = json.loads(proc.stdout)
    assert (info["mpp_x"], info["mpp_source"], info["mpp_file"]) == (0.5, "saved", str(sidecar))

    out = tmp_path / "out"
    proc = run_cli("infer", str(dpi72), "--out", str(out), "--members", "resunet",
                   "--region", "0,0,512,512", "--quiet", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "µm/px" not in proc.stderr
    from napari_histo.io.store import ResultStore, slide_identity

    store = ResultStore(out / "dpi72.tif.histo.zarr", slide_identity(dpi72, (1024, 1024), 0.5),
                        mode="r")  # fmt: skip
    (run,) = list(store.runs())
    geometry = run.geometry
    assert geometry.downsample == pytest.approx(geometry.mpp / 0.5)  # model px at 0.5 µm/px

    # A later change of mind: the old store says so in one line instead of mixing results.
    assert run_cli("info", str(dpi72), "--set-mpp", "0.25").returncode == 0
    proc = run_cli("infer", str(dpi72), "--out", str(out), "--members", "resunet",
                   "--region", "0,0,256,256", "--quiet", timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert "made at 0.5 µm/px and the slide is now at 0.25 µm/px" in proc.stderr

    proc = run_cli("info", str(dpi72), "--clear-mpp")
    assert proc.returncode == 0 and f"removed {sidecar}" in proc.stdout and not sidecar.exists()
    assert "shown in pixels; save one with --set-mpp F" in proc.stdout
    assert "352.8 µm/px" in proc.stderr


@pytest.mark.parametrize("bad", ["0", "-1", "72", "abc"])
def test_info_set_mpp_refuses_bad_values(dpi72, bad):
    proc = run_cli("info", str(dpi72), f"--set-mpp={bad}")
    assert proc.returncode == 2
    assert "`--set-mpp` must be a number in 0.05–50 µm/px" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not mpp_choice_path(dpi72).exists()


def test_scale_commands_take_mpp():
    from napari_histo.cli import build_parser

    parser = build_parser()
    for argv in (["infer", "s.svs"], ["nuclei", "s.svs"], ["review", "s.svs"],
                 ["cohort", "s.svs"], ["evaluate", "a", "b"]):  # fmt: skip
        assert parser.parse_args([*argv, "--mpp", "0.5"]).mpp in (0.5, "0.5")
    with pytest.raises(SystemExit):
        parser.parse_args(["info", "s.svs", "--set-mpp", "0.5", "--clear-mpp"])
