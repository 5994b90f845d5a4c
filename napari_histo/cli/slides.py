"""Subcommands on one slide: ``info``, ``synth``, ``infer`` and ``nuclei``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_histo.cli._common import (
    _parse_region,
    check_output_file,
    resolve_members,
)
from napari_histo.errors import HistoError
from napari_histo.generators import drive


def _out_dir(out: str | None) -> Path | None:
    """``--out``, created (with its parents) when it does not exist yet."""
    if out is None:
        return None
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise HistoError(f"{path}: --out must be a directory, and this is a file")
    path.mkdir(parents=True, exist_ok=True)
    return path


#: How ``info`` names each :attr:`Slide.mpp_source`.
_MPP_SOURCES = {"argument": "--mpp", "saved": "saved", "file": "from the file"}


def _set_mpp(args: argparse.Namespace) -> None:
    """``info --set-mpp F`` / ``--clear-mpp``: change the saved choice, say where."""
    import warnings

    from napari_histo.frames import check_mpp
    from napari_histo.io.mpp_choice import clear_mpp_choice, save_mpp_choice
    from napari_histo.io.slide import Slide

    if args.clear_mpp:
        removed = clear_mpp_choice(args.slide)
        print(f"removed {removed}" if removed else f"{args.slide}: no saved µm/px to remove")
        return
    value = check_mpp(args.set_mpp, "--set-mpp")  # before anything is opened or written
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's implausible value: being fixed now
        with Slide(args.slide) as slide:
            file_mpp = slide.file_mpp
    path = save_mpp_choice(
        args.slide, value, set_by="napari-histo info --set-mpp", file_mpp=file_mpp
    )
    print(f"saved {value:g} µm/px in {path}")


def _plan_finding_tissue(plan, args: argparse.Namespace, *plan_args, **plan_kwargs):
    """``plan(args.slide, *plan_args, **plan_kwargs)`` (``plan_inference`` or
    ``plan_nuclei``) with a "finding tissue" bar, or None after Ctrl-C (said in one line).

    Finding the tissue reads a whole slide without a coarse level: the bar shows
    only when that takes over a second.
    """
    from napari_histo._progress import TextProgress

    name = Path(args.slide).name
    bar = None if args.quiet else TextProgress(f"finding tissue in {name}", "bands", delay_s=1.0)
    try:
        return plan(args.slide, *plan_args, tissue_progress=bar, **plan_kwargs)
    except KeyboardInterrupt:
        print("\ninterrupted while finding tissue; nothing computed yet", file=sys.stderr)
        return None


def cmd_info(args: argparse.Namespace) -> int:
    from napari_histo.io.mpp_choice import mpp_choice_path
    from napari_histo.io.pyramid import open_pyramid
    from napari_histo.io.slide import Slide

    if args.set_mpp is not None or args.clear_mpp:
        _set_mpp(args)
    with Slide(args.slide) as slide:
        pyramid = open_pyramid(slide)
        levels = []
        for level in range(len(pyramid)):
            h, w = pyramid.levels[level].shape[:2]
            stored = level < pyramid.file_level_count
            tile = slide.tile_size(level) if stored else None
            levels.append(
                {
                    "level": level,
                    "width": w,
                    "height": h,
                    "downsample": pyramid.downsamples[level],
                    "tile": list(tile) if tile else None,
                    "chunk": list(pyramid.chunk_px[level]),
                    "stored": stored,
                }
            )
        info = {
            "path": str(slide.path),
            "vendor": slide.vendor,
            "width": slide.dimensions[0],
            "height": slide.dimensions[1],
            "mpp_x": slide.mpp_x,
            "mpp_y": slide.mpp_y,
            "mpp_source": slide.mpp_source,
            "file_mpp": slide.file_mpp,
            "mpp_file": str(mpp_choice_path(slide.path)) if slide.mpp_source == "saved" else None,
            "objective_power": slide.objective_power,
            "associated_images": list(slide.associated_names),
            "levels": levels,
        }
    if args.json:
        print(json.dumps(info))
        return 0
    if info["mpp_x"] is None:
        mpp = "unknown (no microns-per-pixel metadata; shown in pixels; save one with --set-mpp F)"
    else:
        source = _MPP_SOURCES[info["mpp_source"]]
        if info["mpp_file"]:
            source += f" in {info['mpp_file']}"
        mpp = f"{info['mpp_x']:.4f} x {info['mpp_y']:.4f} µm/px ({source})"
    print(f"slide:      {info['path']}")
    print(f"vendor:     {info['vendor']}")
    print(f"size:       {info['width']} x {info['height']} px")
    print(f"mpp:        {mpp}")
    print(f"objective:  {info['objective_power'] or 'unknown'}")
    print(f"associated: {', '.join(info['associated_images']) or 'none'}")
    print("levels:")
    print("  level   width  height  downsample  tile      chunk     stored")
    for lv in levels:
        tile = "x".join(map(str, lv["tile"])) if lv["tile"] else "untiled" if lv["stored"] else "-"
        chunk = "x".join(map(str, lv["chunk"]))
        print(
            f"  {lv['level']:>5} {lv['width']:>7} {lv['height']:>7} {lv['downsample']:>11.3f}  "
            f"{tile:<9} {chunk:<9} {'file' if lv['stored'] else 'synthetic'}"
        )
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".svs":
        raise ValueError(f"OUT must end in .svs, got {str(out)!r}")
    if out.exists() and not args.force:
        raise HistoError(f"{out}: exists; pass --force to overwrite")
    from napari_histo._progress import TextProgress
    from napari_histo.synthetic import write_synthetic_slide

    result = write_synthetic_slide(
        out,
        size=args.size,
        seed=args.seed,
        tile_px=args.tile,
        jpeg_quality=args.quality,
        artefacts=not args.no_artefacts,
        workers=args.workers,
        progress=None if args.quiet else TextProgress(f"writing {out.name}"),
    )
    print(f"wrote {result.path} ({result.width} x {result.height} px, seed {result.seed})")
    print(f"ground truth: {result.truth_path} (masks at downsample {result.truth_downsample})")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    import threading

    from napari_histo._progress import TextProgress
    from napari_histo.inference.engine import (
        EngineConfig,
        execute_inference,
        plan_inference,
        run,
    )
    from napari_histo.models import load_model

    region = _parse_region(args.region)
    config = EngineConfig(
        tta=args.tta,
        overlap=args.overlap,
        batch_size=args.batch,
        device=args.device,
        read_threads=args.threads,
        tiling=args.tiling,
        large_tile_px=args.large_tile,
        amp=not args.float32,
    )
    members = [load_model(card) for card in resolve_members(args.members, args.models_dir)]
    cancel = threading.Event()
    plan = _plan_finding_tissue(
        plan_inference, args, members, region=region, config=config,
        out_dir=_out_dir(args.out), mpp=args.mpp,
    )  # fmt: skip
    if plan is None:
        return 130
    generator = execute_inference(plan, cancel)
    # Made now, so its ETA counts from the end of planning.
    bar = None if args.quiet else TextProgress(f"inferring {Path(args.slide).name}")
    try:
        result = run(generator, (lambda p: bar(p.done, p.total)) if bar else None)
    except KeyboardInterrupt:
        # Between batches the generator is still alive: let it stop at the batch
        # boundary. If the interrupt landed inside it, its `finally` has already
        # flushed the finished cells, so the run is resumable either way.
        cancel.set()
        print("\ninterrupted: saving finished results…", file=sys.stderr)
        result = None
        try:
            result = run(generator)
        except KeyboardInterrupt:
            pass
        done = f"after {result.tiles_run} tiles" if result is not None else "early"
        print(f"stopped {done}; run the same command again to resume", file=sys.stderr)
        return 130
    store = result.run.store.path if result.run else None
    print(
        f"{'cancelled' if result.cancelled else 'done'}: {result.tiles_run} of "
        f"{result.tiles_total} tiles computed in {result.seconds:.1f} s on {result.device} "
        f"({result.precision}); "
        f"results in {store} (run {result.run.run_id if result.run else '-'})"
    )
    return 0


def cmd_nuclei(args: argparse.Namespace) -> int:
    import threading

    from napari_histo._progress import TextProgress
    from napari_histo.nuclei.export import export_csv, export_geojson
    from napari_histo.nuclei.store import execute_nuclei, plan_nuclei

    if not Path(args.slide).is_file():
        raise HistoError(f"{args.slide}: no such slide file")
    for output in (args.csv, args.geojson):
        if output:
            check_output_file(output, args.slide)
    region = _parse_region(args.region)
    cancel = threading.Event()
    plan = _plan_finding_tissue(
        plan_nuclei, args, method=args.method, region_l0=region,
        out_dir=_out_dir(args.out), mpp=args.mpp,
    )  # fmt: skip
    if plan is None:
        return 130
    generator = execute_nuclei(plan, cancel)
    bars: dict[str, TextProgress] = {}

    def show(update) -> None:
        unit = "levels" if update.stage == "pyramid" else "blocks"
        bar = bars.setdefault(update.stage, TextProgress(f"nuclei {update.stage}", unit))
        bar(update.done, update.total)

    try:
        result = drive(generator, None if args.quiet else show)
    except KeyboardInterrupt:
        cancel.set()
        generator.close()
        print("\ninterrupted: finished blocks are kept; run again to resume", file=sys.stderr)
        return 130
    run = result.run
    for path, export in ((args.csv, export_csv), (args.geojson, export_geojson)):
        if path:
            print(f"wrote {export(run, path)}")
    print(
        f"done: {result.nuclei} nuclei ({result.blocks_run} blocks computed in "
        f"{result.seconds:.1f} s); labels in {run.store.path} (nuclei run {run.run_id})"
    )
    return 0
