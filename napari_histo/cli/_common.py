"""What the subcommands share: argument types, regions, models, the display, one-line errors."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_histo.errors import HistoError

XVFB_SCREEN = "-screen 0 1280x1024x24"


def _number(text: str, kind: type, minimum: float, strict: bool) -> float:
    """`text` as `kind` (int or float), finite and above `minimum` (or equal, unless strict)."""
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (value > minimum or (not strict and value == minimum)) or value == float("inf"):
        what = "an integer" if kind is int else "a number"
        bound = f"{'>' if strict else '>='} {minimum:g}"
        raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, 0, strict=True)


def _nonnegative_int(text: str) -> int:
    return _number(text, int, 0, strict=False)


def _nonnegative_float(text: str) -> float:
    return _number(text, float, 0.0, strict=False)


def _positive_float(text: str) -> float:
    return _number(text, float, 0.0, strict=True)


def _mpp(text: str) -> float:
    """µm per level-0 px inside :data:`napari_histo.frames.MPP_RANGE` (0.05-50), as
    :func:`~napari_histo.frames.check_mpp`: a value outside it (1e9, 0.0001) once made
    a run allocate tens of GB before failing."""
    from napari_histo.frames import check_mpp

    value = _number(text, float, 0.0, strict=True)
    try:
        return check_mpp(value, "--mpp")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def check_output_file(path: str | os.PathLike[str], *inputs: str | os.PathLike[str]) -> Path:
    """`path` as an output file a command may write, checked before any work.

    Raises :class:`HistoError` (one line) when it is one of the `inputs` (``nuclei
    SLIDE --csv SLIDE`` once replaced the slide with the table), lies inside a zarr
    store, is a folder, or its folder does not exist.
    """
    out = Path(path)
    resolved = out.resolve()
    for given in inputs:
        if given is not None and resolved == Path(given).resolve():
            raise HistoError(f"{out}: is an input of this command; give another output file")
    if any(part.endswith(".zarr") for part in resolved.parts[:-1]) or resolved.name == "zarr.json":
        raise HistoError(f"{out}: lies inside a zarr store; give a file outside it")
    if out.is_dir():
        raise HistoError(f"{out}: is a folder; give a file name")
    if not resolved.parent.is_dir():
        raise HistoError(f"{out}: its folder {resolved.parent} does not exist")
    return out


def _probability(text: str) -> float:
    """A threshold in (0, 1]."""
    value = _number(text, float, 0.0, strict=True)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value}")
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


def one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename:
        text = f"{err.filename}: {err.strerror or text}"
    return " ".join(text.split())
