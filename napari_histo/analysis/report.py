"""The per-slide HTML report: one self-contained file that opens offline.

:func:`write_report` draws the figures (matplotlib Agg, embedded as base64
PNG) and the tables from a :class:`~napari_histo.analysis.measure.SlideMeasurements`
and images at thumbnail resolution; :func:`slide_report` gathers those images
(slide thumbnail, the run's probability and epistemic uncertainty) and the
provenance from a result run. The HTML has no external URL: styles are inline
and every text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_histo import __version__
from napari_histo._atomic import atomic_write_bytes
from napari_histo.analysis.results import Lesion, SlideMeasurements
from napari_histo.errors import ExportError
from napari_histo.io.store import ResultRun

__all__ = [
    "area_text",
    "lesion_mask",
    "render_report",
    "run_on_thumbnail",
    "run_provenance",
    "slide_report",
    "write_report",
]

PathLike = str | os.PathLike[str]

#: Largest side of the thumbnail figure, px.
FIGURE_PX = 900
#: A table cell shown right-aligned, as a number.
_NUMBER = re.compile(r"[-+]?[\d.,]+( %)?|–")
#: Outline colour of lesions on the thumbnail.
OUTLINE_COLOR = "#00e5ff"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1000px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;
border-bottom:1px solid #ccc;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;border:1px solid #ddd}
.muted{color:#666;font-size:.9em}
"""


# -- figures --------------------------------------------------------------------------
def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _resize_nearest(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`image` (2-D) sampled to `shape` by nearest neighbour (pixel centres)."""
    if image.shape[:2] == shape:
        return image
    rows = np.minimum((np.arange(shape[0]) + 0.5) * image.shape[0] / shape[0], image.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * image.shape[1] / shape[1], image.shape[1] - 1)
    return image[rows.astype(np.intp)[:, None], cols.astype(np.intp)[None, :]]


def _tumor_cmap():
    """Red colour map, transparent up to probability 0.2, then more and more opaque."""
    from matplotlib.colors import LinearSegmentedColormap

    stops = [
        (0.0, (1.0, 0.8, 0.0, 0.0)),
        (0.2, (1.0, 0.8, 0.0, 0.0)),
        (0.5, (1.0, 0.45, 0.0, 0.45)),
        (1.0, (0.85, 0.0, 0.0, 0.8)),
    ]
    return LinearSegmentedColormap.from_list("tumor", stops)


def thumbnail_png(
    thumbnail: np.ndarray,
    downsample: float,
    lesions: Sequence[Lesion],
    probability: np.ndarray | None = None,
) -> bytes:
    """PNG of the thumbnail with the tumor probability overlay and labelled lesion outlines.

    Parameters
    ----------
    thumbnail : ndarray of uint8, shape (h, w, 3)
        RGB image of the slide.
    downsample : float
        Level-0 px per thumbnail px (level-0 outlines are divided by it).
    lesions : sequence of Lesion
        Drawn as outlines labelled with their number.
    probability : ndarray of float, shape (h, w), optional
        Tumor probability on the thumbnail grid (NaN where not computed).
    """
    h, w = thumbnail.shape[:2]
    scale = min(1.0, FIGURE_PX / max(h, w))
    fig = _figure(max(2.0, w * scale / 100), max(2.0, h * scale / 100))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(thumbnail, interpolation="antialiased")
    if probability is not None:
        shown = np.ma.masked_invalid(np.asarray(probability, np.float32))
        ax.imshow(shown, cmap=_tumor_cmap(), vmin=0.0, vmax=1.0, interpolation="nearest")
    for lesion in lesions:
        outline = np.asarray(lesion.outline_l0, np.float64).reshape(-1, 2) / downsample
        if len(outline) >= 2:
            closed = np.vstack([outline, outline[:1]])
            ax.plot(closed[:, 0] - 0.5, closed[:, 1] - 0.5, color=OUTLINE_COLOR, lw=1.2)
        x, y, _, _ = lesion.bbox_l0
        ax.text(x / downsample, y / downsample - 2, str(lesion.label), color="black",
                fontsize=8, ha="left", va="bottom",
                bbox={"facecolor": "white", "alpha": 0.8, "pad": 1, "lw": 0})  # fmt: skip
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    return _png(fig)


def lesion_mask(shape: tuple[int, int], downsample: float, lesions: Sequence[Lesion]) -> np.ndarray:
    """Boolean ``shape`` mask of the pixels inside the lesion outlines (thumbnail grid)."""
    from skimage.draw import polygon

    mask = np.zeros(shape, bool)
    for lesion in lesions:
        outline = np.asarray(lesion.outline_l0, np.float64).reshape(-1, 2) / downsample
        if len(outline) >= 3:
            rr, cc = polygon(outline[:, 1] - 0.5, outline[:, 0] - 0.5, shape)
            mask[rr, cc] = True
    return mask


def histogram_png(epistemic: np.ndarray, tissue: np.ndarray, lesions: np.ndarray) -> bytes:
    """PNG histogram of epistemic uncertainty over tissue and inside lesions (pixel fractions)."""
    values = np.asarray(epistemic, np.float64)
    finite = np.isfinite(values)
    groups = [("tissue", tissue & finite, "0.45"), ("inside lesions", lesions & finite, "#d62728")]
    top = max((float(values[m].max()) for _, m, _ in groups if m.any()), default=1.0)
    edges = np.linspace(0.0, max(top, 0.01), 41)
    fig = _figure(6.0, 3.0)
    ax = fig.subplots()
    for name, mask, color in groups:
        if mask.any():
            weights = np.full(int(mask.sum()), 1.0 / mask.sum())
            ax.hist(values[mask], bins=edges, weights=weights, histtype="stepfilled",
                    alpha=0.45, color=color, label=f"{name} ({int(mask.sum())} px)")  # fmt: skip
    ax.set_xlabel("epistemic uncertainty (member disagreement)")
    ax.set_ylabel("fraction of pixels")
    if any(m.any() for _, m, _ in groups):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


# -- HTML -----------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def area_text(mm2: float | None) -> str:
    """An area in mm² to 3 significant digits without exponent (0.000612, 1.25, 312)."""
    if mm2 is None or not math.isfinite(mm2):
        return "–"
    if mm2 >= 100:
        return f"{mm2:.0f}"
    return np.format_float_positional(mm2, precision=3, unique=False, fractional=False, trim="-")


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """HTML table of already escaped cells; numbers (digits, "," "." "%" "–") right-aligned."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if _NUMBER.fullmatch(c) else f"<td>{c}</td>" for c in row
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _summary_rows(m: SlideMeasurements) -> list[tuple[str, str]]:
    burden = "–" if not math.isfinite(m.tumor_burden) else f"{100 * m.tumor_burden:.1f} %"
    rows = [
        ("Tissue area (mm²)", _num(m.tissue_area_mm2)),
        ("Tumor area (mm²)", _num(m.tumor_area_mm2)),
        ("Tumor bed area (mm²)", _num(m.tumor_bed_area_mm2)),
        ("Tumor burden (tumor / tumor bed)", burden),
        ("Slide size class", m.size_class),
        ("Lesions", _num(len(m.lesions))),
        ("Probability threshold", _num(m.threshold, 2)),
        ("Measured at (µm/px)", _num(m.mpp_um, 3)),
    ]
    nuclei = [
        ("Nuclei in tumor", m.nuclei_tumor, 0),
        ("Nuclei in non-tumor tissue", m.nuclei_non_tumor, 0),
        ("Nuclei density in tumor (per mm²)", m.nuclei_density_tumor, 1),
        ("Nuclei density in non-tumor tissue (per mm²)", m.nuclei_density_non_tumor, 1),
    ]
    rows += [(name, _num(value, digits)) for name, value, digits in nuclei if value is not None]
    return [(_e(a), _e(b)) for a, b in rows]


def _lesion_rows(lesions: Sequence[Lesion]) -> list[tuple[str, ...]]:
    return [
        tuple(
            _e(v)
            for v in (
                lesion.label,
                area_text(lesion.area_mm2),
                _num(lesion.longest_diameter_mm, 3),
                lesion.size_class,
                _num(lesion.mean_probability, 3),
                _num(lesion.mean_epistemic, 4),
            )
        )
        for lesion in lesions
    ]


def render_report(
    measurements: SlideMeasurements,
    *,
    thumbnail: np.ndarray,
    downsample: float,
    probability: np.ndarray | None = None,
    epistemic: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> str:
    """The report's HTML text; see :func:`write_report` for the parameters."""
    thumbnail = np.asarray(thumbnail)
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.dtype != np.uint8:
        raise ValueError(
            f"`thumbnail` must be uint8 (h, w, 3), got {thumbnail.dtype} {thumbnail.shape}"
        )
    if not downsample > 0:
        raise ValueError(f"`downsample` must be > 0, got {downsample}")
    shape = thumbnail.shape[:2]
    if probability is not None:
        probability = _resize_nearest(np.asarray(probability, np.float32), shape)
    m = measurements
    title = f"Slide report: {m.slide}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="muted">napari-histo {_e(__version__)}, '
        f"{_e(time.strftime('%Y-%m-%d %H:%M %Z'))}. Research use only, not for diagnosis.</p>",
        "<h2>Slide</h2>",
        _img(
            thumbnail_png(thumbnail, downsample, m.lesions, probability),
            f"{m.slide} with tumor probability and lesion outlines",
        ),
        '<p class="muted">Red: tumor probability; cyan: lesion outlines at probability ≥ '
        f"{_e(_num(m.threshold, 2))}, numbered as in the lesion table.</p>",
        "<h2>Summary</h2>",
        _table(_summary_rows(m)),
        "<h2>Lesions</h2>",
    ]
    if m.lesions:
        header = ["Lesion", "Area (mm²)", "Longest diameter (mm)", "Class",
                  "Mean probability", "Mean epistemic"]  # fmt: skip
        parts.append(_table(_lesion_rows(m.lesions), [_e(h) for h in header]))
    else:
        parts.append("<p>No lesion at this threshold.</p>")
    if epistemic is not None:
        epistemic = _resize_nearest(np.asarray(epistemic, np.float32), shape)
        if tissue is None:
            tissue = _thumbnail_tissue(thumbnail, epistemic)
        inside = lesion_mask(shape, downsample, m.lesions)
        parts += [
            "<h2>Epistemic uncertainty</h2>",
            _img(
                histogram_png(epistemic, np.asarray(tissue, bool), inside & tissue),
                "histogram of epistemic uncertainty",
            ),
        ]
    if provenance:
        parts += ["<h2>Models and provenance</h2>",
                  _table([(_e(k), _e(v)) for k, v in provenance.items()])]  # fmt: skip
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _thumbnail_tissue(
    thumbnail: np.ndarray, epistemic: np.ndarray, mpp: float | None = None
) -> np.ndarray:
    """Tissue mask of the thumbnail (`mpp` µm/px, default suits thumbnails); else all computed."""
    from napari_histo.tissue import tissue_mask

    mask = tissue_mask(thumbnail, mpp=mpp)
    return mask if mask.any() else np.isfinite(epistemic)


def write_report(
    path: PathLike,
    measurements: SlideMeasurements,
    *,
    thumbnail: np.ndarray,
    downsample: float,
    probability: np.ndarray | None = None,
    epistemic: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write the slide's HTML report: one self-contained file that opens offline.

    Parameters
    ----------
    path : str or PathLike
        Destination ``.html``, written atomically.
    measurements : SlideMeasurements
        What the report shows: summary and lesion tables, lesion outlines.
    thumbnail : ndarray of uint8, shape (h, w, 3)
        RGB image of the whole slide.
    downsample : float
        Level-0 px per thumbnail px (places level-0 outlines on it).
    probability, epistemic : ndarray of float, shape (h, w), optional
        Tumor probability (drawn over the thumbnail) and epistemic uncertainty
        (its histogram), on the thumbnail grid (other shapes are resampled to
        it); NaN where not computed.
    tissue : ndarray of bool, shape (h, w), optional
        Tissue on the thumbnail grid for the histogram; default: found in the
        thumbnail (:func:`napari_histo.tissue.tissue_mask`).
    provenance : mapping of str to str, optional
        Models, versions, hashes, settings, dates: shown as a table.

    Returns
    -------
    Path
        `path`.

    Raises
    ------
    ExportError
        When `path` cannot be written (message names it).
    """
    path = Path(path)
    text = render_report(
        measurements,
        thumbnail=thumbnail,
        downsample=downsample,
        probability=probability,
        epistemic=epistemic,
        tissue=tissue,
        provenance=provenance,
    )
    try:
        return atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as err:
        raise ExportError(f"{path}: cannot write the report ({err.strerror or err})") from err


# -- from a run -----------------------------------------------------------------------
def run_on_thumbnail(
    run: ResultRun, name: str, shape: tuple[int, int], downsample: float
) -> np.ndarray:
    """Result array `name` of `run` sampled on a thumbnail grid (NaN outside the result).

    Reads the coarsest pyramid level at least as fine as the thumbnail (the
    last one if none is), so memory stays about the thumbnail's size.

    Parameters
    ----------
    run : ResultRun
    name : str
        One of :data:`~napari_histo.io.store.RESULT_ARRAYS`.
    shape : (int, int)
        ``(h, w)`` of the thumbnail.
    downsample : float
        Level-0 px per thumbnail px.
    """
    geometry = run.geometry
    levels = run.levels(name)
    level = 0
    while level + 1 < len(levels) and geometry.downsample * 2 ** (level + 1) <= downsample:
        level += 1
    values = np.asarray(levels[level][...], np.float32)
    step = geometry.downsample * 2**level  # level-0 px per result px at `level`
    ys = ((np.arange(shape[0]) + 0.5) * downsample - geometry.origin_l0[1]) / step
    xs = ((np.arange(shape[1]) + 0.5) * downsample - geometry.origin_l0[0]) / step
    rows, cols = np.floor(ys).astype(np.intp), np.floor(xs).astype(np.intp)
    row_ok = (rows >= 0) & (rows < values.shape[0])
    col_ok = (cols >= 0) & (cols < values.shape[1])
    out = np.full(shape, np.nan, np.float32)
    out[np.ix_(row_ok, col_ok)] = values[np.ix_(rows[row_ok], cols[col_ok])]
    return out


def run_provenance(run: ResultRun, slide_mpp: float | None = None) -> dict[str, str]:
    """The run's models (name, version, sha256), settings and dates as report strings."""
    settings = run.settings
    attrs = dict(run.group.attrs)
    out: dict[str, str] = {}
    for k, model in enumerate(settings.get("models", []), start=1):
        digest = str(model.get("sha256", ""))[:16]
        out[f"Model {k}"] = f"{model.get('name')} {model.get('version')} (sha256 {digest}…)"
    if "tta" in settings:
        out["Test-time augmentations"] = str(len(settings["tta"]))
    for key, label in (("overlap", "Tile overlap"), ("model_mpp", "Model µm/px"),
                       ("tile_px", "Tile px"), ("class", "Class"), ("stain", "Stain")):  # fmt: skip
        if settings.get(key) is not None:
            out[label] = str(settings[key])
    out["Result µm/px"] = (
        "none (slide has no µm/px)" if run.geometry.mpp is None else (f"{run.geometry.mpp:g}")
    )
    if slide_mpp is not None:
        out["Slide µm/px"] = f"{slide_mpp:g}"
    out["Run"] = run.run_id
    for key, label in (("package_version", "Run software"), ("created", "Run created"),
                       ("finished", "Run finished"), ("device", "Run device")):  # fmt: skip
        if attrs.get(key):
            out[label] = (
                f"napari-histo {attrs[key]}" if key == "package_version" else str(attrs[key])
            )
    out["Report software"] = f"napari-histo {__version__}"
    out["Report date"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return out


def slide_report(
    run: ResultRun,
    slide_path: PathLike,
    measurements: SlideMeasurements,
    path: PathLike,
    *,
    max_side: int = 1024,
) -> Path:
    """Write the HTML report of `measurements` on `run` of the slide at `slide_path`.

    Reads the slide at about `max_side` px on its longer side (never coarser,
    :func:`napari_histo.tissue.read_downsampled`), samples the run's probability
    and epistemic uncertainty on it (:func:`run_on_thumbnail`) and takes the
    provenance from the run (:func:`run_provenance`).

    Parameters
    ----------
    run : ResultRun
        The tumor run `measurements` were made on.
    slide_path : str or PathLike
        The slide file.
    measurements : SlideMeasurements
    path : str or PathLike
        Destination ``.html``.
    max_side : int
        Longer side of the thumbnail, px (>= 64).

    Returns
    -------
    Path
        `path`.
    """
    from napari_histo.io.slide import Slide
    from napari_histo.tissue import read_downsampled

    if max_side < 64:
        raise ValueError(f"`max_side` must be >= 64, got {max_side}")
    with Slide(slide_path) as slide:
        wanted = max(1.0, max(slide.dimensions) / max_side)
        thumbnail, downsample = read_downsampled(slide, wanted, what="the report thumbnail")
        slide_mpp = slide.mpp
    shape = thumbnail.shape[:2]
    epistemic = run_on_thumbnail(run, "epistemic", shape, downsample)
    tissue_mpp = None if slide_mpp is None else slide_mpp * downsample
    return write_report(
        path,
        measurements,
        thumbnail=thumbnail,
        downsample=downsample,
        probability=run_on_thumbnail(run, "probability", shape, downsample),
        epistemic=epistemic,
        tissue=_thumbnail_tissue(thumbnail, epistemic, tissue_mpp),
        provenance=run_provenance(run, slide_mpp),
    )
