"""Shared fixtures: real slide files written to temporary directories."""

from __future__ import annotations

import importlib.util
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.slides import textured_rgb, write_aperio_svs, write_generic_tiff

DATA = Path(__file__).parent / "data"

# pytest-qt picks its own binding (PyQt6 before PyQt5 when both are installed) unless
# told; napari goes through qtpy, which follows QT_API (`make test QT=pyqt6`). One
# binding for both, set before pytest-qt configures itself.
os.environ.setdefault("PYTEST_QT_API", os.environ.get("QT_API", "pyqt5"))

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays
# ignored in every child: the Ctrl-C tests' CLI processes would never see theirs.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def cmu_svs() -> Path:
    """Real Aperio H&E slide CMU-1-Small-Region (CC0), one level, mpp 0.499."""
    path = DATA / "cmu_small_region.svs"
    assert path.is_file(), f"missing test data {path}"
    return path


@pytest.fixture(scope="session")
def small_svs(tmp_path_factory) -> Path:
    """Aperio-style SVS, 3000 x 2000 px, levels 1/4, 256 px JPEG tiles, mpp 0.25."""
    path = tmp_path_factory.mktemp("svs") / "small.svs"
    write_aperio_svs(path, textured_rgb(2000, 3000, seed=1), levels=2)
    return path


@pytest.fixture(scope="session")
def generic_tiff(tmp_path_factory) -> Path:
    """Plain tiled pyramidal TIFF (OpenSlide generic-tiff), 2600 x 1900, no mpp."""
    path = tmp_path_factory.mktemp("tif") / "plain.tif"
    write_generic_tiff(path, textured_rgb(1900, 2600, seed=2), levels=3, tile=128)
    return path


@pytest.fixture(scope="session")
def wide_tiff(tmp_path_factory) -> Path:
    """Single-level tiled TIFF 9000 x 2500 px with mpp 0.5: needs synthetic levels."""
    path = tmp_path_factory.mktemp("wide") / "wide.tif"
    image = textured_rgb(2500, 9000, seed=3)
    write_generic_tiff(path, image, levels=1, tile=256, mpp=0.5)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def load_script():
    """``load_script("gpu_train_nuclei")``: a module of scripts/ (not a package), by path."""

    def load(name: str):
        path = Path(__file__).parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
