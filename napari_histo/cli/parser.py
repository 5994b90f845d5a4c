"""The argument parser of the ``napari-histo`` command (every subcommand and option)."""

from __future__ import annotations

import argparse

from napari_histo import __version__
from napari_histo.cli._common import (
    _mpp,
    _nonnegative_float,
    _nonnegative_int,
    _positive_float,
    _positive_int,
    _probability,
)

FLOAT32_HELP = (
    "compute in float32 (default: mixed precision, bfloat16 on a CPU that has it in hardware "
    "and float16 on CUDA: 1.5x faster on such a CPU, probabilities within 0.04)"
)
MPP_HELP = (
    "µm per level-0 px (0.05-50) for this run, over the saved choice and the file's value "
    "(save one with `info SLIDE --set-mpp`)"
)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (the usage block is in ``--help``)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="napari-histo",
        description="Whole-slide histopathology in napari: view, infer, correct, retrain.",
    )
    parser.add_argument("--version", action="version", version=f"napari-histo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="print levels, mpp, vendor and tiling of a slide")
    p.add_argument("slide", help="slide file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    mpp = p.add_mutually_exclusive_group()
    mpp.add_argument(
        "--set-mpp", default=None, metavar="F",
        help="save F µm/px (0.05-50) beside the slide (SLIDE.mpp.json); every later "
        "command, dock and the viewer use it over the file's value",
    )  # fmt: skip
    mpp.add_argument(
        "--clear-mpp", action="store_true", help="delete the saved µm/px (SLIDE.mpp.json)"
    )

    p = sub.add_parser("synth", help="write a synthetic H&E slide with ground truth")
    p.add_argument("out", help="output .svs path (ground truth goes to OUT.truth.zarr)")
    p.add_argument("--size", type=_positive_int, default=8192, help="width = height, px")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed")
    p.add_argument("--tile", type=_positive_int, default=256, help="tile size, px")
    p.add_argument("--quality", type=_positive_int, default=85, help="JPEG quality 1-100")
    p.add_argument("--workers", type=_positive_int, default=None, help="processes")
    p.add_argument("--no-artefacts", action="store_true", help="no pen mark, fold or blur")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("infer", help="run the tumor ensemble on a slide (resumable)")
    p.add_argument("slide", help="slide file")
    p.add_argument("--mpp", type=_mpp, default=None, help=MPP_HELP)
    p.add_argument("--out", default=None, help="directory of the result store (default: beside)")
    p.add_argument("--region", default=None, help="x,y,w,h in level-0 px (default: whole slide)")
    p.add_argument("--members", nargs="+", default=None, help="model names or card .json paths")
    p.add_argument("--models-dir", default=None, help="directory of model cards")
    p.add_argument("--tta", type=int, choices=[1, 2, 4, 8], default=1, help="TTA transforms")
    p.add_argument(
        "--overlap", type=float, default=0.5, help="tile overlap fraction [0, 1) (patch tiling)"
    )
    p.add_argument(
        "--tiling", choices=["patch", "large", "auto"], default="auto",
        help="auto (default): large when a member has a measured receptive margin, else "
        "patch; large: large tiles, each output pixel computed about once by such members; "
        "patch: the card's patch, blended over --overlap",
    )  # fmt: skip
    p.add_argument(
        "--large-tile", type=_positive_int, default=None,
        help="largest side of a large tile, model px (memory grows with its square; "
        "default 1536 on a CPU, 4096 on a GPU)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps")
    p.add_argument("--float32", action="store_true", help=FLOAT32_HELP)
    p.add_argument("--batch", type=_positive_int, default=None, help="tiles per batch (auto)")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="tile reading threads (default: 2 on CPU, up to 8 beside a GPU)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "train", help="fine-tune the ensemble on a slide's annotations (new model versions)"
    )
    p.add_argument("slide", nargs="?", default=None, help="annotated slide file")
    p.add_argument("--mpp", type=_mpp, default=None, help=MPP_HELP)
    p.add_argument(
        "--annotations", default=None, help="GeoJSON/ASAP file (default: SLIDE.annotations.geojson)"
    )
    p.add_argument(
        "--granularity", choices=["pixel", "polygon", "ellipse", "bbox"], default="pixel",
        help="rasterise annotations as drawn (pixel) or as their ellipse / bounding box",
    )  # fmt: skip
    p.add_argument("--members", nargs="+", default=None, help="model names or card .json paths")
    p.add_argument("--epochs", type=_positive_int, default=5, help="passes over the patches")
    p.add_argument("--minutes", type=float, default=None, help="time budget instead of epochs")
    p.add_argument(
        "--freeze-epochs", type=_nonnegative_int, default=0, help="first epochs: encoder frozen"
    )
    p.add_argument("--synthetic", action="store_true", help="train from synthetic slides")
    p.add_argument(
        "--real", default=None, metavar="DATA_DIR",
        help="train the default models from the real-data folder (tiles with expert labels)",
    )  # fmt: skip
    p.add_argument(
        "--nuclei",
        action="store_true",
        help="with --synthetic: train the learned nuclei model instead of the tumor ensemble",
    )
    p.add_argument(
        "--out", default=None,
        help="weights + cards folder (default: user models dir; --synthetic: the bundled models, "
        "napari_histo/resources/models)",
    )  # fmt: skip
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="random seed")
    p.add_argument("--steps", type=_positive_int, default=None, help="steps per member")
    p.add_argument("--slide-size", type=_positive_int, default=8192, help="synthetic slide px")
    p.add_argument("--work", default=None, help="directory for the generated slides")

    p = sub.add_parser("nuclei", help="segment nuclei into the result store (resumable)")
    p.add_argument("slide", help="slide file")
    p.add_argument("--mpp", type=_mpp, default=None, help=MPP_HELP)
    p.add_argument("--method", choices=["classical", "learned"], default="classical")
    p.add_argument("--region", default=None, help="x,y,w,h in level-0 px (default: whole slide)")
    p.add_argument("--out", default=None, help="directory of the result store (default: beside)")
    p.add_argument("--csv", default=None, help="write per-nucleus measurements to this CSV")
    p.add_argument("--geojson", default=None, help="write QuPath-style detections here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("review", help="rank regions of a slide's latest complete run for review")
    p.add_argument("slide", help="slide file (run `napari-histo infer` on it first)")
    p.add_argument("--top", type=_positive_int, default=10, help="how many regions to list")
    p.add_argument(
        "--score", choices=["uncertainty", "epistemic", "boundary", "disagreement", "annotations"],
        default="uncertainty",
        help="total predictive uncertainty (default: the ensemble's entropy), epistemic "
        "uncertainty, probability near 0.5, member disagreement, or disagreement with the "
        "slide's annotations; each x area",
    )  # fmt: skip
    p.add_argument("--region-um", type=_positive_float, default=256.0, help="region side, µm")
    p.add_argument(
        "--annotations", default=None,
        help="annotations for --score annotations (default: SLIDE.annotations.geojson)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="directory of the result store (default: beside)")
    p.add_argument("--mpp", type=_mpp, default=None, help=MPP_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser(
        "evaluate", help="score tumor models on labelled tiles: Dice, IoU, AUROC, ECE"
    )
    p.add_argument("images", nargs="?", help="folder of RGB tiles (JPEG, PNG, TIFF, ...)")
    p.add_argument(
        "masks", nargs="?", help="folder of binary tumor masks (0/1 or 0/255), same file names"
    )
    p.add_argument("--slide", default=None, help="an annotated slide instead of tiles")
    p.add_argument(
        "--annotations", default=None,
        help="its annotations (GeoJSON or ASAP XML): tumor, non-tumor, ignore",
    )  # fmt: skip
    p.add_argument("--mpp", default=None, help="µm per pixel of the tiles, 0.05-50 (required)")
    p.add_argument("--members", nargs="+", default=None, help="model names or card .json paths")
    p.add_argument("--models-dir", default=None, help="directory of model cards")
    p.add_argument("--tta", default="1", help="TTA transforms: 1, 2, 4 or 8")
    p.add_argument(
        "--stain", choices=["card", "none", "macenko", "reinhard"], default="card",
        help="stain normalisation per tile (default: as the model cards say)",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="write tiles.csv, summary.json, reliability.png")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "cohort", help="run many slides on a dask cluster: measurements, reports, cohort CSV"
    )
    p.add_argument("slides", nargs="*", help="slide files")
    p.add_argument("--list", default=None, help="a file naming slides, one per line")
    p.add_argument(
        "--scheduler", default="local",
        help="dask scheduler address (tcp://host:8786), or local: a LocalCluster (default)",
    )  # fmt: skip
    p.add_argument(
        "--workers", type=_positive_int, default=2, help="worker processes of a local cluster"
    )
    p.add_argument("--out", default="cohort", help="output folder (default: ./cohort)")
    p.add_argument("--nuclei", action="store_true", help="also segment and count nuclei")
    p.add_argument("--members", nargs="+", default=None, help="model names or card .json paths")
    p.add_argument("--models-dir", default=None, help="directory of model cards")
    p.add_argument(
        "--threshold", type=_probability, default=0.5, help="tumor probability threshold (0, 1]"
    )
    p.add_argument(
        "--min-area", type=_nonnegative_float, default=100.0,
        help="smallest lesion listed, µm² (default 100: about one tumor cell)",
    )  # fmt: skip
    p.add_argument("--mpp", type=_mpp, default=None, help=MPP_HELP)
    p.add_argument(
        "--torch-threads", type=_positive_int, default=1, help="torch threads per worker"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mps, per worker")
    p.add_argument("--quiet", action="store_true", help="no progress display")

    p = sub.add_parser("demo", help="open napari with the sample slide")
    p.add_argument("--slide", default=None, help="slide to open instead of the sample")
    p.add_argument("--size", type=_positive_int, default=None, help="sample slide size, px")
    p.add_argument(
        "--screenshot", default=None, help="save a screenshot to this PNG and exit (headless)"
    )

    from napari_histo.bench import BENCHMARKS  # light: the benchmarks import lazily

    p = sub.add_parser("bench", help="benchmarks; the last line printed is JSON")
    p.add_argument("which", choices=list(BENCHMARKS), help="which benchmark")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.add_argument("--quick", action="store_true", help="small sizes, < 60 s")
    p.add_argument("--slide", default=None, help="(read, infer) use this slide")
    p.add_argument("--device", default="auto", help="(infer) auto, cpu, cuda[:N] or mps")
    p.add_argument(
        "--float32", action="store_true",
        help="(infer) float32 forwards instead of the device's mixed precision",
    )  # fmt: skip
    p.add_argument(
        "--formats", action="store_true",
        help="(read) the same content as SVS, generic TIFF (JPEG, ZSTD), DICOM; and the CMU slide",
    )  # fmt: skip
    return parser
