"""The live overlay layers: multiscale napari layers over in-memory result pyramids.

Each result array ("probability", "aleatoric", "epistemic") is a multiscale
Image layer over an :class:`~napari_histo.live.pyramid.OverlayPyramid`, and the
outline a multiscale Labels layer over thresholded levels. napari slices only
the visible part of one level of a multiscale layer, so:

* a finished cell rewrites its own pixels on every level, nothing else;
* a refresh re-slices about a screenful (not the whole result), and is skipped
  when none of the changed pixels lies in the region the layer has loaded
  (napari re-slices by itself when the view moves onto new pixels).

Complete whole-slide results are shown straight from the result store's
display pyramid (lazy zarr levels) until a job needs writable buffers.

Writable buffers are bounded whatever the slide size: float16, and for a
result larger than :data:`~napari_histo.live.pyramid.DISPLAY_CAP_PX` on a side
the layers' finest level is the first coarser level within the cap (the layers'
scale says so); the finished run is then shown from the store at full resolution.

Qt-thread code: every method here is called from the widget's handlers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_histo.frames import overlay_transform
from napari_histo.live.controller import OVERLAY_ARRAYS, CellUpdate
from napari_histo.live.pyramid import (
    DISPLAY_DTYPE,
    OUTLINE_PX,
    Box,
    OverlayPyramid,
    box_intersects,
    box_union,
    display_base,
    grow_box,
    outline_levels,
    outline_margin,
    outline_mask,
)
from napari_histo.review.calibration import calibrate

if TYPE_CHECKING:
    from napari_histo.io.store import ResultGeometry, ResultRun

__all__ = ["LAYER_NAMES", "TAG", "OverlayLayers", "probability_name", "tumor_colormap"]

#: Base layer name of each overlay.
LAYER_NAMES = {
    "probability": "tumor probability",
    "aleatoric": "aleatoric uncertainty",
    "epistemic": "epistemic uncertainty",
    "outline": "tumor outline",
}
#: Layer metadata key marking our layers; its value is the overlay key.
TAG = "napari_histo_live"
_KEYS = (*OVERLAY_ARRAYS, "outline")


def probability_name(label: str = "") -> str:
    """``"tumor probability"``, with what it shows in brackets when `label` is given."""
    return LAYER_NAMES["probability"] + (f" ({label})" if label else "")


def tumor_colormap(name: str = "histo tumor"):
    """The tumour probability colours (transparent at 0, dark red → yellow), for every dock."""
    from napari.utils.colormaps import Colormap

    return Colormap(
        colors=[[0.4, 0, 0, 0], [0.8, 0, 0.1, 0.15], [1, 0.2, 0, 0.65], [1, 1, 0.2, 0.9]],
        controls=[0, 0.3, 0.6, 1],
        name=name,
    )


def _colormaps():
    from napari.utils.colormaps import Colormap

    tumor = tumor_colormap()
    uncertainty = Colormap(
        colors=[[0, 0.2, 0.5, 0], [0, 0.6, 1, 0.5], [0.6, 1, 1, 0.9]],
        controls=[0, 0.5, 1],
        name="histo uncertainty",
    )
    return tumor, uncertainty


def _outline_block(block: np.ndarray, threshold: float) -> np.ndarray:
    return outline_mask(block >= threshold).astype(np.uint8)


def _lazy_outline(level, threshold: float):
    """The drawn outline of a stored probability level, computed as napari reads it."""
    import dask.array as da

    level = da.asarray(level)
    if min(level.shape) <= 2 * OUTLINE_PX:  # too thin to overlap (a very elongated run)
        return da.from_array(_outline_block(np.asarray(level), threshold))
    return level.map_overlap(
        _outline_block, depth=OUTLINE_PX, boundary="none", threshold=threshold, dtype=np.uint8
    )


class OverlayLayers:
    """The overlay layers of one slide in one viewer, and their buffers.

    Parameters
    ----------
    viewer : napari.Viewer
    mpp : (float, float)
        Level-0 µm per px of the slide, ``(y, x)``.
    units : tuple of str or None
        The slide layer's units, copied to the overlays.
    """

    def __init__(self, viewer, mpp: tuple[float, float], units=None) -> None:
        self.viewer = viewer
        self.mpp = mpp
        self.units = units
        self.geometry: ResultGeometry | None = None
        self.pyramids: dict[str, OverlayPyramid] = {}
        self.outline: list[np.ndarray] = []
        self.threshold = 0.5
        self.label = ""
        self.base = 0  # level of the layers' finest data (0 unless capped)
        self.from_store = False  # layers show lazy store levels, no writable buffers
        #: Calibration temperature of the members (cards): probability is shown
        #: calibrated when set (the outline at 0.5 is the same either way).
        self.temperature: float | None = None
        self._dirty: dict[str, Box | None] = {}
        self._stale_thumbnails: set[str] = set()
        #: Qt-thread ms of each :meth:`refresh` that refreshed something.
        self.refresh_costs_ms: list[float] = []
        #: How many layer refreshes were issued / skipped as off-view.
        self.refreshes = 0
        self.skipped = 0

    # -- layers ---------------------------------------------------------------
    def layer(self, key: str):
        """Our layer for `key` ("probability", …, "outline"), or None."""
        for layer in self.viewer.layers:
            if layer.metadata.get(TAG) == key:
                return layer
        return None

    def remove(self) -> None:
        """Remove every overlay layer of this slide from the viewer (e.g. its scale changed)."""
        for key in _KEYS:
            layer = self.layer(key)
            if layer is not None:
                self.viewer.layers.remove(layer)
        self.geometry = None
        self.pyramids = {}

    def _specs(self) -> dict[str, dict[str, Any]]:
        tumor, unc = _colormaps()
        hidden = dict(colormap=unc, contrast_limits=(0, 0.05), opacity=0.7, visible=False)
        return {
            "probability": dict(colormap=tumor, contrast_limits=(0, 1), opacity=0.7),
            "aleatoric": hidden,
            "epistemic": dict(hidden),
        }

    def _names(self) -> dict[str, str]:
        return {**LAYER_NAMES, "probability": probability_name(self.label)}

    def _replace_layers(
        self, geometry: ResultGeometry, data: dict[str, list], base: int = 0
    ) -> None:
        """(Re)create every overlay layer over `data` (levels per key, from level `base`)."""
        scale, translate = overlay_transform(geometry, self.mpp)
        if base:
            # A level-`base` pixel is centred on the middle of its f x f level-0 block.
            f = 2**base
            translate = tuple(t + (f - 1) / 2 * s for t, s in zip(translate, scale, strict=True))
            scale = tuple(s * f for s in scale)
        self.base = base
        names = self._names()
        specs = self._specs()
        active = self.viewer.layers.selection.active
        for key in _KEYS:
            layer = self.layer(key)
            meta = {TAG: key, "geometry": geometry.to_dict()}
            if layer is not None and layer.multiscale:
                # Keep the layer (and what the user set on it): swap its levels.
                layer.data = data[key]
                layer.scale, layer.translate = scale, translate
                layer.metadata = meta
                layer.name = names[key]
                continue
            if layer is not None:
                self.viewer.layers.remove(layer)
            common = dict(
                name=names[key],
                scale=scale,
                translate=translate,
                units=self.units,
                multiscale=True,
                metadata=meta,
            )
            if key == "outline":
                # Outlines come drawn (live.pyramid.outline_levels): no contour to
                # recompute on the Qt thread at every slice.
                self.viewer.add_labels(data[key], opacity=1.0, **common)
            else:
                self.viewer.add_image(data[key], blending="translucent", **common, **specs[key])
        if active is not None and active in self.viewer.layers:
            # Keep the slide layer selected: the user keeps panning the slide.
            self.viewer.layers.selection.active = active

    def ensure(
        self,
        geometry: ResultGeometry,
        *,
        arrays: dict[str, np.ndarray] | None = None,
        reset: bool = False,
    ) -> None:
        """Writable layers for `geometry`, filled from level-0 `arrays` (or zeroed with `reset`)."""
        if arrays is not None and self.temperature is not None:
            import dask.array as da

            calibrated = da.asarray(arrays["probability"]).map_blocks(
                calibrate, self.temperature, dtype=np.float32
            )
            arrays = {**arrays, "probability": calibrated}
        if self.geometry == geometry and self.pyramids and not self.from_store:
            if arrays is not None:
                for key in OVERLAY_ARRAYS:
                    self.pyramids[key].fill(arrays[key])
            elif reset:
                for pyramid in self.pyramids.values():
                    pyramid.fill(0)
            if arrays is not None or reset:
                outline_levels(
                    self.outline,
                    self.pyramids["probability"].levels,
                    self.threshold,
                    None,
                    self.base,
                )
                self._mark_all_dirty()
            return
        base = display_base(geometry.shape)
        from_levels = None
        if arrays is None and self.from_store and self.geometry == geometry:
            # Writable buffers from what is shown: level `base` of the stored run.
            from_levels = {key: self.layer(key).data[base] for key in OVERLAY_ARRAYS}
        self.geometry = geometry
        self.pyramids = {
            key: OverlayPyramid(geometry.shape, DISPLAY_DTYPE, base=base) for key in OVERLAY_ARRAYS
        }
        for key in OVERLAY_ARRAYS:
            if from_levels is not None:
                self.pyramids[key].fill_base(np.asarray(from_levels[key]))
            elif arrays is not None:
                self.pyramids[key].fill(arrays[key])
        prob = self.pyramids["probability"].levels
        self.outline = [np.zeros(level.shape, np.uint8) for level in prob]
        outline_levels(self.outline, prob, self.threshold, None, base)
        data = {key: self.pyramids[key].levels for key in OVERLAY_ARRAYS}
        data["outline"] = self.outline
        self.from_store = False
        self._replace_layers(geometry, data, base)
        self._dirty = {}

    @property
    def nbytes(self) -> int:
        """Bytes of the writable buffers (all overlays, all levels)."""
        return sum(p.nbytes for p in self.pyramids.values()) + sum(o.nbytes for o in self.outline)

    def show_run(self, run_: ResultRun) -> None:
        """Show a stored run's display pyramid lazily (read-only until :meth:`ensure`).

        With a :attr:`temperature`, the probability (and its outline) is shown calibrated.
        """
        import dask.array as da

        data: dict[str, list] = {key: run_.levels(key) for key in OVERLAY_ARRAYS}
        if self.temperature is not None:
            data["probability"] = [
                da.from_zarr(level).map_blocks(calibrate, self.temperature, dtype=np.float32)
                for level in data["probability"]
            ]
        data["outline"] = [_lazy_outline(level, self.threshold) for level in data["probability"]]
        self.geometry = run_.geometry
        self.pyramids, self.outline = {}, []
        self.from_store = True
        self._replace_layers(run_.geometry, data, 0)
        self._dirty = {}

    def set_label(self, label: str) -> None:
        """Say in the probability layer's name what it shows ("" for the plain name)."""
        if label == self.label:
            return
        self.label = label
        layer = self.layer("probability")
        if layer is not None:
            layer.name = probability_name(label)

    def set_threshold(self, threshold: float) -> None:
        """Redraw the outline at `threshold`."""
        self.threshold = float(threshold)
        if self.from_store and self.geometry is not None:
            layer = self.layer("outline")
            prob = self.layer("probability")
            if layer is not None and prob is not None:
                layer.data = [_lazy_outline(level, self.threshold) for level in prob.data]
            return
        if self.pyramids:
            outline_levels(
                self.outline, self.pyramids["probability"].levels, self.threshold, None, self.base
            )
            layer = self.layer("outline")
            if layer is not None:
                layer.refresh()

    # -- updates --------------------------------------------------------------
    def apply(
        self,
        cells: list[CellUpdate],
        keys: tuple[str, ...] = OVERLAY_ARRAYS,
        *,
        calibrated: bool = True,
    ) -> None:
        """Write finished `cells` of the arrays `keys` (and the outline with the probability).

        With `calibrated` and a :attr:`temperature`, the probability is calibrated first.
        """
        if not self.pyramids:
            return
        prob = self.pyramids["probability"].levels
        for cell in cells:
            box = None
            for key in keys:
                values = cell.values[key]
                if key == "probability" and calibrated and self.temperature is not None:
                    values = calibrate(values, self.temperature)
                box = self.pyramids[key].write(cell.rows, cell.cols, values)
                self._dirty[key] = box_union(self._dirty.get(key), box)
            if "probability" in keys and box is not None:
                outline_levels(self.outline, prob, self.threshold, box, self.base)
                grown = grow_box(box, outline_margin(len(prob), self.base), self.geometry.shape)
                self._dirty["outline"] = box_union(self._dirty.get("outline"), grown)

    def _mark_all_dirty(self) -> None:
        if self.geometry is not None:
            whole = (0, self.geometry.shape[0], 0, self.geometry.shape[1])
            self._dirty = dict.fromkeys(_KEYS, whole)

    @property
    def dirty(self) -> dict[str, Box]:
        """Level-0 result boxes changed since the last refresh, per overlay key."""
        return {k: v for k, v in self._dirty.items() if v is not None}

    @staticmethod
    def loaded_box(layer, base: int = 0) -> Box:
        """Level-0 result px of the region `layer` (finest data: level `base`) has loaded."""
        corners = np.asarray(layer.corner_pixels)[:, -2:]
        f = 2 ** (layer.data_level + base)
        (y0, x0), (y1, x1) = corners[0] * f, (corners[1] + 1) * f
        return int(y0), int(y1), int(x0), int(x1)

    def refresh(self) -> float:
        """Refresh the visible layers whose loaded region changed; returns the Qt-thread ms."""
        if not self._dirty:
            return 0.0
        t0 = time.perf_counter()
        issued = False
        for key, box in list(self._dirty.items()):
            layer = self.layer(key)
            if box is None or layer is None:
                continue
            self._stale_thumbnails.add(key)
            if layer.visible and box_intersects(box, self.loaded_box(layer, self.base)):
                layer.refresh(thumbnail=False)
                self.refreshes += 1
                issued = True
            else:
                self.skipped += 1  # napari re-slices when the view or visibility changes
        self._dirty = {}
        cost_ms = (time.perf_counter() - t0) * 1000
        if issued:
            self.refresh_costs_ms.append(cost_ms)
        return cost_ms

    def update_thumbnails(self) -> None:
        """Refresh the layers changed since the last call, thumbnails included (job end)."""
        self.refresh()
        for key in sorted(self._stale_thumbnails):
            layer = self.layer(key)
            if layer is not None and layer.visible:
                layer.refresh()
        self._stale_thumbnails.clear()

    # -- readout --------------------------------------------------------------
    def readout(self, position) -> str:
        """ "at cursor: prob …, alea …, epis …" at world `position` (µm), "" off the result."""
        layer = self.layer("probability")
        if layer is None:
            return ""
        pos = np.asarray(position[-2:], float)
        idx = np.round((pos - np.asarray(layer.translate)) / np.asarray(layer.scale)).astype(int)
        shape = layer.data[0].shape
        if np.any(idx < 0) or np.any(idx >= shape):
            return ""
        values = []
        for key in OVERLAY_ARRAYS:
            lyr = self.layer(key)
            if lyr is not None:
                values.append(f"{key[:4]} {float(lyr.data[0][idx[0], idx[1]]):.3f}")
        return "at cursor: " + ", ".join(values)
