#!/usr/bin/env python3
"""Regenerate docs/architecture.png (packages and import directions) and print the module table.

Usage: python scripts/architecture.py [--png docs/architecture.png] > table.md

Reads every module's imports with ``ast`` (no import of the package), groups modules
into the boxes below, and draws one arrow per group-to-group import (importer -> imported),
layers top (entry points) to bottom (base), as checked by tests/test_import_check.py.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "napari_histo"

#: (box label, module prefixes) per layer, entry points first.
LAYOUT: list[list[tuple[str, tuple[str, ...]]]] = [
    [("cli", ("cli",)), ("demo", ("demo",)), ("bench/", ("bench",))],
    [("plugin/", ("plugin",)), ("widgets/", ("widgets",))],
    [("live/", ("live",)), ("training/", ("training",)), ("evaluate/", ("evaluate",)),
     ("review/", ("review",)), ("analysis/", ("analysis",))],
    [("inference/", ("inference",)), ("nuclei/", ("nuclei",)),
     ("annotations/ (layers, crops,\nfrom_probability)", ("annotations",))],
    [("models/", ("models",))],
    [("io/ (slide, pyramid, store)", ("io",)), ("io/annotations/", ("io.annotations",)),
     ("tissue", ("tissue",))],
    [("base: errors paths\nframes _atomic generators\nresample stain ood", ("", "errors", "paths",
      "frames", "_atomic", "_progress", "generators", "resample", "stain", "ood")),
     ("annotations.model\n+ polygons", ("annotations.model", "annotations.polygons")),
     ("synthetic/", ("synthetic",)), ("tiling", ("tiling",)), ("metrics", ("metrics",))],
]  # fmt: skip


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    edges[mod].add(name)
    return edges


def box_of(module: str) -> str:
    rel = module.removeprefix("napari_histo").removeprefix(".")
    best, depth = "", -1
    for row in LAYOUT:
        for label, prefixes in row:
            for p in prefixes:
                if (rel == p or (p and rel.startswith(p + "."))) and p.count(".") + bool(p) > depth:
                    best, depth = label, p.count(".") + bool(p)
    return best


def summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.strip().split("\n\n")[0].split()) or "(no docstring)"


def table(mods: dict[str, Path]) -> str:
    lines = ["| module | lines | job |", "| --- | ---: | --- |"]
    for mod, path in mods.items():
        n = len(path.read_text(encoding="utf-8").splitlines())
        lines.append(f"| `{mod}` | {n} | {summary(path).replace('|', '/')} |")
    return "\n".join(lines)


def draw(edges: dict[str, set[str]], out: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    font_path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    try:
        font = ImageFont.truetype(font_path, 15)
    except OSError:
        font = ImageFont.load_default()
    width, row_h, box_w, box_h = 1400, 120, 230, 56
    img = Image.new("RGB", (width, row_h * len(LAYOUT) + 40), "white")
    d = ImageDraw.Draw(img)
    pos: dict[str, tuple[int, int]] = {}
    for r, row in enumerate(LAYOUT):
        y = 30 + r * row_h
        step = width // (len(row) + 1)
        for c, (label, _) in enumerate(row):
            pos[label] = (step * (c + 1), y + box_h // 2)
    group_edges = {(box_of(a), box_of(b)) for a in edges for b in edges[a]}
    group_edges = {(a, b) for a, b in group_edges if a != b and a in pos and b in pos}
    for a, b in sorted(group_edges):
        (x0, y0), (x1, y1) = pos[a], pos[b]
        start, end = (x0, y0 + box_h // 2), (x1, y1 - box_h // 2)
        if y1 < y0:  # an upward import would be drawn red (tests forbid them)
            d.line([start, end], fill=(220, 0, 0), width=3)
            continue
        d.line([start, end], fill=(150, 150, 170), width=1)
        vx, vy = end[0] - start[0], end[1] - start[1]
        norm = max((vx * vx + vy * vy) ** 0.5, 1e-9)
        ux, uy = vx / norm, vy / norm
        tip = [end, (end[0] - 10 * ux + 5 * uy, end[1] - 10 * uy - 5 * ux),
               (end[0] - 10 * ux - 5 * uy, end[1] - 10 * uy + 5 * ux)]  # fmt: skip
        d.polygon(tip, fill=(110, 110, 140))
    colours = [(255, 235, 205), (220, 235, 255), (225, 245, 225), (245, 225, 245),
               (255, 245, 200), (230, 230, 250), (235, 235, 235)]  # fmt: skip
    for r, row in enumerate(LAYOUT):
        for label, _ in row:
            x, y = pos[label]
            box = [x - box_w // 2, y - box_h // 2, x + box_w // 2, y + box_h // 2]
            d.rounded_rectangle(box, radius=8, fill=colours[r], outline=(60, 60, 60), width=2)
            d.multiline_text((x, y), label, fill="black", font=font, anchor="mm", align="center")
    title = (
        "napari_histo: packages (boxes) and imports (arrow: importer -> imported); "
        "layers top to bottom, imports only point down or sideways"
    )
    d.text((10, 8), title, fill="black", font=font)
    img.save(out)


def main() -> int:
    args = sys.argv[1:]
    png = Path(args[args.index("--png") + 1]) if "--png" in args else REPO / "docs/architecture.png"
    mods = modules()
    draw(imports(mods), png)
    print(table(mods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
