"""The viewer process never imports torch: models run in the worker process.

torch costs the viewer about 1 s at start and 180 MB it never uses when every
model runs in the dock's worker process (#15). Checked in a fresh interpreter
(pytest itself has torch loaded): all six docks open on a real slide, a viewport
run and a nuclei run finish through the worker, and torch is still not imported.
Needs a display (xvfb-run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import napari
    from qtpy.QtWidgets import QApplication

    def wait(busy, limit=180):
        t = time.monotonic()
        while busy() and time.monotonic() - t < limit:
            QApplication.processEvents()
            time.sleep(0.02)

    seen = {}
    viewer = napari.Viewer(show=False)
    viewer.open(sys.argv[1], plugin="napari-histo")
    docks = {}
    for name in ("Tumor inference", "Nuclei", "Retrain", "Annotate",
                 "Slide measurements", "Review"):
        _, docks[name] = viewer.window.add_plugin_dock_widget("napari-histo", name)
    tumor, nuclei = docks["Tumor inference"], docks["Nuclei"]
    wait(lambda: tumor.settling)  # models loaded in the worker, staining checked
    seen["settled"] = not tumor.settling and tumor.ood_score is not None
    seen["docks"] = "torch" in sys.modules
    viewer.camera.zoom *= 4
    tumor.run()
    wait(lambda: tumor.busy)
    nuclei.run_on_view()
    wait(lambda: nuclei.busy)
    seen["runs"] = "torch" in sys.modules
    # What the Retrain dock's Train and Compare import, and the progress its worker sends.
    import pickle
    from napari_histo.training import retrain
    from napari_histo.training.progress import TrainProgress
    from napari_histo.training.settings import FinetuneConfig
    retrain.steps_per_epoch(FinetuneConfig())
    pickle.loads(pickle.dumps(("resunet", TrainProgress(1, 9, 0.5, 1.0, None))))
    seen["retrain"] = "torch" in sys.modules
    seen["worker"] = tumor.worker_pid is not None
    seen["layers"] = [layer.name for layer in viewer.layers]
    tumor.shutdown()
    nuclei.shutdown()
    viewer.close()
    print(json.dumps(seen))
    """
)


def test_docks_and_worker_runs_leave_the_viewer_without_torch(cmu_svs, tmp_path):
    slide = tmp_path / cmu_svs.name  # the docks write their results beside it
    shutil.copy(cmu_svs, slide)
    env = dict(os.environ, NAPARI_HISTO_CONFIG=str(tmp_path / "config"))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(slide)],
        capture_output=True, text=True, timeout=400, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["worker"], "the docks did not start a worker process"
    assert seen["settled"], "the dock's slide preparation or staining check did not end"
    assert "tumor probability" in seen["layers"] and "nuclei" in seen["layers"], seen["layers"]
    assert seen["docks"] is False, "opening the docks imported torch"
    assert seen["runs"] is False, "a worker run imported torch into the viewer"
    assert seen["retrain"] is False, "the Retrain dock's code or progress imported torch"
