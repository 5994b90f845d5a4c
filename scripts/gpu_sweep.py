"""GPU sweep for the device run (scripts/gpu_bench.sh): model-only and engine
throughput of the default ensemble by batch size and TTA. Prints one JSON line."""

from __future__ import annotations

import json
import sys
import tempfile
import time

from napari_histo.bench import bench_slide
from napari_histo.bench.infer import _model_only
from napari_histo.inference.engine import EngineConfig, infer_slide, run, select_device
from napari_histo.inference.ensemble import tta_transforms
from napari_histo.models import latest_cards, load_model


def main() -> None:
    device = select_device(sys.argv[1] if len(sys.argv) > 1 else "auto")
    members = [load_model(c) for c in latest_cards().values()]
    out: dict = {"device": str(device), "model_only_tiles_s": {}, "engine_tiles_s": {}}
    for tta in (1, 8):
        for batch in (8, 16, 32, 64, 128):
            transforms = tta_transforms(tta)
            _model_only(members, 2 * batch, batch, transforms, device)
            seconds = _model_only(members, 512, batch, transforms, device)
            out["model_only_tiles_s"][f"tta{tta}_b{batch}"] = round(512 / seconds, 1)
    slide = bench_slide(32768, seed=2)
    for tta, batch, threads in ((1, 16, None), (1, 64, None), (1, 64, 15), (8, 64, None)):
        config = EngineConfig(tta=tta, device=str(device), batch_size=batch, read_threads=threads)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = run(infer_slide(slide, members, config=config, out_dir=tmp))
            seconds = time.perf_counter() - start
        key = f"tta{tta}_b{batch}_t{threads or 'auto'}"
        out["engine_tiles_s"][key] = round(result.tiles_run / seconds, 1)
        out["engine_tiles"] = result.tiles_run
    print(json.dumps(out))


if __name__ == "__main__":
    main()
