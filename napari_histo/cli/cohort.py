"""``napari-histo cohort``: many slides on a dask.distributed cluster, one task per slide."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from napari_histo.cli._common import resolve_members
from napari_histo.errors import HistoError


def read_slide_list(path: str | Path) -> list[str]:
    """Slide paths of a list file: one a line; blank lines and ``#`` comments skipped.

    Relative paths are taken from the list file's folder, so a list travels with its slides.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise HistoError(f"{path}: cannot read the slide list ({err})") from err
    slides = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            slide = Path(line).expanduser()
            slides.append(str(slide if slide.is_absolute() else path.parent / slide))
    return slides


class CohortProgress:
    """Per-slide status on one line (redrawn on a terminal, a line per change in a log)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.states: dict[str, dict[str, Any]] = {}
        self.start = time.monotonic()
        self._last_draw = 0.0

    def __call__(self, event: Mapping[str, Any]) -> None:
        if "dashboard" in event:
            link = event["dashboard"] or "none (install bokeh for the dask dashboard)"
            self._line(f"dask dashboard: {link}")
            return
        name = event.get("slide")
        if not name:
            return
        before = self.states.get(name, {}).get("status")
        self.states[name] = dict(event)
        status = event.get("status")
        if status != before and status in ("skipped", "started", "done", "failed"):
            detail = f": {event['error']}" if event.get("error") else ""
            self._line(f"{name}: {status}{detail}")
        elif self.tty and time.monotonic() - self._last_draw > 0.2:
            self._draw()

    def _finished(self) -> int:
        return sum(s.get("status") in ("done", "failed", "skipped") for s in self.states.values())

    def _summary(self) -> str:
        running = []
        for name, state in self.states.items():
            if state.get("status") == "running" and state.get("total"):
                running.append(
                    f"{name} {state.get('stage')} {100 * state['done'] / state['total']:.0f}%"
                )
        elapsed = time.monotonic() - self.start
        text = f"cohort: {self._finished()}/{self.total} slides, {elapsed:.0f} s"
        return text + (" | " + " · ".join(running) if running else "")

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        self.stream.write("\r\033[K" + self._summary())
        self.stream.flush()

    def _line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text + "\n")
            self._draw()
        else:
            self.stream.write(f"{text}  [{self._finished()}/{self.total}]\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def cmd_cohort(args: argparse.Namespace) -> int:
    from napari_histo.analysis.cohort import CohortConfig, run_cohort

    slides = list(args.slides or [])
    if args.list:
        slides += read_slide_list(args.list)
    if not slides and args.list:
        raise HistoError(f"{args.list}: names no slides (give one slide path a line)")
    if not slides:
        raise HistoError("no slides: give slide files or --list FILE")
    cards = tuple(str(card) for card in resolve_members(args.members, args.models_dir))
    config = CohortConfig(
        out_dir=str(Path(args.out)),
        cards=cards,
        nuclei=args.nuclei,
        threshold=args.threshold,
        min_area_um2=args.min_area,
        mpp=args.mpp,
        torch_threads=args.torch_threads,
        device=args.device,
    )
    progress = None if args.quiet else CohortProgress(len(slides))
    try:
        result = run_cohort(
            slides, config, scheduler=args.scheduler, workers=args.workers, on_event=progress
        )
    finally:
        if progress is not None:
            progress.close()
    counts = {s: sum(o.status == s for o in result.outcomes) for s in ("done", "skipped", "failed")}
    print(
        f"cohort: {counts['done']} done, {counts['skipped']} skipped (complete before), "
        f"{counts['failed']} failed in {result.seconds:.1f} s; table in {result.csv_path}"
    )
    for outcome in result.failed:
        print(f"napari-histo cohort: failed: {outcome.error}", file=sys.stderr)
    return 1 if result.failed else 0
