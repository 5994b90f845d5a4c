"""Nuclei: classical and learned segmentation, measurements, edits, evaluation, and the
whole-slide job (blocks, store, export). No Qt, no napari.

Import the submodules: :mod:`.classical` (segment_nuclei, segment_region),
:mod:`.learned` (HoVer-Net post-processing), :mod:`.features`, :mod:`.edit`,
:mod:`.evaluate`, :mod:`.store` (whole slide into the result store),
:mod:`.blocks`, :mod:`.export`.
"""
