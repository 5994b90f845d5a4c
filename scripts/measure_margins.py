#!/usr/bin/env python3
"""Measure the receptive margin of every bundled tumor model and write it into its card.

Usage: python scripts/measure_margins.py [CARD.json ...]   (default: the bundled tumor cards)

The weights are unchanged; the engine's large tiles use the margin
(see napari_histo.models.receptive).
"""

from __future__ import annotations

import sys
from pathlib import Path

from napari_histo.models import iter_cards
from napari_histo.models.receptive import with_measured_margin
from napari_histo.paths import default_models_dir


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or [
        path for path, _ in iter_cards(default_models_dir(), task="segmentation")
    ]
    for path in paths:
        print(f"{path.name}: receptive_margin_px = {with_measured_margin(path)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
