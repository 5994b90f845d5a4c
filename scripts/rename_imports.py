#!/usr/bin/env python3
"""Rewrite napari_histo imports from the flat layout (before #12) to the feature folders.

Usage: python scripts/rename_imports.py FILE_OR_DIR...   (edits .py/.yaml/.md files in place)

Run it on code written against the old layout (e.g. a branch merged after #12).
"""

import re
import sys
from pathlib import Path

# old dotted module -> new dotted module (longest first when applied)
MOVES = {
    "napari_histo.io.atomic": "napari_histo._atomic",
    "napari_histo.annotation_layers": "napari_histo.annotations.layers",
    "napari_histo.probability_annotations": "napari_histo.annotations.from_probability",
    "napari_histo.polygons": "napari_histo.annotations.polygons",
    "napari_histo.annotations": "napari_histo.annotations.model",
    "napari_histo.io.asap": "napari_histo.io.annotations.asap",
    "napari_histo.live_settings": "napari_histo.live.settings",
    "napari_histo.live_pyramid": "napari_histo.live.pyramid",
    "napari_histo.live_threads": "napari_histo.live.threads",
    "napari_histo.live": "napari_histo.live.controller",
    "napari_histo.nuclei_learned": "napari_histo.nuclei.learned",
    "napari_histo.nuclei_features": "napari_histo.nuclei.features",
    "napari_histo.nuclei_edit": "napari_histo.nuclei.edit",
    "napari_histo.nuclei_eval": "napari_histo.nuclei.evaluate",
    "napari_histo.nuclei_blocks": "napari_histo.nuclei.blocks",
    "napari_histo.nuclei_store": "napari_histo.nuclei.store",
    "napari_histo.nuclei_export": "napari_histo.nuclei.export",
    "napari_histo.nuclei": "napari_histo.nuclei.classical",
    "napari_histo.io.reader": "napari_histo.plugin.reader",
    "napari_histo.io.writer": "napari_histo.plugin.writer",
    "napari_histo.sample_data": "napari_histo.plugin.sample_data",
    "napari_histo.training.versions": "napari_histo.models.versions",
}
_KEYS = sorted(MOVES, key=len, reverse=True)
_PAT = re.compile(r"\b(" + "|".join(re.escape(k) for k in _KEYS) + r")(?![\w])(\.\w+)?")
#: The new layout, to tell ``napari_histo.nuclei.store`` (new, keep) from
#: ``napari_histo.nuclei.segment_nuclei`` (old module attribute, rewrite).
_ROOT = Path(__file__).resolve().parents[1]


def _is_module(dotted: str) -> bool:
    path = _ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _replace(m: re.Match) -> str:
    key, rest = m.group(1), m.group(2) or ""
    if rest and _is_module(key + rest):
        return m.group(0)  # already a module of the new layout
    return MOVES[key] + rest


def rewrite(text: str) -> str:
    return _PAT.sub(_replace, text)


def main() -> int:
    for arg in sys.argv[1:]:
        p = Path(arg)
        found = (f for ext in ("py", "yaml", "md") for f in p.rglob(f"*.{ext}"))
        files = [p] if p.is_file() else list(found)
        for f in files:
            old = f.read_text(encoding="utf-8")
            new = rewrite(old)
            if new != old:
                f.write_text(new, encoding="utf-8")
                print("rewrote", f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
