"""The core (io, tissue, tiling, inference, training, models, nuclei, annotations,
live, CLI) imports neither Qt nor napari, so it runs from scripts, CLI and workers
without a display. Every module is checked except the GUI ones listed here."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import napari_histo

# Modules that are allowed to import napari/Qt: the views, the napari-driven
# benchmarks, the demo and the sample-data hook (which returns napari layer data).
GUI_PREFIXES = (
    "napari_histo.widgets",
    "napari_histo.demo",
    "napari_histo.plugin.sample_data",
    "napari_histo.bench.",
)


def core_modules() -> list[str]:
    names = [
        info.name
        for info in pkgutil.walk_packages(napari_histo.__path__, prefix="napari_histo.")
        if not info.name.startswith(GUI_PREFIXES)
    ]
    return sorted(names)


def test_core_module_list_is_complete():
    core = core_modules()
    for name in (
        "napari_histo.io.slide", "napari_histo.io.store", "napari_histo.inference.engine",
        "napari_histo.training.finetune", "napari_histo.nuclei.store",
        "napari_histo.live.controller", "napari_histo.annotations.layers",
        "napari_histo.plugin.writer", "napari_histo.frames", "napari_histo.paths",
        "napari_histo.cli",
    ):
        assert name in core


def test_core_imports_no_gui():
    code = (
        "import importlib, sys\n"
        f"for name in {core_modules()!r}: importlib.import_module(name)\n"
        "gui = {'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'magicgui', 'vispy'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & gui))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
