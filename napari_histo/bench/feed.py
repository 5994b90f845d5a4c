"""``bench feed``: how fast the engine feeds a model, against a plain parallel decode.

Both read the same tiles of the same slide with the same number of threads:

* engine: :func:`napari_histo.inference.engine.infer_slide` with a *null*
  ensemble (members that return zeros at once), so everything but the model is
  measured: reading, decoding, area averaging, batching, stitching and the zarr
  store;
* plain decode: a thread pool calling the engine's own tile reader (OpenSlide
  or the direct JPEG path, then the area average) on every tile, results
  dropped.

``feed_ratio`` is engine tiles/s over plain-decode tiles/s (1.0: the engine adds
nothing). ``decode_mpx_s_per_core`` is the slide pixels the plain decode reads
per second per reader thread: what one CPU core can feed a GPU.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from napari_histo.inference.engine import (
    EngineConfig,
    default_read_threads,
    execute_inference,
    plan_inference,
    run,
    select_device,
    tile_reader,
)
from napari_histo.models import LoadedModel, latest_cards, read_card

__all__ = ["bench_feed"]


class NullModel(torch.nn.Module):
    """Zeros of the right shape, at once: a model that costs nothing."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((x.shape[0], self.classes, x.shape[-2], x.shape[-1]))


def _null_members() -> list[LoadedModel]:
    """The default ensemble's cards with null models (no weights are read)."""
    cards = list(latest_cards().values())
    if not cards:
        raise FileNotFoundError("no model cards in napari_histo/resources/models")
    members = []
    for path in cards:
        card = read_card(path)
        members.append(LoadedModel(model=NullModel(card.num_classes), card=card, card_path=path))
    return members


def _plain_decode(path: Path, members, threads: int) -> tuple[float, int, float]:
    """Seconds, tiles and slide megapixels of reading every planned tile in a pool."""
    from napari_histo.io.slide import Slide

    with tempfile.TemporaryDirectory() as out:
        plan = plan_inference(path, members, config=EngineConfig(device="cpu"), out_dir=out)
    todo = plan.todo.tolist()
    with Slide(path) as slide:
        read = tile_reader(slide, plan.grid)
        level = slide.best_level_for_downsample(plan.grid.scale)
        side = round(plan.grid.tile_px * plan.grid.scale / slide.level_downsamples[level])
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(read, todo[: 2 * threads]))  # warm-up: handles, caches
            t0 = time.perf_counter()
            for _ in pool.map(read, todo):
                pass
            seconds = time.perf_counter() - t0
    return seconds, len(todo), len(todo) * side * side / 1e6


def bench_feed(*, quick: bool = False, slide: str | None = None) -> dict[str, Any]:
    """Run the feed benchmark; see the module docstring."""
    from napari_histo.bench import bench_slide

    path = Path(slide) if slide else bench_slide(16384 if quick else 32768, seed=2)
    members = _null_members()
    device = select_device("cpu")
    threads = default_read_threads(device)
    config = EngineConfig(device="cpu", read_threads=threads)
    decode_s, tiles, mpx = _plain_decode(path, members, threads)
    with tempfile.TemporaryDirectory() as out:
        plan = plan_inference(path, members, config=config, out_dir=out)  # not timed, as above
        t0 = time.perf_counter()
        result = run(execute_inference(plan))
        engine_s = time.perf_counter() - t0
    return {
        "slide": str(path),
        "read_threads": threads,
        "tiles": tiles,
        "engine_tiles_s": round(result.tiles_run / engine_s, 2),
        "decode_tiles_s": round(tiles / decode_s, 2),
        "feed_ratio": round(decode_s / engine_s * result.tiles_run / max(tiles, 1), 3),
        "decode_mpx_s": round(mpx / decode_s, 2),
        "decode_mpx_s_per_core": round(mpx / decode_s / threads, 2),
        "engine_s": round(engine_s, 3),
        "decode_s": round(decode_s, 3),
    }
