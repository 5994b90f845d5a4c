#!/usr/bin/env bash
# The prepared device run (one call on a GPU machine lent by the `device` tool):
#   run(command="bash scripts/gpu_bench.sh", carry=[".whl"])
# Installs the carried wheels (openslide, zarr, dask, imagecodecs, ...) beside the
# image's torch, then: GPU sweep, `bench infer` on CUDA (full) and on the CPU
# cores of the same machine (quick), `bench feed` and the engine/ensemble tests on CUDA.
# `bench infer`'s efficiency and speedup_vs_naive are those of the default tiling
# (large tiles; 4096-px blocks, one piece per block on a GPU), patch_* the patch
# engine's, with compute_per_output_px, dice_delta_vs_blend, large_speedup_vs_patch.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 NAPARI_HISTO_CACHE=/tmp/histo-cache
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, openslide, zarr, dask; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'openslide', openslide.__library_version__, 'zarr', zarr.__version__, 'cpus', __import__('os').cpu_count())" || exit 1
step() { echo "== $1 ($(date +%T))"; }
step "bench infer, cuda, full"
timeout 240 python3 -m napari_histo.cli bench infer --device cuda --json | tee "$OUT/infer_cuda.json"
step "gpu sweep"
timeout 120 python3 scripts/gpu_sweep.py cuda | tee "$OUT/sweep_cuda.json"
step "bench infer, cpu (16 cores), quick"
timeout 120 python3 -m napari_histo.cli bench infer --device cpu --quick --json | tee "$OUT/infer_cpu_quick.json"
step "bench feed, quick (host side: null model vs plain decode)"
timeout 60 python3 -m napari_histo.cli bench feed --quick --json | tee "$OUT/feed_quick.json"
step "engine + ensemble tests on cuda"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_ensemble.py 2>&1 | tail -25 | tee "$OUT/pytest_cuda.txt"
step "done"
