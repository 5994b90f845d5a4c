"""An evaluation and its report files: per-tile CSV, summary JSON, reliability diagram PNG."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo._atomic import atomic_write_bytes
from napari_histo.evaluate.scores import TileScore

#: Per-tile CSV columns, in order.
CSV_COLUMNS = (
    "name",
    "pixels",
    "tumor_fraction",
    "dice",
    "iou",
    "auroc",
    "ece",
    "mean_probability",
    "epistemic_error_auroc",
)


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_folder` measured (and wrote).

    Attributes
    ----------
    rows : list of TileScore
        One per tile, in file-name order.
    summary : dict
        JSON-ready: models, settings, pooled and mean per-tile figures, the
        reliability table, notes.
    files : dict of str to Path
        ``{"csv", "json", "png"}`` when written to an `out_dir`, else empty.
    """

    rows: list[TileScore]
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def _csv_bytes(rows: Sequence[TileScore]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = []
        for column in CSV_COLUMNS:
            value = getattr(row, column)
            if isinstance(value, float):
                value = "" if not math.isfinite(value) else f"{value:.4f}"
            values.append(value)
        writer.writerow(values)
    return buffer.getvalue().encode("utf-8")


def write_reliability_png(
    table: dict[str, list[float]], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Draw a reliability diagram (and the pixel count per bin) to a PNG, atomically.

    Parameters
    ----------
    table : dict
        :func:`reliability_table` output (``mean_probability``, ``frequency``,
        ``count`` per equal-width bin of [0, 1]).
    path : str or PathLike
    title : str
    """
    return atomic_write_bytes(path, _reliability_png(table, title))


def _reliability_png(table: dict[str, list[float]], title: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mean_p = np.asarray(table["mean_probability"], dtype=np.float64)
    freq = np.asarray(table["frequency"], dtype=np.float64)
    count = np.asarray(table["count"], dtype=np.float64)
    bins = len(count)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = Figure(figsize=(5.0, 6.0), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="perfect calibration")
    shown = count > 0
    top.bar(centres[shown], freq[shown], width=1.0 / bins, color="#d62728", alpha=0.35,
            edgecolor="#d62728", label="tumor fraction per bin")  # fmt: skip
    top.plot(mean_p[shown], freq[shown], "o-", color="#d62728", lw=1.5, ms=4,
             label="mean probability → observed")  # fmt: skip
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed tumor fraction")
    top.legend(loc="upper left", fontsize=8)
    if title:
        top.set_title(title, fontsize=9)
    bottom.bar(centres, np.maximum(count, 0.5), width=1.0 / bins, color="0.5")
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted tumor probability")
    bottom.set_ylabel("pixels")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_outputs(evaluation: Evaluation, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``tiles.csv``, ``summary.json`` and ``reliability.png`` to `out_dir` (atomically)."""
    out = Path(out_dir)
    summary = evaluation.summary
    pooled = summary.get("pooled", {})
    ece = pooled.get("ece")
    what = (
        Path(summary["slide"]).name
        if "slide" in summary
        else f"{summary.get('tiles', len(evaluation.rows))} tiles"
    )
    title = (
        f"{what}, "
        + ", ".join(f"{m['name']} {m['version']}" for m in summary.get("models", []))
        + (f"; ECE {ece:.3f}" if isinstance(ece, float) else "")
    )
    # Everything rendered first, so a failure leaves no partial report behind.
    payloads = {
        "csv": ("tiles.csv", _csv_bytes(evaluation.rows)),
        "json": (
            "summary.json",
            (json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode(),
        ),
        "png": ("reliability.png", _reliability_png(summary["reliability"], title)),
    }
    out.mkdir(parents=True, exist_ok=True)
    return {key: atomic_write_bytes(out / name, data) for key, (name, data) in payloads.items()}
