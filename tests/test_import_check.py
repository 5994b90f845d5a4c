"""Import hygiene, so `make test` fails on a new cycle or a new upward import.

* ``../shared/tools/import_check.py`` (beside the clone, also in CI, read-only):
  no import cycle between modules, and every module imports alone.
* Imports run one way, through the layers of docs/architecture.md
  (base -> io -> models -> inference / nuclei -> live / training -> plugin / widgets
  -> cli / demo / bench); models never import io.
* A ``_private`` name is imported only inside its own package's ``_common`` users.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "napari_histo"
TOOL = REPO.parent / "shared" / "tools" / "import_check.py"

needs_tool = pytest.mark.skipif(not TOOL.is_file(), reason=f"{TOOL} not found")

#: Module prefixes by layer, lowest first. A module imports only its own layer or lower ones.
LAYERS: list[tuple[str, ...]] = [
    # base: no napari_histo imports beyond this layer
    ("napari_histo", "napari_histo.errors", "napari_histo.paths", "napari_histo.frames",
     "napari_histo._atomic", "napari_histo._progress", "napari_histo.generators",
     "napari_histo.resample",
     "napari_histo.annotations.model",
     "napari_histo.annotations.polygons", "napari_histo.synthetic", "napari_histo.metrics",
     "napari_histo.tiling"),
    ("napari_histo.io", "napari_histo.tissue"),
    ("napari_histo.models",),
    ("napari_histo.inference", "napari_histo.nuclei", "napari_histo.annotations"),
    ("napari_histo.live", "napari_histo.training", "napari_histo.review", "napari_histo.analysis",
     "napari_histo.evaluate"),
    ("napari_histo.plugin", "napari_histo.widgets"),
    ("napari_histo.cli", "napari_histo.demo", "napari_histo.bench"),
]  # fmt: skip


def _load_tool():
    spec = importlib.util.spec_from_file_location("import_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # shared/ is read-only
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix matching `module`."""
    best, depth = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = index, prefix.count(".")
    assert best is not None, f"{module} is in no layer of LAYERS: add it"
    return best


@needs_tool
def test_no_import_cycles():
    proc = subprocess.run(
        [sys.executable, str(TOOL), str(PACKAGE), "--cycles-only"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("0 import cycles")


def _import_alone(module: str) -> str | None:
    """None if ``python -c "import module"`` succeeds in a fresh interpreter, else its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or ["?"])[-1][:160]


@pytest.mark.slow
@needs_tool
def test_every_module_imports_alone():
    """The tool's import-alone check (one fresh interpreter per module), its modules
    spread over the cores: run one after another it was the suite's slowest test."""
    from concurrent.futures import ThreadPoolExecutor

    modules = sorted(_load_tool().graph(PACKAGE))
    assert len(modules) > 100  # the package, not an empty folder
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:  # torch each
        failures = dict(zip(modules, pool.map(_import_alone, modules), strict=True))
    failed = [f"{m}: {line}" for m, line in failures.items() if line is not None]
    assert not failed, "modules that fail to import alone:\n" + "\n".join(failed)


@needs_tool
def test_imports_run_one_way():
    edges = _load_tool().graph(PACKAGE)
    upward = [
        f"{a} (layer {layer_of(a)}) -> {b} (layer {layer_of(b)})"
        for a in sorted(edges)
        for b in sorted(edges[a])
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)
    models = [a for a in edges if a.startswith("napari_histo.models")]
    into_io = [f"{a} -> {b}" for a in models for b in edges[a] if b.startswith("napari_histo.io")]
    assert not into_io, into_io


def test_private_names_stay_home():
    """``from M import _name`` only from M's own package ``_common`` (or M itself)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
                continue
            source = node.module
            if not source.startswith("napari_histo") or source == module:
                continue
            package = source.rpartition(".")[0]
            if source.endswith("._common") and module.startswith(package + "."):
                continue
            found += [f"{module}: {source}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]  # fmt: skip
    assert not found, "private names used outside their module:\n" + "\n".join(found)
