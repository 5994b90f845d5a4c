"""The ``napari-histo`` command line.

Every subcommand reports bad input as one line on stderr naming the file or
argument and the problem, and exits with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from napari_histo.cli._common import needs_display, one_line, reexec_under_xvfb, resolve_members
from napari_histo.cli.apps import cmd_bench, cmd_demo
from napari_histo.cli.cohort import cmd_cohort
from napari_histo.cli.evaluate import cmd_evaluate
from napari_histo.cli.parser import build_parser
from napari_histo.cli.review import cmd_review
from napari_histo.cli.slides import cmd_infer, cmd_info, cmd_nuclei, cmd_synth
from napari_histo.cli.train import cmd_train
from napari_histo.errors import HistoError

__all__ = ["build_parser", "main", "needs_display", "reexec_under_xvfb", "resolve_members"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-histo`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        # One line per warning (e.g. an annotation skipped on glass), not a source excerpt.
        print(f"napari-histo {args.command}: warning: {one_line(message)}", file=sys.stderr)

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
        if args.command == "review":
            return cmd_review(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "cohort":
            return cmd_cohort(args)
        if args.command == "demo":
            return cmd_demo(args, argv)
        if args.command == "bench":
            return cmd_bench(args, argv)
    except (HistoError, ValueError, TypeError, OSError) as err:
        print(f"napari-histo {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-histo {args.command}: interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2
