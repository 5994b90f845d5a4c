"""Both Qt bindings: PyQt5 (default) and PyQt6, chosen by QT_API; no PyQt5 warning on PyQt6."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import sys

import napari
from napari.utils.notifications import notification_manager
from qtpy.QtWidgets import QApplication
import qtpy

viewer = napari.Viewer(show=True)
viewer.open(sys.argv[1], plugin="napari-histo")
QApplication.processEvents()
warned = any("PyQt5 backend is deprecated" in str(n.message) for n in notification_manager.records)
print(qtpy.API_NAME, warned, len(viewer.layers))
viewer.close()
"""


@pytest.mark.parametrize(
    ("api", "name", "warned"), [("pyqt6", "PyQt6", False), ("pyqt5", "PyQt5", True)]
)
def test_napari_runs_on_the_binding_qt_api_names(api, name, warned, cmu_svs):
    env = {**os.environ, "QT_API": api}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(cmu_svs)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-3:] == [name, str(warned), "1"], proc.stdout
