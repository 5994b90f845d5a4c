"""Viewer-side live inference: controller, persisted settings, overlay pyramids, the worker process.

No Qt and no napari import: the widgets drive these from the Qt thread.
Import the submodules: :mod:`.controller`, :mod:`.settings`, :mod:`.pyramid`,
:mod:`.threads`.
"""
