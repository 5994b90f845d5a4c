"""Opening a 100 000² slide keeps memory flat (measured in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from napari_histo._malloc import MALLOC_ENV
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


def probe(*args, code: str = PROBE, env: dict | None = None) -> dict:
    """The last JSON line `code` prints in a fresh interpreter given `args`."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
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


MALLOC_PROBE = """
import ctypes, json, resource
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages, as counted below
import torch
from napari_histo._malloc import tune_malloc

net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(16, 2, 1)).eval()
x = torch.randn(1, 3, 768, 768)  # 38 MB activations: above glibc's mmap threshold

def faults(repeats=4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        for _ in range(repeats):
            torch.softmax(net(x), 1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults(1)
untuned = faults()
tuned = tune_malloc()
faults(1)
print(json.dumps({"tuned": tuned, "again": tune_malloc(), "untuned": untuned,
                  "after": faults()}))
"""


#: 4 KiB pages of one of MALLOC_PROBE's activations (768² px, 16 float32 channels).
ACTIVATION_PAGES = 768 * 768 * 16 * 4 // 4096


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_tune_malloc_reuses_large_tensors_instead_of_faulting_them_in():
    result = probe(code=MALLOC_PROBE)
    assert result["tuned"] and result["again"]
    # mmapped, faulted in and unmapped each pass
    assert result["untuned"] > 16 * ACTIVATION_PAGES
    assert result["after"] < result["untuned"] / 8  # kept in the heap (about one activation)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_malloc_env_default_keeps_glibc_settings():
    result = probe(code=MALLOC_PROBE, env={**os.environ, MALLOC_ENV: "default"})
    assert not result["tuned"]
    assert result["after"] > 16 * ACTIVATION_PAGES  # still faulted in each pass


#: Probe lines leaving ~180 MB freed between live arrays in the heap (`arrays` kept).
FRAGMENT_HEAP = """
arrays = [np.ones(12_000) for _ in range(3000)]  # 96 KB each: from the heap
del arrays[1::3], arrays[1::2]  # two of every three freed, between kept ones
"""

TRIM_PROBE = (
    """
import json, psutil
import numpy as np
from napari_histo._malloc import release_free_memory

proc = psutil.Process()
"""
    + FRAGMENT_HEAP
    + """
before = proc.memory_info().rss
release_free_memory()
print(json.dumps({"drop_mb": (before - proc.memory_info().rss) / 2**20}))
"""
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_release_free_memory_hands_freed_heap_pages_back():
    result = probe(code=TRIM_PROBE)
    assert result["drop_mb"] > 100  # of the ~180 MB freed between live arrays


CAP_PROBE = (
    """
import json, psutil
import numpy as np
from napari_histo._malloc import RssCap

proc = psutil.Process()
cap = RssCap(slack_bytes=64 << 20)
cap.after_unit()  # the first unit: sets the level, never trims
"""
    + FRAGMENT_HEAP
    + """
before = proc.memory_info().rss
cap.after_unit()  # ~280 MB above the level: hands the free pages back
after = proc.memory_info().rss
cap.after_unit()  # fresh again: sets the level, no trim
print(json.dumps({"drop_mb": (before - after) / 2**20, "trims": cap.trims}))
"""
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_rss_cap_hands_back_the_free_heap_once_the_run_grows_past_its_level():
    result = probe(code=CAP_PROBE)
    assert result["trims"] == 1
    assert result["drop_mb"] > 100  # of the ~180 MB freed between live arrays


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_rss_cap_trims_only_past_the_level_plus_slack(monkeypatch):
    import napari_histo._malloc as malloc

    trims = []
    monkeypatch.setattr(malloc, "release_free_memory", lambda: trims.append(1))
    sizes = iter([1000, 1100, 1300, 900, 1200, 1500])
    monkeypatch.setattr(malloc, "resident_bytes", lambda: next(sizes) << 20)
    cap = malloc.RssCap(slack_bytes=256 << 20)
    seen = []
    for _ in range(6):
        cap.after_unit()
        seen.append(cap.trims)
    # 1000: the level; 1100: within; 1300: past 1256, trims; 900: the first unit
    # after a trim, the level stays the larger 1000; 1200: within; 1500: trims.
    assert seen == [0, 0, 1, 1, 1, 2]
    assert cap.level == 1000 << 20 and len(trims) == 2


def test_malloc_helpers_do_nothing_without_glibc(monkeypatch):
    import napari_histo._malloc as malloc

    def no_glibc(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.delenv(MALLOC_ENV, raising=False)
    monkeypatch.setattr(malloc.ctypes, "CDLL", no_glibc)
    malloc._libc.cache_clear()
    try:
        assert malloc._apply() is False
        assert malloc.release_free_memory() is None
        cap = malloc.RssCap()
        cap.after_unit()
        cap.after_unit()
        assert cap.trims == 0
    finally:
        malloc._libc.cache_clear()
