"""The ``train`` subcommand: fine-tuning on annotations, synthetic and real-data recipes, nuclei."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_histo.errors import HistoError
from napari_histo.generators import drive


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


def _drive_member_training(generator, cancel) -> list | None:
    """Drive a ``(member, progress)`` training generator with a bar per member.

    Returns what the generator returns, or None after Ctrl-C (cancelled, said).
    """
    from napari_histo._progress import TextProgress

    bars: dict[str, TextProgress] = {}

    def show(item) -> None:
        member, event = item
        bar = bars.setdefault(member, TextProgress(f"training {member}", unit="steps"))
        bar.desc = f"training {member} (loss {event.loss:.3f})"
        bar(event.step, event.steps)

    try:
        return drive(generator, show)
    except KeyboardInterrupt:
        cancel.set()
        generator.close()
        print("\ninterrupted: no new model version was written", file=sys.stderr)
        return None


def _run_member_training(generator, cancel) -> int:
    """:func:`_drive_member_training`, then the cards written; exit status."""
    cards = _drive_member_training(generator, cancel)
    if cards is None:
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
        cancel=cancel, config=config, slide_mpp=args.mpp,
    )  # fmt: skip
    print(
        f"fine-tuning {len(cards)} member(s) on {len(annotations)} annotations from {source} "
        f"({args.granularity} granularity, {steps} steps each)",
        file=sys.stderr,
    )
    written = _drive_member_training(generator, cancel)
    if written is None:
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
