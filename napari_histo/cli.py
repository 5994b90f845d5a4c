"""The ``napari-histo`` command line.

Every subcommand reports bad input as one line on stderr naming the file or
argument and the problem, and exits with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from napari_histo import __version__
from napari_histo.errors import HistoError
from napari_histo.generators import drive

__all__ = ["main"]

XVFB_SCREEN = "-screen 0 1280x1024x24"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected an integer > 0, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def needs_display() -> bool:
    """True when no X/Wayland display is available for napari."""
    return sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def reexec_under_xvfb(argv: Sequence[str]) -> int:
    """Run this command again inside ``xvfb-run``; return its exit status."""
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        raise HistoError(
            "no display (DISPLAY unset) and xvfb-run not found; install xvfb "
            "(apt-get install xvfb) or run under a desktop session"
        )
    cmd = [xvfb, "-a", "-s", XVFB_SCREEN, sys.executable, "-m", "napari_histo.cli", *argv]
    return subprocess.call(cmd)


# -- subcommands ---------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from napari_histo.io.pyramid import open_pyramid
    from napari_histo.io.slide import Slide

    with Slide(args.slide) as slide:
        pyramid = open_pyramid(slide)
        levels = []
        for level in range(len(pyramid)):
            h, w = pyramid.levels[level].shape[:2]
            stored = level < pyramid.file_level_count
            tile = slide.tile_size(level) if stored else None
            levels.append(
                {
                    "level": level,
                    "width": w,
                    "height": h,
                    "downsample": pyramid.downsamples[level],
                    "tile": list(tile) if tile else None,
                    "chunk": list(pyramid.chunk_px[level]),
                    "stored": stored,
                }
            )
        info = {
            "path": str(slide.path),
            "vendor": slide.vendor,
            "width": slide.dimensions[0],
            "height": slide.dimensions[1],
            "mpp_x": slide.mpp_x,
            "mpp_y": slide.mpp_y,
            "objective_power": slide.objective_power,
            "associated_images": list(slide.associated_names),
            "levels": levels,
        }
    if args.json:
        print(json.dumps(info))
        return 0
    mpp = (
        f"{info['mpp_x']:.4f} x {info['mpp_y']:.4f} µm/px"
        if info["mpp_x"] is not None
        else "unknown (no microns-per-pixel metadata; shown in pixels)"
    )
    print(f"slide:      {info['path']}")
    print(f"vendor:     {info['vendor']}")
    print(f"size:       {info['width']} x {info['height']} px")
    print(f"mpp:        {mpp}")
    print(f"objective:  {info['objective_power'] or 'unknown'}")
    print(f"associated: {', '.join(info['associated_images']) or 'none'}")
    print("levels:")
    print("  level   width  height  downsample  tile      chunk     stored")
    for lv in levels:
        tile = "x".join(map(str, lv["tile"])) if lv["tile"] else "untiled" if lv["stored"] else "-"
        chunk = "x".join(map(str, lv["chunk"]))
        print(
            f"  {lv['level']:>5} {lv['width']:>7} {lv['height']:>7} {lv['downsample']:>11.3f}  "
            f"{tile:<9} {chunk:<9} {'file' if lv['stored'] else 'synthetic'}"
        )
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".svs":
        raise ValueError(f"OUT must end in .svs, got {str(out)!r}")
    if out.exists() and not args.force:
        raise HistoError(f"{out}: exists; pass --force to overwrite")
    from napari_histo._progress import TextProgress
    from napari_histo.synthetic import write_synthetic_slide

    result = write_synthetic_slide(
        out,
        size=args.size,
        seed=args.seed,
        tile_px=args.tile,
        jpeg_quality=args.quality,
        artefacts=not args.no_artefacts,
        workers=args.workers,
        progress=None if args.quiet else TextProgress(f"writing {out.name}"),
    )
    print(f"wrote {result.path} ({result.width} x {result.height} px, seed {result.seed})")
    print(f"ground truth: {result.truth_path} (masks at downsample {result.truth_downsample})")
    return 0


def _parse_region(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"--region must be x,y,w,h (four integers, level-0 px), got {text!r}")
    return values  # type: ignore[return-value]


def resolve_members(names: Sequence[str] | None, models_dir: str | None) -> list[Path]:
    """Card paths for `names` (card files, or model names in `models_dir`); default: all."""
    from napari_histo.models import default_models_dir, latest_cards, select_cards

    directory = Path(models_dir) if models_dir else default_models_dir()
    available = latest_cards(directory)
    if not names:
        if not available:
            raise HistoError(f"{directory}: no model cards (*.json) found")
        return list(available.values())
    return select_cards(names, available, f" in {directory}")


def cmd_infer(args: argparse.Namespace) -> int:
    import threading

    from napari_histo._progress import TextProgress
    from napari_histo.inference.engine import EngineConfig, infer_slide, run
    from napari_histo.models import load_model

    region = _parse_region(args.region)
    config = EngineConfig(
        tta=args.tta,
        overlap=args.overlap,
        batch_size=args.batch,
        device=args.device,
        read_threads=args.threads,
        tiling=args.tiling,
        large_tile_px=args.large_tile,
    )
    members = [load_model(card) for card in resolve_members(args.members, args.models_dir)]
    cancel = threading.Event()
    bar = None if args.quiet else TextProgress(f"inferring {Path(args.slide).name}")
    generator = infer_slide(
        args.slide, members, region=region, config=config, out_dir=args.out, cancel=cancel
    )
    try:
        result = run(generator, (lambda p: bar(p.done, p.total)) if bar else None)
    except KeyboardInterrupt:
        # Between batches the generator is still alive: let it stop at the batch
        # boundary. If the interrupt landed inside it, its `finally` has already
        # flushed the finished cells, so the run is resumable either way.
        cancel.set()
        print("\ninterrupted: saving finished results…", file=sys.stderr)
        result = None
        try:
            result = run(generator)
        except KeyboardInterrupt:
            pass
        done = f"after {result.tiles_run} tiles" if result is not None else "early"
        print(f"stopped {done}; run the same command again to resume", file=sys.stderr)
        return 130
    store = result.run.store.path if result.run else None
    print(
        f"{'cancelled' if result.cancelled else 'done'}: {result.tiles_run} of "
        f"{result.tiles_total} tiles computed in {result.seconds:.1f} s on {result.device}; "
        f"results in {store} (run {result.run.run_id if result.run else '-'})"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import threading

    from napari_histo.paths import default_models_dir
    from napari_histo.training.default_ensemble import EnsembleRecipe, train_default_ensemble

    if args.real is not None:
        if args.synthetic or args.slide is not None:
            raise ValueError("--real trains from the real-data folder; drop SLIDE and --synthetic")
        return _train_real(args)
    if args.nuclei and not args.synthetic:
        raise ValueError(
            "--nuclei trains the nuclei model from generated or real tiles: add --synthetic "
            "or --real DATA_DIR"
        )
    if not args.synthetic:
        return _train_from_annotations(args)
    if args.slide is not None:
        raise ValueError("--synthetic trains from generated slides; drop SLIDE or --synthetic")
    if args.nuclei:
        return _train_nuclei(args)
    recipe = EnsembleRecipe(seed=args.seed, steps=args.steps or 1200, slide_px=args.slide_size)
    cancel = threading.Event()
    out = args.out or default_models_dir()
    return _run_member_training(
        train_default_ensemble(out, recipe, work_dir=args.work, cancel=cancel), cancel
    )


def _run_member_training(generator, cancel) -> int:
    """Drive a ``(member, progress)`` training generator with a bar per member; exit status."""
    from napari_histo._progress import TextProgress

    bars: dict[str, TextProgress] = {}

    def show(item) -> None:
        member, event = item
        bar = bars.setdefault(member, TextProgress(f"training {member}", unit="steps"))
        bar.desc = f"training {member} (loss {event.loss:.3f})"
        bar(event.step, event.steps)

    try:
        cards = drive(generator, show)
    except KeyboardInterrupt:
        cancel.set()
        print("\ninterrupted: no new model version was written", file=sys.stderr)
        return 130
    for card in cards:
        print(f"wrote {card}")
    return 0


def _train_real(args: argparse.Namespace) -> int:
    """``train --real DATA_DIR [--nuclei]``: the shipped v2 models from real tiles."""
    import threading

    from napari_histo.paths import default_models_dir

    data = Path(args.real)
    if not data.is_dir():
        raise HistoError(f"{data}: no such real-data folder")

    out = args.out or default_models_dir()
    if args.nuclei:
        from napari_histo.training.real_nuclei import train_real_nuclei

        card = train_real_nuclei(data, out, seed=args.seed, minutes=args.minutes)
        print(f"wrote {card}")
        return 0
    from napari_histo.training.real_ensemble import RealRecipe, train_real_ensemble

    recipe = RealRecipe(seed=args.seed, **({"steps": args.steps} if args.steps else {}))
    cancel = threading.Event()
    return _run_member_training(
        train_real_ensemble(data, out, recipe, work_dir=args.work, cancel=cancel), cancel
    )


def _train_nuclei(args: argparse.Namespace) -> int:
    """``train --synthetic --nuclei``: the bundled learned nuclei model (hovernet)."""
    from napari_histo._progress import TextProgress
    from napari_histo.paths import default_models_dir
    from napari_histo.training.nuclei import train_default_nuclei

    bar = TextProgress("training hovernet", unit="steps")

    def progress(step: int, steps: int, loss: float) -> None:
        bar.desc = f"training hovernet (loss {loss:.3f})"
        bar(step, steps)

    try:
        card = train_default_nuclei(
            args.out or default_models_dir(), args.seed, steps=args.steps, progress=progress,
            workdir=args.work,
        )  # fmt: skip
    except KeyboardInterrupt:
        print("\ninterrupted: no new model version was written", file=sys.stderr)
        return 130
    print(f"wrote {card}")
    return 0


def _train_from_annotations(args: argparse.Namespace) -> int:
    """``train SLIDE [--annotations FILE]``: fine-tune the active members; new versions."""
    import threading

    from napari_histo._progress import TextProgress
    from napari_histo.models import read_card
    from napari_histo.models.versions import user_models_dir
    from napari_histo.training.finetune import FinetuneConfig, finetune_ensemble
    from napari_histo.training.retrain import (
        estimate_steps,
        read_slide_annotations,
        resolve_cards,
        steps_per_epoch,
    )

    if args.slide is None:
        raise ValueError("SLIDE is required (or pass --synthetic to train the default ensemble)")
    if not Path(args.slide).is_file():
        raise HistoError(f"{args.slide}: no such slide file")
    annotations, source, problems = read_slide_annotations(args.slide, args.annotations)
    for line in problems:
        print(f"{source}: {line}", file=sys.stderr)
    cards = resolve_cards(args.members)
    config = FinetuneConfig()
    if args.steps:
        steps = args.steps
    elif args.minutes:
        steps = estimate_steps(cards, args.minutes * 60, config)
    else:
        steps = args.epochs * steps_per_epoch(config)
    out = Path(args.out) if args.out else user_models_dir()
    cancel = threading.Event()
    generator = finetune_ensemble(
        cards, args.slide, annotations, out_dir=out, steps=steps, granularity=args.granularity,
        freeze_encoder_steps=args.freeze_epochs * steps_per_epoch(config), seed=args.seed,
        cancel=cancel, config=config,
    )  # fmt: skip
    print(
        f"fine-tuning {len(cards)} member(s) on {len(annotations)} annotations from {source} "
        f"({args.granularity} granularity, {steps} steps each)",
        file=sys.stderr,
    )
    bars: dict[str, TextProgress] = {}

    def show(item) -> None:
        member, event = item
        bar = bars.setdefault(member, TextProgress(f"training {member}", unit="steps"))
        bar.desc = f"training {member} (loss {event.loss:.3f})"
        bar(event.step, event.steps)

    try:
        written = drive(generator, show)
    except KeyboardInterrupt:
        cancel.set()
        generator.close()
        print("\ninterrupted: no new model version was written", file=sys.stderr)
        return 130
    for path in written:
        card = read_card(path)
        m = card.metrics
        print(
            f"{card.name} {card.parent_version} -> {card.version}: held-out Dice "
            f"{m['heldout_dice_before']:.3f} -> {m['heldout_dice_after']:.3f}; wrote {path}"
        )
    if written:
        m = read_card(written[0]).metrics
        print(
            f"ensemble held-out Dice {m['ensemble_heldout_dice_before']:.3f} -> "
            f"{m['ensemble_heldout_dice_after']:.3f}"
        )
    return 0


def cmd_nuclei(args: argparse.Namespace) -> int:
    import threading

    from napari_histo._progress import TextProgress
    from napari_histo.nuclei.export import export_csv, export_geojson
    from napari_histo.nuclei.store import iter_nuclei_to_store

    if not Path(args.slide).is_file():
        raise HistoError(f"{args.slide}: no such slide file")
    region = _parse_region(args.region)
    cancel = threading.Event()
    generator = iter_nuclei_to_store(
        args.slide, method=args.method, region_l0=region, out_dir=args.out, cancel=cancel
    )
    bars: dict[str, TextProgress] = {}

    def show(update) -> None:
        unit = "levels" if update.stage == "pyramid" else "blocks"
        bar = bars.setdefault(update.stage, TextProgress(f"nuclei {update.stage}", unit))
        bar(update.done, update.total)

    try:
        result = drive(generator, None if args.quiet else show)
    except KeyboardInterrupt:
        cancel.set()
        generator.close()
        print("\ninterrupted: finished blocks are kept; run again to resume", file=sys.stderr)
        return 130
    run = result.run
    for path, export in ((args.csv, export_csv), (args.geojson, export_geojson)):
        if path:
            print(f"wrote {export(run, path)}")
    print(
        f"done: {result.nuclei} nuclei ({result.blocks_run} blocks computed in "
        f"{result.seconds:.1f} s); labels in {run.store.path} (nuclei run {run.run_id})"
    )
    return 0


def _evaluate_number(text: str | None, flag: str, kind: type, allowed: str) -> float:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} must be {allowed}, got {text!r}") from None
    return value


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_histo._progress import TextProgress
    from napari_histo.evaluate import CSV_COLUMNS, evaluate_folder, evaluate_slide

    slide = args.slide is not None or args.annotations is not None
    if slide and (args.slide is None or args.annotations is None):
        raise ValueError("--slide and --annotations go together")
    if slide and (args.images or args.masks):
        raise ValueError("give IMAGES_DIR MASKS_DIR or --slide S --annotations A, not both")
    if slide and args.mpp is not None:
        raise ValueError("--mpp is for tiles; a slide's µm/px comes from its metadata")
    if not slide and not (args.images and args.masks):
        raise ValueError("IMAGES_DIR and MASKS_DIR are required (or --slide S --annotations A)")
    if not slide and args.mpp is None:
        raise ValueError("--mpp is required: the tiles' µm per pixel (0.05-50)")
    mpp = None if slide else _evaluate_number(args.mpp, "--mpp", float, "a number in [0.05, 50]")
    tta = _evaluate_number(args.tta, "--tta", int, "1, 2, 4 or 8")
    cards = resolve_members(args.members, args.models_dir)  # loaded once the files check out
    bar = None if args.quiet or args.json else TextProgress("evaluating", unit="tiles")
    if slide:
        result = evaluate_slide(
            args.slide, args.annotations, cards, tta=tta, stain=args.stain, out_dir=args.out,
            progress=bar,
        )  # fmt: skip
    else:
        result = evaluate_folder(
            args.images, args.masks, cards, mpp=mpp, tta=tta, stain=args.stain,
            out_dir=args.out, progress=bar,
        )  # fmt: skip
    summary = result.summary
    if args.json:
        rows = [
            {c: None if getattr(r, c) != getattr(r, c) else getattr(r, c) for c in CSV_COLUMNS}
            for r in result.rows
        ]  # NaN (e.g. AUROC of a one-class tile) -> null
        payload = {**summary, "rows": rows, "files": {k: str(v) for k, v in result.files.items()}}
        print(json.dumps(payload, allow_nan=False))
        return 0
    models = ", ".join(f"{m['name']} {m['version']}" for m in summary["models"])
    stain = summary["stain"]["method"] if summary["stain"] else "none"
    where = (
        f"{Path(args.slide).name}, annotated region {summary['region_l0'][2]} x "
        f"{summary['region_l0'][3]} px"
        if slide
        else f"{summary['tiles']} tiles at {mpp:g} µm/px"
    )
    print(
        f"{where} (models at {summary['model_mpp']:g} µm/px), {models}, TTA {tta}, "
        f"stain normalisation {stain}, {summary['seconds']:.1f} s"
    )
    head = ("tile", "pixels", "tumor", "dice", "iou", "auroc", "ece", "mean_p", "epi_auroc")
    print("  ".join(f"{h:>9}" if i else f"{h:<16}" for i, h in enumerate(head)))

    def fmt(value: float) -> str:
        return "    -    " if value != value else f"{value:9.3f}"

    for r in result.rows:
        numbers = (r.tumor_fraction, r.dice, r.iou, r.auroc, r.ece, r.mean_probability,
                   r.epistemic_error_auroc)  # fmt: skip
        print(f"{r.name[:16]:<16}  {r.pixels:>9}  " + "  ".join(fmt(v) for v in numbers))
    pooled = summary["pooled"]
    names = (("dice", "Dice"), ("iou", "IoU"), ("auroc", "AUROC"), ("ece", "ECE"),
             ("epistemic_error_auroc", "epistemic-error AUROC"))  # fmt: skip

    def line(figures: dict) -> str:
        return ", ".join(
            f"{label} {figures[k]:.3f}" if figures.get(k) is not None else f"{label} -"
            for k, label in names
        )

    print(f"pooled pixels: {line(pooled)}")
    print(f"mean per tile: {line(summary['mean_per_tile'])}")
    for note in summary["notes"]:
        print(f"note: {note}")
    if result.files:
        print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 0


def cmd_demo(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if needs_display():
        if args.screenshot is None:
            argv = [*argv, "--screenshot", str(Path("out") / "demo.png")]
        print("no display: running the demo under Xvfb and saving a screenshot", file=sys.stderr)
        return reexec_under_xvfb(argv)
    from napari_histo.demo import run_demo

    return run_demo(slide=args.slide, screenshot=args.screenshot, size_px=args.size)


def cmd_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.which in ("open", "ui", "annotations", "nuclei") and needs_display():
        return reexec_under_xvfb(argv)
    from napari_histo import bench

    result = bench.run(args.which, quick=args.quick, slide=args.slide, device=args.device)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
        print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-histo",
        description="Whole-slide histopathology in napari: view, infer, correct, retrain.",
    )
    parser.add_argument("--version", action="version", version=f"napari-histo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="print levels, mpp, vendor and tiling of a slide")
    p.add_argument("slide", help="slide file")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("synth", help="write a synthetic H&E slide with ground truth")
    p.add_argument("out", help="output .svs path (ground truth goes to OUT.truth.zarr)")
    p.add_argument("--size", type=_positive_int, default=8192, help="width = height, px")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed")
    p.add_argument("--tile", type=_positive_int, default=256, help="tile size, px")
    p.add_argument("--quality", type=_positive_int, default=85, help="JPEG quality 1-100")
    p.add_argument("--workers", type=_positive_int, default=None, help="processes")
    p.add_argument("--no-artefacts", action="store_true", help="no pen mark, fold or blur")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("infer", help="run the tumor ensemble on a slide (resumable)")
    p.add_argument("slide", help="slide file")
    p.add_argument("--out", default=None, help="directory of the result store (default: beside)")
    p.add_argument("--region", default=None, help="x,y,w,h in level-0 px (default: whole slide)")
    p.add_argument("--members", nargs="+", default=None, help="model names or card .json paths")
    p.add_argument("--models-dir", default=None, help="directory of model cards")
    p.add_argument("--tta", type=int, choices=[1, 2, 4, 8], default=1, help="TTA transforms")
    p.add_argument("--overlap", type=float, default=0.5, help="tile overlap fraction [0, 1)")
    p.add_argument(
        "--tiling", choices=["patch", "large", "auto"], default="patch",
        help="patch: the card's patch, blended (default); large: large tiles, each output "
        "pixel computed about once by members with a measured receptive margin",
    )  # fmt: skip
    p.add_argument(
        "--large-tile", type=_positive_int, default=4096,
        help="largest side of a large tile, model px (memory grows with its square)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    p.add_argument("--batch", type=_positive_int, default=None, help="tiles per batch (auto)")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="tile reading threads (default: 2 on CPU, up to 8 beside a GPU)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "train", help="fine-tune the ensemble on a slide's annotations (new model versions)"
    )
    p.add_argument("slide", nargs="?", default=None, help="annotated slide file")
    p.add_argument(
        "--annotations", default=None, help="GeoJSON/ASAP file (default: SLIDE.annotations.geojson)"
    )
    p.add_argument(
        "--granularity", choices=["pixel", "polygon", "ellipse", "bbox"], default="pixel",
        help="rasterise annotations as drawn (pixel) or as their ellipse / bounding box",
    )  # fmt: skip
    p.add_argument("--members", nargs="+", default=None, help="model names or card .json paths")
    p.add_argument("--epochs", type=_positive_int, default=5, help="passes over the patches")
    p.add_argument("--minutes", type=float, default=None, help="time budget instead of epochs")
    p.add_argument(
        "--freeze-epochs", type=_nonnegative_int, default=0, help="first epochs: encoder frozen"
    )
    p.add_argument("--synthetic", action="store_true", help="train from synthetic slides")
    p.add_argument(
        "--real", default=None, metavar="DATA_DIR",
        help="train the default models from the real-data folder (tiles with expert labels)",
    )  # fmt: skip
    p.add_argument(
        "--nuclei",
        action="store_true",
        help="with --synthetic: train the learned nuclei model instead of the tumor ensemble",
    )
    p.add_argument(
        "--out", default=None,
        help="weights + cards folder (default: user models dir; --synthetic: the bundled models, "
        "napari_histo/resources/models)",
    )  # fmt: skip
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed")
    p.add_argument("--steps", type=_positive_int, default=None, help="steps per member")
    p.add_argument("--slide-size", type=_positive_int, default=8192, help="synthetic slide px")
    p.add_argument("--work", default=None, help="directory for the generated slides")

    p = sub.add_parser("nuclei", help="segment nuclei into the result store (resumable)")
    p.add_argument("slide", help="slide file")
    p.add_argument("--method", choices=["classical", "learned"], default="classical")
    p.add_argument("--region", default=None, help="x,y,w,h in level-0 px (default: whole slide)")
    p.add_argument("--out", default=None, help="directory of the result store (default: beside)")
    p.add_argument("--csv", default=None, help="write per-nucleus measurements to this CSV")
    p.add_argument("--geojson", default=None, help="write QuPath-style detections here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "evaluate", help="score tumor models on labelled tiles: Dice, IoU, AUROC, ECE"
    )
    p.add_argument("images", nargs="?", help="folder of RGB tiles (JPEG, PNG, TIFF, ...)")
    p.add_argument(
        "masks", nargs="?", help="folder of binary tumor masks (0/1 or 0/255), same file names"
    )
    p.add_argument("--slide", default=None, help="an annotated slide instead of tiles")
    p.add_argument(
        "--annotations", default=None,
        help="its annotations (GeoJSON or ASAP XML): tumor, non-tumor, ignore",
    )  # fmt: skip
    p.add_argument("--mpp", default=None, help="µm per pixel of the tiles, 0.05-50 (required)")
    p.add_argument("--members", nargs="+", default=None, help="model names or card .json paths")
    p.add_argument("--models-dir", default=None, help="directory of model cards")
    p.add_argument("--tta", default="1", help="TTA transforms: 1, 2, 4 or 8")
    p.add_argument(
        "--stain", choices=["card", "none", "macenko", "reinhard"], default="card",
        help="stain normalisation per tile (default: as the model cards say)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="write tiles.csv, summary.json, reliability.png")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("demo", help="open napari with the sample slide")
    p.add_argument("--slide", default=None, help="slide to open instead of the sample")
    p.add_argument("--size", type=_positive_int, default=None, help="sample slide size, px")
    p.add_argument(
        "--screenshot", default=None, help="save a screenshot to this PNG and exit (headless)"
    )

    from napari_histo.bench import BENCHMARKS  # light: the benchmarks import lazily

    p = sub.add_parser("bench", help="benchmarks; the last line printed is JSON")
    p.add_argument("which", choices=list(BENCHMARKS), help="which benchmark")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    p.add_argument("--slide", default=None, help="(read, infer) use this slide")
    p.add_argument("--device", default="auto", help="(infer) auto, cpu, cuda[:N] or mps")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-histo`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        # One line per warning (e.g. an annotation skipped on glass), not a source excerpt.
        print(f"napari-histo {args.command}: warning: {_one_line(message)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        return _dispatch(args, parser, argv)


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    try:
        if args.command == "info":
            return cmd_info(args)
        if args.command == "synth":
            return cmd_synth(args)
        if args.command == "infer":
            return cmd_infer(args)
        if args.command == "train":
            return cmd_train(args)
        if args.command == "nuclei":
            return cmd_nuclei(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "demo":
            return cmd_demo(args, argv)
        if args.command == "bench":
            return cmd_bench(args, argv)
    except (HistoError, ValueError, TypeError, OSError) as err:
        print(f"napari-histo {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-histo {args.command}: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename:
        text = f"{err.filename}: {err.strerror or text}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
