"""The package works installed from its wheel, as napari users install plugins.

Builds the wheel (``pip wheel --no-deps --no-build-isolation``: hatchling from the
dev extras, no network), installs it without ``-e`` into a fresh virtualenv that
borrows torch, napari & co. from this environment, checks that the wheel's copy
is the one imported and that the default models ship inside it, then runs
``napari-histo synth``, ``info`` and ``infer`` (default ensemble) from there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("hatchling") is None,
        reason="hatchling (dev extra) is needed to build the wheel without network",
    ),
]


def _run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_wheel_install_runs_cli(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--quiet", "-w", str(wheels), str(REPO)], dict(os.environ), tmp_path)  # fmt: skip
    (wheel,) = wheels.glob("napari_histo-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env, tmp_path)
    python = venv / "bin" / "python"
    # Borrow this environment's packages (torch, napari, ...) by path only: a plain
    # path line runs none of its .pth files, so an editable napari_histo stays out.
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([str(python), "-c", purelib], env, tmp_path).strip())
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_borrowed_env.pth").write_text("\n".join(sorted(here)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "--quiet", str(wheel)], env, tmp_path)  # fmt: skip

    probe = (
        "import json, napari_histo\n"
        "from napari_histo.models import list_cards\n"
        "from napari_histo.paths import default_models_dir\n"
        "print(json.dumps({'file': napari_histo.__file__, 'models': str(default_models_dir()),"
        " 'cards': [p.stem for p in list_cards()]}))\n"
    )
    found = json.loads(_run([str(python), "-c", probe], env, tmp_path))
    assert Path(found["file"]).is_relative_to(venv), found  # the wheel's copy, not the checkout
    assert Path(found["models"]).is_relative_to(venv)
    names = {stem.rsplit("-", 1)[0] for stem in found["cards"]}
    assert {"deeplabv3plus", "denseunet", "resunet", "hovernet"} <= names, found["cards"]

    cli = str(venv / "bin" / "napari-histo")
    slide = tmp_path / "w.svs"
    env["NAPARI_HISTO_MODELS"] = str(tmp_path / "user-models")  # no user models: defaults only
    env["NAPARI_HISTO_CONFIG"] = str(tmp_path / "config")
    _run([cli, "synth", str(slide), "--size", "2048", "--seed", "5"], env, tmp_path)
    info = json.loads(_run([cli, "info", "--json", str(slide)], env, tmp_path))
    assert info["width"] == 2048 and info["mpp_x"] == 0.25
    out = _run([cli, "infer", str(slide), "--out", str(tmp_path), "--quiet"], env, tmp_path)
    assert "done:" in out and (tmp_path / "w.svs.histo.zarr").is_dir()
