"""Slide measurements, lesions, reports and cohort runs over result stores.

Modules, each importing only those above it:

- ``measure``: plain functions over arrays (tissue and tumor areas, tumor
  burden, lesions and their CAMELYON size class, nuclei density) and
  :func:`~napari_histo.analysis.measure.measure_run` over a result store;
- ``export``: lesions as QuPath GeoJSON, results as OME-Zarr;
- ``report``: the per-slide HTML report (opens offline);
- ``cohort``: many slides on a dask.distributed cluster, one task per slide.

Imports neither Qt nor napari.
"""
