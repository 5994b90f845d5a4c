"""Train learned-nuclei candidates on a GPU (the prepared run for the `device` tool).

The GPU machine has torch but not OpenSlide, zarr or imagecodecs, and only the
repository travels there, so the training tiles go as a lossless cache:

    # here: MoNuSeg training tiles + synthetic slides -> .devcache (WebP lossless,
    # labels in an .npz; checked to decode bit-exact)
    python scripts/gpu_train_nuclei.py pack ../shared/data/real .devcache
    # there (CUDA): one candidate per process
    python3 scripts/gpu_train_nuclei.py train .devcache OUT --version 2.2a --width 12 \
        --init hovernet-2.1.json --lr 5e-4 --minutes 8
    # here: score every card in OUT (validation, held-out, PanNuke, synthetic)
    python scripts/gpu_train_nuclei.py score OUT ../shared/data/real

Batches are prepared by DataLoader workers; batch ``k`` depends only on the seed
and ``k`` (its own numpy and torch generators), so the data a step sees does not
depend on the worker count. Batches and learning rate are those of
:func:`napari_histo.training.real_nuclei.train_real_nuclei` (``training_batch``,
``lr_factor``), the rate over the share of `steps` or of `minutes` done,
whichever is further.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

IO_MODULES = ("openslide", "zarr", "dask", "dask.array", "imagecodecs", "numcodecs")


def _stub_io_modules() -> None:
    """Let the training modules import where the slide readers are not installed.

    The code run here (patch sampling, augmentation, loss) never calls them.
    """

    class _Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (Exception,), {})

    for name in IO_MODULES:
        try:
            if os.environ.get("HISTO_STUB_IO"):
                raise ImportError
            __import__(name)
        except ImportError:
            sys.modules[name] = _Stub(name)


# ----------------------------------------------------------------------------- pack


def encode_webp(rgb: np.ndarray, quality: int | None = None, name: str = "") -> bytes:
    """`rgb` as WebP: lossless (checked to decode as it was) or at `quality`."""
    from PIL import Image

    buffer = io.BytesIO()
    if quality is None:
        Image.fromarray(rgb).save(buffer, format="WEBP", lossless=True, method=4)
    else:
        Image.fromarray(rgb).save(buffer, format="WEBP", quality=quality, method=4)
    data = buffer.getvalue()
    if quality is None and not np.array_equal(decode_webp(data), rgb):
        raise SystemExit(f"{name}: WebP round trip is not exact")
    return data


def decode_webp(data: bytes) -> np.ndarray:
    """RGB uint8 of a WebP file's bytes (writable: batches become tensors)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def pack(data_dir: str, cache: str) -> None:
    from napari_histo.training.nuclei import load_synthetic_nuclei
    from napari_histo.training.real_nuclei import RealNucleiRecipe, load_monuseg

    recipe = RealNucleiRecipe()
    out = Path(cache)
    out.mkdir(parents=True, exist_ok=True)
    tiles = [(t.name, t.rgb, t.labels, t.mpp) for t in load_monuseg(data_dir, "train")]
    with tempfile.TemporaryDirectory(prefix="histo-pack-") as work:  # the slides stay here
        synthetic = load_synthetic_nuclei(recipe.synthetic_seeds, recipe.slide_px, 0.25, work)
    tiles += [
        (f"synthetic-{seed}", rgb, labels, 0.25)
        for seed, (rgb, labels) in zip(recipe.synthetic_seeds, synthetic, strict=True)
    ]
    index, labels = [], {}
    for name, rgb, lab, mpp in tiles:
        (out / f"{name}.webp").write_bytes(encode_webp(rgb, name=name))
        labels[name] = lab.astype(np.int32)
        index.append({"name": name, "mpp": mpp, "synthetic": name.startswith("synthetic-")})
    np.savez_compressed(out / "labels.npz", **labels)
    (out / "tiles.json").write_text(json.dumps(index, indent=1))
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"packed {len(index)} tiles into {out} ({size / 1e6:.1f} MB)")


def _load_cache(cache: str):
    root = Path(cache)
    index = json.loads((root / "tiles.json").read_text())
    labels = np.load(root / "labels.npz", allow_pickle=False)
    real, synthetic = [], []
    for entry in index:
        rgb = decode_webp((root / f"{entry['name']}.webp").read_bytes())
        item = (rgb, labels[entry["name"]], float(entry["mpp"]))
        (synthetic if entry["synthetic"] else real).append(item)
    return real, synthetic


# ---------------------------------------------------------------------------- train


class _Batches:
    """Batch ``k`` of the run, from generators seeded by ``(seed, k)`` alone."""

    def __init__(self, recipe, real, synthetic):
        from napari_histo.training.real_nuclei import _ScaledSampler

        self.recipe = recipe
        rng = np.random.default_rng(recipe.seed)
        r = recipe
        self.real = _ScaledSampler(real, r.patch_px, r.model_mpp, r.scale_jitter, rng)
        self.synthetic = _ScaledSampler(
            synthetic or real, r.patch_px, r.model_mpp, r.scale_jitter, rng, 0.7
        )
        self.n_synthetic = r.synthetic_per_batch if synthetic else 0

    def __len__(self) -> int:
        return self.recipe.steps

    def __getitem__(self, k: int):
        import torch

        from napari_histo.training.real_nuclei import training_batch

        r = self.recipe
        rng = np.random.default_rng([r.seed, k])
        generator = torch.Generator().manual_seed(r.seed * 1_000_003 + k)
        self.real.rng = self.synthetic.rng = rng
        return training_batch(r, self.real, self.synthetic, self.n_synthetic, generator, rng)


def budgeted_steps(steps: int, minutes: float, optimiser, lr: float):
    """Yield steps 1, 2, ... until `steps` are done or `minutes` have passed, each
    with the learning rate at the share of the run done (of the steps or the wall
    time, whichever is further; ``lr_factor``'s warm-up and cosine)."""
    from napari_histo.training.real_nuclei import lr_factor

    start = time.perf_counter()
    for step in range(1, steps + 1):
        done = max((step - 1) / steps, (time.perf_counter() - start) / (60 * minutes))
        if done >= 1:
            return
        for group in optimiser.param_groups:
            group["lr"] = lr * lr_factor(done)
        yield step


def progress_line(name: str, step: int, loss: float, optimiser, start: float) -> str:
    """``<name> step <n> loss <l> lr <lr> <x> steps/s`` (every 200 steps in the log)."""
    lr = optimiser.param_groups[0]["lr"]
    rate = step / (time.perf_counter() - start)
    return f"{name} step {step} loss {loss:.3f} lr {lr:.2e} {rate:.1f} steps/s"


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def train(args) -> Path:
    _stub_io_modules()
    import torch

    from napari_histo.models import build_model, save_model
    from napari_histo.training.nuclei import hovernet_loss
    from napari_histo.training.real_nuclei import (
        RealNucleiRecipe,
        _normalisation,
        real_nuclei_card,
    )
    from napari_histo.training.trainer import bundled_start

    recipe = RealNucleiRecipe(
        seed=args.seed, steps=args.steps, batch_size=args.batch, lr=args.lr,
        width=args.width, depth=args.depth, patch_px=args.patch, init_card=args.init,
        version=args.version,
    )  # fmt: skip
    real, synthetic = _load_cache(args.cache)
    device = torch.device(args.device)
    torch.manual_seed(recipe.seed)
    model = build_model("hovernet", {"width": recipe.width, "depth": recipe.depth})
    if recipe.init_card is not None:
        config = {"width": recipe.width, "depth": recipe.depth, "norm": "batch"}
        start = bundled_start(recipe.init_card, config)
        model.load_state_dict(start.model.state_dict())
        normalisation = start.card.normalisation
    else:
        normalisation = _normalisation(real + synthetic)
    loader = torch.utils.data.DataLoader(
        _Batches(recipe, real, synthetic), batch_size=None, shuffle=False,
        num_workers=args.workers, prefetch_factor=4 if args.workers else None,
        worker_init_fn=_worker_init if args.workers else None,
    )  # fmt: skip
    batches = iter(loader)  # workers fork before CUDA starts in this process
    model.to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    mean = torch.tensor(normalisation["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(normalisation["std"], device=device).view(1, 3, 1, 1)
    autocast = device.type if device.type == "cuda" else "cpu"
    start_time, losses, step = time.perf_counter(), [], 0
    for step in budgeted_steps(recipe.steps, args.minutes, optimiser, recipe.lr):
        x, foreground, hv = (t.to(device, non_blocking=True) for t in next(batches))
        with torch.autocast(autocast, dtype=torch.bfloat16):
            output = model((x - mean) / std)
        loss = hovernet_loss(output.float(), foreground, hv)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 200 == 0 or step == 1:
            losses.append(float(loss.detach()))
            print(
                progress_line(recipe.version, step, losses[-1], optimiser, start_time), flush=True
            )
    seconds = time.perf_counter() - start_time
    del batches
    model.cpu().eval()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    card = real_nuclei_card(recipe, normalisation)
    card = dataclasses.replace(
        card,
        notes=(
            f"Trained by scripts/gpu_train_nuclei.py (seed {recipe.seed}) on {where}: "
            f"{step} steps in {seconds:.0f} s (learning rate over the share of "
            f"{args.minutes} min or {recipe.steps} steps done, whichever further; "
            f"{args.workers} batch workers, bfloat16 autocast, torch {torch.__version__}); "
            f"loss at the end {np.mean(losses[-5:]):.3f}. Recipe: {recipe}. Training tiles: "
            f"the 12 MoNuSeg training tiles of napari_histo.training.real_nuclei_data and "
            f"synthetic seeds {list(recipe.synthetic_seeds)}, as a lossless cache. "
            f"Augmentation: as train_real_nuclei (dihedral, HED jitter, OD scaling, "
            f"colour, blur, JPEG 30-90 on {recipe.jpeg_p:.0%}, scale ±"
            f"{recipe.scale_jitter:.0%} around {recipe.model_mpp} µm/px)."
        ),
    )
    path = save_model(model, card, args.out)
    print(f"saved {path} after {step} steps, {seconds:.0f} s", flush=True)
    return path


# ---------------------------------------------------------------------------- score


def score(out_dir: str, data_dir: str) -> None:
    from napari_histo.models import load_model
    from napari_histo.training.real_ensemble import with_metrics
    from napari_histo.training.real_nuclei import score_nuclei_model

    results = {}
    for card in sorted(Path(out_dir).glob("hovernet-*.json")):
        metrics = score_nuclei_model(load_model(card), data_dir)
        with_metrics(card, metrics)
        results[card.name] = {k: round(v, 4) for k, v in metrics.items()}
        print(card.name, json.dumps(results[card.name]), flush=True)
    print(json.dumps(results))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("data_dir")
    p.add_argument("cache")
    t = sub.add_parser("train")
    t.add_argument("cache")
    t.add_argument("out")
    t.add_argument("--version", required=True)
    t.add_argument("--width", type=int, default=12)
    t.add_argument("--depth", type=int, default=3)
    t.add_argument("--patch", type=int, default=128)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--init", default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=100_000)
    t.add_argument("--minutes", type=float, default=8.0)
    t.add_argument("--workers", type=int, default=4)
    t.add_argument("--device", default="cuda")
    s = sub.add_parser("score")
    s.add_argument("out_dir")
    s.add_argument("data_dir")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.data_dir, args.cache)
    elif args.command == "train":
        train(args)
    else:
        score(args.out_dir, args.data_dir)


if __name__ == "__main__":
    main()
