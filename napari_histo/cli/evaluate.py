"""The ``evaluate`` subcommand: score a model version on labelled tiles or an annotated slide."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_histo.cli._common import (
    resolve_members,
)


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
