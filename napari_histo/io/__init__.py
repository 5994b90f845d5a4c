"""Slide, pyramid, annotation and result-store I/O (no Qt, no napari)."""
