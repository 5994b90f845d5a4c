"""The core (io, tissue, tiling, inference, training, models, nuclei, annotations)
imports neither Qt nor napari, so it runs from scripts, CLI and workers without a display."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "napari_histo.io.slide", "napari_histo.io.pyramid", "napari_histo.io.store",
    "napari_histo.io.annotations", "napari_histo.tissue", "napari_histo.tiling",
    "napari_histo.inference.engine", "napari_histo.training", "napari_histo.training.finetune",
    "napari_histo.models", "napari_histo.nuclei", "napari_histo.nuclei_features",
    "napari_histo.annotations", "napari_histo.synthetic", "napari_histo.live", "napari_histo.cli",
]


def test_core_imports_no_gui():
    code = (
        "import importlib, sys\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        "gui = {'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6', 'magicgui', 'vispy'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & gui))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
