"""Opening a 100 000² slide keeps memory flat (measured in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from napari_histo.bench.mosaic import write_mosaic_slide
from napari_histo.synthetic import write_synthetic_slide

PROBE = """
import json, sys, psutil
import numpy as np
proc = psutil.Process()
from napari_histo.io.slide import Slide
from napari_histo.io.pyramid import open_pyramid
import dask.array
before = proc.memory_info().rss
slide = Slide(sys.argv[1])
pyramid = open_pyramid(slide)
opened = proc.memory_info().rss
top = np.asarray(pyramid.levels[-1])
h, w = pyramid.levels[0].shape[:2]
view = np.asarray(pyramid.levels[0][h // 2 : h // 2 + 1080, w // 2 : w // 2 + 1920])
after = proc.memory_info().rss
print(json.dumps({"open_mb": (opened - before) / 2**20, "total_mb": (after - before) / 2**20,
                  "levels": [list(a.shape) for a in pyramid.levels], "top_std": float(top.std()),
                  "view_shape": list(view.shape)}))
"""


@pytest.fixture(scope="module")
def slide_100k(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    source = write_synthetic_slide(root / "source.svs", 4096, seed=11, workers=1)
    return write_mosaic_slide(root / "big.svs", source.path, 100_000, tissue_fraction=0.1)


def probe(path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_open_100k_slide_keeps_rss_small(slide_100k):
    result = probe(slide_100k)
    assert result["levels"][0] == [100_000, 100_000, 3]
    assert result["view_shape"] == [1080, 1920, 3]
    assert result["top_std"] > 5  # real pixels came back
    # Open = tag tables + task graphs only; plus one 1562² top level and one viewport.
    assert result["open_mb"] < 100, result
    assert result["total_mb"] < 250, result
