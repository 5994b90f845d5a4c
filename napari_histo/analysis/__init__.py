"""Slide measurements, lesions, reports and cohort runs over result stores.

Modules, each importing only those above it:

- ``results``: what a measurement produces (``Lesion``, ``SlideMeasurements``);
- ``measure``: plain functions over arrays (tissue and tumor areas, tumor
  burden, lesions and their CAMELYON size class, nuclei density);
- ``stored``: :func:`~napari_histo.analysis.stored.measure_run` over a result store;
- ``export``: lesions as QuPath GeoJSON, results as OME-Zarr;
- ``report``: the per-slide HTML report (opens offline);
- ``cohort``: many slides on a dask.distributed cluster, one task per slide.

Imports neither Qt nor napari.
"""
