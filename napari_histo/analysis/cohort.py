"""Many slides: one task per slide on a dask.distributed cluster, each with its own outputs.

Every slide gets a folder ``OUT/<slide name>/`` holding its result store
(``<slide name>.histo.zarr``, resumable), and once it is finished:
``lesions.geojson`` (QuPath annotations), ``report.html`` (opens offline),
``results.ome.zarr`` and ``measurements.json``. ``measurements.json`` is
written last: a slide whose file is there, for the same models and settings
(:func:`fingerprint`), is complete and skipped on the next run; any other
slide is (re)submitted and its store resumes where it stopped.

The job code (:func:`process_slide`) is the same in-process, on a
:class:`distributed.LocalCluster` of worker processes and on any scheduler a
lab already runs. A slide that fails (a missing or corrupt file, no tissue, a
model error) comes back as a failed :class:`SlideOutcome` with its error in one
line and does not stop the others; a worker that dies mid-slide (killed, out
of memory) has its task rescheduled by dask on another worker, where the store
resumes, so the result equals a clean run.

Imports neither Qt nor napari; ``distributed`` only when a cluster is used.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from napari_histo import __version__
from napari_histo._atomic import atomic_write_text, json_safe
from napari_histo._malloc import tune_malloc
from napari_histo.errors import HistoError

__all__ = [
    "EVENT_TOPIC",
    "CohortConfig",
    "CohortError",
    "CohortResult",
    "SlideOutcome",
    "connect",
    "fingerprint",
    "process_slide",
    "run_cohort",
    "slide_folders",
    "warm_worker",
    "write_cohort_csv",
]

#: Topic of the progress events workers send to the client.
EVENT_TOPIC = "napari-histo-cohort"
#: Seconds between two progress events of one slide (start and end always go).
EVENT_INTERVAL_S = 0.5
#: Seconds to wait for a scheduler before giving up.
CONNECT_TIMEOUT_S = 5.0
MEASUREMENTS_FILE = "measurements.json"
CSV_FILE = "cohort.csv"


class CohortError(HistoError):
    """A cohort cannot start: no slides, an unwritable output folder, no scheduler."""


@dataclass(frozen=True)
class CohortConfig:
    """What every slide of a cohort is run with (sent to the workers as is).

    Attributes
    ----------
    out_dir : str
        Output folder; one sub-folder per slide and ``cohort.csv``.
    cards : tuple of str
        Model card paths of the tumor ensemble (resolved on the client).
    nuclei : bool
        Also segment nuclei (classical backend) and count them in tumor and
        non-tumor tissue.
    threshold : float
        Tumor probability threshold of the measurements, in (0, 1].
    min_area_um2 : float
        Smallest lesion listed, µm² (about one tumor cell by default).
    mpp : float or None
        µm per level-0 px for slides without a plausible one of their own.
    torch_threads : int
        Torch threads per task (one per worker process on a shared machine).
    read_threads : int
        Tile-reading threads per task.
    outputs : bool
        Write the report, the lesion GeoJSON and the OME-Zarr copy (benchmarks
        that time only the inference turn it off).
    device : str
        Torch device of each task: "auto" (a worker's GPU when it has one), "cpu", ...
    """

    out_dir: str
    cards: tuple[str, ...]
    nuclei: bool = False
    threshold: float = 0.5
    min_area_um2: float = 100.0
    mpp: float | None = None
    torch_threads: int = 1
    read_threads: int = 1
    outputs: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.cards:
            raise ValueError("`cards` must name at least one model card")
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"`threshold` must be in (0, 1], got {self.threshold}")
        for name in ("torch_threads", "read_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class SlideOutcome:
    """How one slide of a cohort ended.

    Attributes
    ----------
    slide : str
        The slide's path as given.
    name : str
        Its folder name under the output folder.
    status : str
        "done", "skipped" (complete from an earlier run) or "failed".
    error : str
        One line saying why, when failed.
    seconds : float
        Wall time of the task (0 when skipped).
    tiles_run : int
        Tiles the engine computed in this task (fewer when it resumed).
    worker : str
        Address of the worker that ran it ("local" in-process).
    row : dict
        Its measurements as a flat CSV row (empty when failed).
    """

    slide: str
    name: str
    status: str
    error: str = ""
    seconds: float = 0.0
    tiles_run: int = 0
    worker: str = ""
    row: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CohortResult:
    """Outcomes in the order the slides were given, and where things are."""

    outcomes: tuple[SlideOutcome, ...]
    csv_path: Path
    seconds: float
    dashboard: str | None

    @property
    def failed(self) -> list[SlideOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


# -- per slide -------------------------------------------------------------------
def fingerprint(config: CohortConfig) -> str:
    """Hash of everything that changes a slide's outputs: model cards and settings."""
    digest = hashlib.sha256()
    for card in config.cards:
        digest.update(Path(card).read_bytes())
    settings = {
        "nuclei": config.nuclei,
        "threshold": float(config.threshold),
        "min_area_um2": float(config.min_area_um2),
        "mpp": config.mpp,
        "outputs": config.outputs,
        "version": __version__,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def slide_folders(slides: Sequence[str | os.PathLike[str]]) -> list[str]:
    """One folder name per slide: its file name, with a short path hash when names repeat."""
    names = [Path(s).name or str(s) for s in slides]
    counts = {n: names.count(n) for n in names}
    out = []
    for slide, name in zip(slides, names, strict=True):
        if counts[name] > 1:
            tag = hashlib.sha256(str(Path(slide).resolve()).encode()).hexdigest()[:6]
            name = f"{name}-{tag}"
        out.append(name)
    return out


def _slide_identity(slide: str) -> dict[str, Any] | None:
    """Cheap identity of a slide file (size, mtime, head/tail hash), None if unreadable."""
    from napari_histo.io.dicom import series_file
    from napari_histo.io.store import slide_identity

    try:
        path = series_file(Path(slide)) if Path(slide).is_dir() else Path(slide)
        stat = path.stat()
        identity = slide_identity(path, (0, 0), None)
    except (OSError, HistoError):
        return None
    return {**identity, "mtime_ns": stat.st_mtime_ns}


def _completed_row(folder: Path, stamp: str, slide: str) -> dict[str, Any] | None:
    """The measurements row of `slide` finished with the same fingerprint, else None.

    The slide must be the same file (path and identity): a rescanned slide, or
    another file of the same name run into the same folder, is run again.
    """
    try:
        data = json.loads((folder / MEASUREMENTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("fingerprint") != stamp:
        return None
    if data.get("slide") != slide or data.get("identity") != _slide_identity(slide):
        return None
    row = data.get("row")
    return row if isinstance(row, dict) else None


_MEMBERS: dict[tuple[str, ...], list[Any]] = {}
_MEMBERS_LOCK = threading.Lock()


def _members(cards: tuple[str, ...]) -> list[Any]:
    """The ensemble of `cards`, loaded once per process (workers keep it between slides)."""
    from napari_histo.models import load_model

    with _MEMBERS_LOCK:
        if cards not in _MEMBERS:
            _MEMBERS.clear()
            _MEMBERS[cards] = [load_model(Path(card)) for card in cards]
        return _MEMBERS[cards]


def process_slide(
    slide: str | os.PathLike[str],
    config: CohortConfig,
    *,
    name: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> SlideOutcome:
    """Infer, measure and write the outputs of one slide; the job of one cohort task.

    Parameters
    ----------
    slide : str or PathLike
        The slide file.
    config : CohortConfig
        Models and settings.
    name : str, optional
        Folder name under ``config.out_dir`` (default: the slide's file name).
    progress : callable, optional
        ``progress(stage, done, total)`` with stage "tumor" (tiles) or "nuclei" (blocks).
    cancel : threading.Event, optional
        Stops after the current batch; the store keeps what is finished.

    Returns
    -------
    SlideOutcome
        "failed" with one line for anything that goes wrong with this slide;
        only a dying process escapes (and dask reschedules the task).
    """
    import torch

    start = time.monotonic()
    slide = str(slide)
    name = name or Path(slide).name
    folder = Path(config.out_dir) / name
    stamp = fingerprint(config)
    try:
        if torch.get_num_threads() != config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        if not Path(slide).exists():  # a file, or a folder holding a DICOM WSI series
            raise HistoError(f"{slide}: no such slide file")
        folder.mkdir(parents=True, exist_ok=True)
        measurements, tiles_run = _infer_and_measure(slide, config, folder, progress, cancel)
        if cancel is not None and cancel.is_set():
            raise HistoError(f"{slide}: cancelled")
        row = json_safe(measurements.row())
        record = {
            "fingerprint": stamp,
            "slide": slide,
            "identity": _slide_identity(slide),
            "row": row,
            "measurements": measurements.to_dict(),
        }
        text = json.dumps(json_safe(record), indent=1, allow_nan=False)
        atomic_write_text(folder / MEASUREMENTS_FILE, text, backups=0)
    except Exception as err:  # one slide's failure must not stop the cohort
        text = " ".join((str(err) or type(err).__name__).split())
        if slide not in text:
            text = f"{slide}: {text}"
        return SlideOutcome(slide, name, "failed", error=text, seconds=time.monotonic() - start)
    return SlideOutcome(
        slide,
        name,
        "done",
        seconds=time.monotonic() - start,
        tiles_run=tiles_run,
        worker=_worker_address(),
        row=row,
    )


def _infer_and_measure(slide, config, folder, progress, cancel):
    from napari_histo.analysis.stored import measure_run
    from napari_histo.generators import drive
    from napari_histo.inference.engine import EngineConfig, infer_slide

    members = _members(config.cards)
    # Whole slides: large tiles where the members allow (1.5-1.8x faster on a CPU).
    engine = EngineConfig(read_threads=config.read_threads, device=config.device, tiling="auto")
    generator = infer_slide(
        slide, members, config=engine, out_dir=folder, cancel=cancel, mpp=config.mpp
    )
    result = drive(generator, progress and (lambda p: progress("tumor", p.done, p.total)))
    if result.cancelled or result.run is None:
        raise HistoError(f"{slide}: cancelled")
    nuclei_run = None
    if config.nuclei:
        from napari_histo.nuclei.store import iter_nuclei_to_store

        nuclei = drive(
            iter_nuclei_to_store(slide, out_dir=folder, cancel=cancel, mpp=config.mpp),
            progress and (lambda p: progress("nuclei", p.done, p.total)),
        )
        nuclei_run = nuclei.run
    from napari_histo.review.calibration import ensemble_temperature

    measurements = measure_run(
        result.run,
        slide,
        threshold=config.threshold,
        nuclei_run=nuclei_run,
        min_area_um2=config.min_area_um2,
        # Calibrated members (cards with a temperature) measure calibrated probability;
        # the cards are in the fingerprint, so a calibration reruns the slide.
        temperature=ensemble_temperature([m.card for m in members]),
    )
    if config.outputs:
        _write_outputs(result.run, slide, measurements, folder)
    return measurements, result.tiles_run


def _write_outputs(run, slide, measurements, folder: Path) -> None:
    from napari_histo.analysis.export import write_lesions_geojson, write_ome_zarr
    from napari_histo.analysis.report import slide_report

    write_lesions_geojson(folder / "lesions.geojson", measurements)
    write_ome_zarr(run, folder / "results.ome.zarr")
    slide_report(run, slide, measurements, folder / "report.html")


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def warm_worker(cards: tuple[str, ...]) -> int:
    """Prepare a worker process before the clock starts: malloc settings, models loaded."""
    tune_malloc()
    return len(_members(tuple(cards)))


def cluster_task(slide: str, config: CohortConfig, name: str) -> SlideOutcome:
    """:func:`process_slide` on a dask worker, sending progress events to the client."""
    from distributed import get_worker

    tune_malloc()
    worker = get_worker()
    last = [0.0]

    def emit(stage: str, status: str, done: int = 0, total: int = 0, error: str = "") -> None:
        event = {"slide": name, "stage": stage, "status": status, "done": done, "total": total}
        worker.log_event(EVENT_TOPIC, {**event, "error": error, "pid": os.getpid()})

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= EVENT_INTERVAL_S or done >= total:
            last[0] = now
            emit(stage, "running", done, total)

    emit("tumor", "started")
    outcome = process_slide(slide, config, name=name, progress=progress)
    emit("tumor", outcome.status, error=outcome.error)
    return outcome


# -- the cohort ------------------------------------------------------------------
def _check_temperature(cards: Sequence[str]) -> None:
    """Members calibrated apart (different temperatures) cannot be measured: say so now."""
    from napari_histo.models import read_card
    from napari_histo.review.calibration import ensemble_temperature

    try:
        ensemble_temperature([read_card(Path(card)) for card in cards])
    except ValueError as err:
        raise CohortError(f"{err}; pick versions calibrated together") from err


def _check_out_dir(out_dir: Path) -> None:
    """Create `out_dir` and prove it writable, or raise one CohortError line."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CohortError(f"{out_dir}: --out must be a directory, and this is a file")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CohortError(
            f"{out_dir}: output folder is not writable ({err.strerror or err})"
        ) from err


def connect(scheduler: str | None, workers: int, *, timeout_s: float = CONNECT_TIMEOUT_S):
    """A dask client: a LocalCluster of `workers` processes, or the scheduler at an address.

    Parameters
    ----------
    scheduler : str or None
        None or "local" for a new LocalCluster (one thread per worker process),
        else the scheduler's address (``tcp://host:8786``).
    workers : int
        Worker processes of a LocalCluster.
    timeout_s : float
        Seconds to wait for a remote scheduler.

    Returns
    -------
    (client, cluster)
        ``cluster`` is None for a remote scheduler; close both when done.

    Raises
    ------
    CohortError
        One line when the scheduler cannot be reached.
    """
    from distributed import Client, LocalCluster

    if scheduler in (None, "local"):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0" if _has_dashboard() else None,
            silence_logs=logging.ERROR,
        )
        try:
            return Client(cluster), cluster
        except BaseException:
            cluster.close()
            raise
    try:
        return Client(scheduler, timeout=f"{timeout_s}s"), None
    except (OSError, TimeoutError, ValueError) as err:
        raise CohortError(f"{scheduler}: cannot reach the dask scheduler ({err})") from err


def _has_dashboard() -> bool:
    """dask serves its dashboard pages only with bokeh installed."""
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def _dashboard(client, local: bool) -> str | None:
    """The dashboard link, None where there is none to open."""
    if local and not _has_dashboard():
        return None
    services = client.scheduler_info().get("services", {})
    return client.dashboard_link if "dashboard" in services else None


def run_cohort(
    slides: Sequence[str | os.PathLike[str]],
    config: CohortConfig,
    *,
    scheduler: str | None = "local",
    workers: int = 2,
    on_event: Callable[[Mapping[str, Any]], None] | None = None,
    client: Any = None,
) -> CohortResult:
    """Run every slide as one task on a dask cluster; complete slides are skipped.

    Parameters
    ----------
    slides : sequence of path
        Slide files; missing or corrupt ones end as "failed" outcomes.
    config : CohortConfig
        Models and settings, the same for every slide.
    scheduler : str or None
        "local" (default) or None: a LocalCluster of `workers` processes;
        otherwise a scheduler address.
    workers : int
        Worker processes of the LocalCluster.
    on_event : callable, optional
        Called on the client with each event, a dict: ``slide`` (folder name),
        ``status`` ("skipped", "started", "running", "done", "failed"),
        ``stage``, ``done``/``total`` (tiles or blocks), ``pid`` and
        ``worker`` when it came from a worker; and ``{"dashboard": link}``
        once the cluster is up.
    client : distributed.Client, optional
        Run on this client's cluster (left open) instead of connecting to
        `scheduler`; benchmarks pass a warmed-up one.

    Returns
    -------
    CohortResult
        Outcomes in the order of `slides`; ``cohort.csv`` written under
        ``config.out_dir`` (one row per slide, rewritten as slides finish).

    Raises
    ------
    CohortError
        No slides, an unwritable output folder or an unreachable scheduler.
    """
    if not slides:
        raise CohortError("no slides given")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"`workers` must be an integer >= 1, got {workers!r}")
    start = time.monotonic()
    _check_temperature(config.cards)
    out_dir = Path(config.out_dir).absolute()
    _check_out_dir(out_dir)
    if str(out_dir) != config.out_dir:  # workers elsewhere do not share our working directory
        config = replace(config, out_dir=str(out_dir))
    slides = [str(Path(s).absolute()) for s in slides]
    names = slide_folders(slides)
    stamp = fingerprint(config)
    emit = on_event or (lambda event: None)
    outcomes: dict[str, SlideOutcome] = {}
    todo = []
    for slide, name in zip(slides, names, strict=True):
        row = _completed_row(out_dir / name, stamp, slide)
        if row is not None:
            outcomes[name] = SlideOutcome(slide, name, "skipped", row=row)
            emit({"slide": name, "status": "skipped"})
        else:
            todo.append((slide, name))
    csv_path = out_dir / CSV_FILE

    def ordered() -> list[SlideOutcome]:
        pending = [SlideOutcome(s, n, "pending") for s, n in zip(slides, names, strict=True)]
        return [outcomes.get(o.name, o) for o in pending]

    dashboard = None
    if todo:
        with contextlib.ExitStack() as stack:
            if client is None:
                client, cluster = connect(scheduler, workers)
                stack.callback(client.close)
                if cluster is not None:
                    stack.callback(cluster.close)
            dashboard = _dashboard(client, local=scheduler in (None, "local"))
            emit({"dashboard": dashboard})
            client.subscribe_topic(EVENT_TOPIC, lambda event: emit({**event[1]}))
            stack.callback(client.unsubscribe_topic, EVENT_TOPIC)

            def finished(outcome: SlideOutcome) -> None:
                outcomes[outcome.name] = outcome
                write_cohort_csv(csv_path, ordered())  # a stopped cohort keeps its table

            _gather(client, todo, config, stamp, emit, finished)
    result = tuple(ordered())
    write_cohort_csv(csv_path, result)
    return CohortResult(result, csv_path, time.monotonic() - start, dashboard)


def _gather(client, todo, config, stamp, emit, finished) -> None:
    """Submit one task per slide and hand each outcome to `finished` as it comes."""
    from distributed import as_completed

    # A key unique to this run: on a shared scheduler another cohort's task with
    # the same slide name must not be taken for ours.
    run = uuid.uuid4().hex[:8]
    futures = {}
    for slide, name in todo:
        key = f"napari-histo-slide-{name}-{stamp}-{run}"
        future = client.submit(cluster_task, slide, config, name, pure=False, key=key)
        futures[future] = (slide, name)
    for future in as_completed(futures):
        slide, name = futures[future]
        try:
            outcome = future.result()
        except Exception as err:  # e.g. KilledWorker after repeated deaths
            text = " ".join((str(err) or type(err).__name__).split())
            outcome = SlideOutcome(slide, name, "failed", error=f"{slide}: {text}")
            emit({"slide": name, "status": "failed", "error": outcome.error})
        finished(outcome)


CSV_LEAD = ("slide", "path", "status", "error", "seconds", "tiles_run", "worker")


def write_cohort_csv(path: str | os.PathLike[str], outcomes: Sequence[SlideOutcome]) -> Path:
    """One row per slide: status columns, then every measurement column (atomic)."""
    columns: list[str] = list(CSV_LEAD)
    for outcome in outcomes:
        for key in outcome.row:
            if key not in columns and key != "slide":
                columns.append(key)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for outcome in outcomes:
        record = {k: v for k, v in outcome.row.items() if k != "slide"}
        lead = asdict(outcome)
        record.update(
            slide=outcome.name,
            path=outcome.slide,
            status=outcome.status,
            error=outcome.error,
            seconds=round(lead["seconds"], 2),
            tiles_run=outcome.tiles_run,
            worker=outcome.worker,
        )
        writer.writerow(record)
    return atomic_write_text(Path(path), buffer.getvalue(), backups=0)
