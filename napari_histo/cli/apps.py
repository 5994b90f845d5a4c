"""Subcommands that start something else: ``demo`` (napari with the docks) and ``bench``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_histo.cli._common import (
    needs_display,
    reexec_under_xvfb,
)


def cmd_demo(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from napari_histo.demo import check_slide, run_demo

    if needs_display():
        if args.slide is not None:
            check_slide(args.slide)  # a bad file: one line, before Xvfb starts
        if args.screenshot is None:
            argv = [*argv, "--screenshot", str(Path("out") / "demo.png")]
        print("no display: running the demo under Xvfb and saving a screenshot", file=sys.stderr)
        return reexec_under_xvfb(argv)
    return run_demo(slide=args.slide, screenshot=args.screenshot, size_px=args.size)


def cmd_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.which in ("open", "ui", "annotations", "nuclei") and needs_display():
        return reexec_under_xvfb(argv)
    from napari_histo import bench

    result = bench.run(
        args.which,
        quick=args.quick,
        slide=args.slide,
        device=args.device,
        formats=args.formats,
        float32=args.float32,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}: {value}")
        print(json.dumps(result))
    return 0
