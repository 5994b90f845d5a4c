"""Annotations: the model, polygon validity, granularity conversions, layer data, crops,
and annotations from model probability (no Qt, no napari).

Import the submodules: :mod:`.model` (Annotation, classes, bbox/ellipse/polygon
conversions, rasterising), :mod:`.polygons`, :mod:`.layers` (napari layer data
in bulk), :mod:`.crop` (pixel-label crops), :mod:`.from_probability`.
"""
