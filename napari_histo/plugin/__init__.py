"""napari hooks named in ``napari.yaml``: the slide reader, the GeoJSON writers, sample data.

The reader and writers import no Qt or napari; they return or take layer data.
"""
