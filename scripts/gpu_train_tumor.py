"""Train wider tumor-ensemble members on a GPU (the prepared run for the `device` tool).

The recipe is :func:`napari_histo.training.real_ensemble.train_real_ensemble`'s
(same sources and weights, bootstraps, augmentation, DigiPathAI + MIL loss) with
what a GPU affords and a 2-core CPU does not: wider members trained from
scratch, 256-px crops at 1 µm/px (256 µm of context) and many more steps. The
GPU machine has torch but not the slide readers, and only the repository
travels there, so the training pools go as a cache:

    # here: the training split of every real source at 1 µm/px and 200 synthetic
    # patches -> CACHE (WebP, lossless where the cache's --max-mb allows, see
    # _stages; masks in an .npz): it travels beside the tracked files (64 MiB in all)
    python scripts/gpu_train_tumor.py pack ../shared/data/real .devcache/tumor
    # there (CUDA): the three members at once, one process each (gpu_train_tumor.sh)
    python3 scripts/gpu_train_tumor.py train .devcache/tumor OUT --member 0 --minutes 7
    # here: the cards copied to out/gpu-tumor-3.0, with held-out figures per source,
    # synthetic Dice, stain reference and receptive margins (finalize_real_ensemble)
    python scripts/gpu_train_tumor.py score OUT ../shared/data/real

Batch ``k`` of a member depends only on the recipe's seed, the member and ``k``
(its own numpy and torch generators), so DataLoader workers may prepare batches
in any order. The learning rate follows the share of `steps` or of `minutes`
done, whichever is further (the nuclei GPU recipe's warm-up and cosine).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from gpu_train_nuclei import (
    _stub_io_modules,
    _worker_init,
    budgeted_steps,
    decode_webp,
    encode_webp,
    progress_line,
)

#: Wider members than v2.x (which are width 8 / 8 / 12 for the 2-core CPU), all
#: under the 25 MB a member may weigh.
GPU_MEMBERS: tuple[tuple[str, dict], ...] = (
    ("resunet", {"width": 16, "depth": 4}),
    ("denseunet", {"width": 16, "depth": 4, "layers": 2}),
    ("deeplabv3plus", {"width": 20}),  # 13 MB: under the 16 MiB a file may come back in
)


def gpu_recipe(**changes):
    """:class:`RealRecipe` for the GPU: wider members from scratch, 256-px crops."""
    from napari_histo.training.real_ensemble import RealRecipe

    base = RealRecipe(
        steps=20_000, batch_size=32, lr=1e-3, train_patch_px=256, version="3.0",
        members=GPU_MEMBERS, init_version=None, bf16=True, synthetic_patches=100,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


# ----------------------------------------------------------------------------- pack

#: What travels to the device machine in all: the tracked files and the cache (bytes).
TRAVEL_BYTES = 64 << 20
#: Left free of that for files added before the run (MB).
TRAVEL_MARGIN_MB = 1.0


def cache_budget_mb() -> float:
    """MB the cache may take: 64 MiB less the repository's tracked files and a margin."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True
    ).stdout.split(b"\0")
    paths = [root / n.decode() for n in names if n]
    tracked = sum(p.stat().st_size for p in paths if p.is_file())
    return (TRAVEL_BYTES - tracked) / 1e6 - TRAVEL_MARGIN_MB


#: Pools stored lossy first when the cache would not fit: the synthetic patches
#: (cut from JPEG-tiled slides, noisy) and the oral photos (JPEG photographs, tile
#: labels only). The expert-labelled tiles follow only when these are not enough.
LOSSY_FIRST = ("synthetic", "oral_oscc")


def _stages(names: list[str]) -> list[dict[str, int]]:
    """WebP quality per pool (missing: lossless), tried in order until the cache fits."""
    return [
        {},
        {n: 90 for n in LOSSY_FIRST},
        {n: 90 for n in names},
        {**{n: 90 for n in names}, **{n: 70 for n in LOSSY_FIRST}},
        {**{n: 80 for n in names}, **{n: 65 for n in LOSSY_FIRST}},
    ]


def pack(data_dir: str, cache: str, max_mb: float | None = None) -> None:
    """Write the GPU recipe's training pools (training split, synthetic patches) to `cache`,
    at most `max_mb` MB (default :func:`cache_budget_mb`)."""
    from napari_histo.training.real_ensemble import _normalisation, _pools
    from napari_histo.training.realdata import load_tumor_tiles

    recipe = gpu_recipe()
    tiles = load_tumor_tiles(data_dir, recipe.model_mpp, split="train")
    with tempfile.TemporaryDirectory(prefix="histo-pack-") as work:  # the slides stay here
        pools = _pools(tiles, recipe, Path(work))
    budget = cache_budget_mb() if max_mb is None else max_mb
    write_cache(pools, _normalisation(pools), cache, budget, note=repr(recipe))


def write_cache(pools, normalisation: dict, cache: str, max_mb: float, note: str = "") -> None:
    """`pools` as WebP images and an .npz of masks in `cache`, at most `max_mb` MB.

    Lossless when that fits; otherwise the first of :func:`_stages` that fits
    (lossless images are checked to decode as they were).
    """
    out = Path(cache)
    out.mkdir(parents=True, exist_ok=True)
    masks = io.BytesIO()
    arrays = {
        f"{pool.name}-{i:04d}": mask.astype(np.uint8)
        for pool in pools
        for i, mask in enumerate(pool.masks)
    }
    np.savez_compressed(masks, **arrays)
    for quality in _stages([p.name for p in pools]):
        blobs = {
            p.name: [encode_webp(im, quality.get(p.name), f"{p.name}-{i:04d}")
                     for i, im in enumerate(p.images)]
            for p in pools
        }  # fmt: skip
        sizes = {name: sum(map(len, b)) / 1e6 for name, b in blobs.items()}
        if sum(sizes.values()) + len(masks.getvalue()) / 1e6 <= max_mb:
            break
    else:
        raise SystemExit(
            f"the pools take {sum(sizes.values()):.1f} MB even at WebP quality "
            f"{min(quality.values())}-{max(quality.values())}: more than {max_mb} MB"
        )
    for old in out.glob("*.webp"):
        old.unlink()
    index = []
    for pool in pools:
        for i, data in enumerate(blobs[pool.name]):
            (out / f"{pool.name}-{i:04d}.webp").write_bytes(data)
        index.append(
            {
                "name": pool.name,
                "weight": pool.weight,
                "count": len(pool.images),
                "tile_labels": [int(v) for v in pool.tile_labels],
                "webp_quality": quality.get(pool.name),  # None: lossless
                "mb": round(sizes[pool.name], 2),
            }
        )
    (out / "masks.npz").write_bytes(masks.getvalue())
    meta = {"pools": index, "normalisation": normalisation, "recipe": note}
    (out / "pools.json").write_text(json.dumps(meta, indent=1))
    total = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"packed {sum(p['count'] for p in index)} tiles into {out} ({total:.1f} MB):")
    for entry in index:
        q = entry["webp_quality"]
        print(f"  {entry['name']}: {entry['count']} tiles, {entry['mb']} MB, "
              f"{'lossless' if q is None else f'WebP quality {q}'}")  # fmt: skip


def load_pools(cache: str):
    """The pools `pack` wrote, and their normalisation."""
    from napari_histo.training.real_ensemble import _Pool

    root = Path(cache)
    meta = json.loads((root / "pools.json").read_text())
    masks = np.load(root / "masks.npz", allow_pickle=False)
    pools = []
    for entry in meta["pools"]:
        keys = [f"{entry['name']}-{i:04d}" for i in range(entry["count"])]
        images = [decode_webp((root / f"{k}.webp").read_bytes()) for k in keys]
        pools.append(
            _Pool(entry["name"], entry["weight"], images, [masks[k] for k in keys],
                  entry["tile_labels"])
        )  # fmt: skip
    return pools, meta["normalisation"]


# ---------------------------------------------------------------------------- train


def _qualities(cache: str) -> dict[str, int | None]:
    meta = json.loads((Path(cache) / "pools.json").read_text())
    return {p["name"]: p["webp_quality"] for p in meta["pools"]}


class _Batches:
    """Member `index`'s crops of batch ``k``, drawn by generators of the seed, index and k.

    The DataLoader's workers cut the crops (numpy, JPEG artefacts); the stain,
    colour, blur and dihedral augmentation runs on the training device
    (:meth:`augment`), its draws from a generator of the same seed, index and ``k``.
    """

    def __init__(self, pools, recipe, index: int, normalisation: dict) -> None:
        from napari_histo.training.real_ensemble import _Batches as Draw
        from napari_histo.training.real_ensemble import _member_seed_strength

        self.recipe, self.normalisation = recipe, normalisation
        self.seed, strength = _member_seed_strength(recipe, index)
        self.draw = Draw(pools, recipe, self.seed, strength)  # bootstrap from the seed

    def __len__(self) -> int:
        return self.recipe.steps

    def __getitem__(self, k: int):
        self.draw.rng = np.random.default_rng([self.seed, k])
        return self.draw.crops()  # uint8 between processes: a quarter of float's memory

    def augment(self, k: int, x, y):
        """Batch ``k``'s crops (uint8) augmented and normalised on their device."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        return self.draw.augment(x, y, self.normalisation, generator)


def pil_jpeg_artefacts(rgb: np.ndarray, rng: np.random.Generator, quality) -> np.ndarray:
    """:func:`napari_histo.training.augment.jpeg_artefacts` through Pillow (the GPU
    machine has no imagecodecs; the same libjpeg quality scale)."""
    from PIL import Image

    buffer = io.BytesIO()
    level = int(rng.integers(quality[0], quality[1] + 1))
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="JPEG", quality=level)
    with Image.open(buffer) as image:
        return np.array(image.convert("RGB"))


def train(args) -> Path:
    """Train member ``args.member`` and save its card in ``args.out``."""
    _stub_io_modules()
    from napari_histo.training import real_ensemble

    # Here and on the GPU machine alike (the workers fork while it is in place).
    recipe_jpeg, real_ensemble.jpeg_artefacts = real_ensemble.jpeg_artefacts, pil_jpeg_artefacts
    try:
        return _train(args)
    finally:
        real_ensemble.jpeg_artefacts = recipe_jpeg


def _train(args) -> Path:
    import torch

    from napari_histo.models import build_model, save_model
    from napari_histo.training.real_ensemble import (
        _member_seed_strength,
        member_card,
        training_step,
    )

    recipe = gpu_recipe(
        seed=args.seed, steps=args.steps, batch_size=args.batch, lr=args.lr,
        train_patch_px=args.patch, version=args.version,
    )  # fmt: skip
    architecture, config = recipe.members[args.member]
    config = {**config, **({"width": args.width} if args.width else {}), "num_classes": 2}
    pools, normalisation = load_pools(args.cache)
    device = torch.device(args.device)
    seed, strength = _member_seed_strength(recipe, args.member)
    torch.manual_seed(seed)
    model = build_model(architecture, config)
    batches_of = _Batches(pools, recipe, args.member, normalisation)
    loader = torch.utils.data.DataLoader(
        batches_of, batch_size=None, shuffle=False,
        num_workers=args.workers, prefetch_factor=4 if args.workers else None,
        worker_init_fn=_worker_init if args.workers else None,
        multiprocessing_context="fork" if args.workers else None,  # stubs and JPEG patch
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    batches = iter(loader)  # workers fork before CUDA starts in this process
    model.to(device).train()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    start_time, losses, step = time.perf_counter(), [], 0
    for step in budgeted_steps(recipe.steps, args.minutes, optimiser, recipe.lr):
        x, y, labels = (t.to(device, non_blocking=True) for t in next(batches))
        x, y = batches_of.augment(step - 1, x, y)
        loss = training_step(model, optimiser, x, y, labels, recipe)
        if step % 200 == 0 or step == 1:
            losses.append(float(loss.detach()))
            print(progress_line(architecture, step, losses[-1], optimiser, start_time), flush=True)
    seconds = time.perf_counter() - start_time
    del batches
    model.cpu().eval()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    card = member_card(
        recipe, architecture, config, normalisation,
        notes=(
            f"Trained by scripts/gpu_train_tumor.py (member {args.member}, augmentation "
            f"strength {strength}, bootstrap seed {seed}) on {where}: {step} steps in "
            f"{seconds:.0f} s (learning rate over the share of {args.minutes} min or "
            f"{recipe.steps} steps done, whichever further; {args.workers} batch workers, "
            f"bfloat16 autocast, augmentation on the {device.type} device, JPEG artefacts "
            f"through Pillow, torch {torch.__version__}); loss at the end "
            f"{np.mean(losses[-5:]):.3f}. Recipe: {recipe}. Training pools as packed by "
            f"`gpu_train_tumor.py pack` (training split of napari_histo.training.realdata; "
            f"WebP quality per pool, none = lossless: {_qualities(args.cache)})."
        ),
    )  # fmt: skip
    path = save_model(model, card, args.out)
    print(f"saved {path} after {step} steps, {seconds:.0f} s", flush=True)
    return path


# ---------------------------------------------------------------------------- score


def score(
    out_dir: str,
    data_dir: str,
    work_dir: str | None = None,
    *,
    to: str | None = None,
    partial: bool = False,
) -> dict:
    """Held-out figures of the ensemble of the member cards in `out_dir`.

    The cards and weights are copied to `to` (default ``out/gpu-tumor-<version>``)
    and the figures, stain reference and receptive margins written into the copies.
    """
    from napari_histo.models import read_card
    from napari_histo.paths import cache_dir
    from napari_histo.training.real_ensemble import finalize_real_ensemble

    names = {name for name, _ in GPU_MEMBERS}
    read = {path: read_card(path) for path in sorted(Path(out_dir).glob("*.json"))}
    found = {path: card for path, card in read.items() if card.name in names}
    missing = names - {card.name for card in found.values()}
    if missing and not partial:
        raise SystemExit(
            f"{out_dir}: no card of {', '.join(sorted(missing))} (a member failed?); "
            "--partial scores the members that are there"
        )
    if not found:
        raise SystemExit(f"{out_dir}: no tumor member cards ({', '.join(sorted(names))})")
    # The device's files arrive read-only, and scoring rewrites the cards: a copy.
    version = next(iter(found.values())).version
    dest = Path(to) if to else Path("out") / f"gpu-tumor-{version}"
    dest.mkdir(parents=True, exist_ok=True)
    cards = []
    for path, card in found.items():
        for source in (path, path.with_name(card.weights_file)):
            (dest / source.name).write_bytes(source.read_bytes())
        cards.append(dest / path.name)
    print(f"scoring the cards copied to {dest}")
    work = Path(work_dir) if work_dir else cache_dir() / "real-ensemble-work"
    work.mkdir(parents=True, exist_ok=True)
    scores = finalize_real_ensemble(data_dir, cards, work, log=print)
    figures = {
        source: {k: round(v, 4) for k, v in values.items() if v == v and k in ("dice", "auroc",
                 "epistemic_error_auroc", "tile_auroc")}
        for source, values in scores.items()
    }  # fmt: skip
    print(json.dumps({"cards": [c.name for c in cards], "heldout": figures}))
    return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("data_dir")
    p.add_argument("cache")
    p.add_argument("--max-mb", type=float, default=None, help="default: what may travel")
    t = sub.add_parser("train")
    t.add_argument("cache")
    t.add_argument("out")
    t.add_argument("--member", type=int, required=True, choices=range(len(GPU_MEMBERS)))
    t.add_argument("--version", default="3.0")
    t.add_argument("--width", type=int, default=None, help="override the member's width")
    t.add_argument("--patch", type=int, default=256)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=20_000)
    t.add_argument("--minutes", type=float, default=7.0)
    t.add_argument("--workers", type=int, default=4)
    t.add_argument("--device", default="cuda")
    s = sub.add_parser("score")
    s.add_argument("out_dir")
    s.add_argument("data_dir")
    s.add_argument("--work", default=None, help="cache of the held-out synthetic slides")
    s.add_argument("--to", default=None, help="where the scored copies go")
    s.add_argument("--partial", action="store_true", help="score fewer than all members")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.data_dir, args.cache, args.max_mb)
    elif args.command == "train":
        train(args)
    else:
        score(args.out_dir, args.data_dir, args.work, to=args.to, partial=args.partial)


if __name__ == "__main__":
    main()
