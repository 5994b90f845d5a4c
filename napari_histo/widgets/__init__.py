"""napari dock widgets (Qt via qtpy). Import the submodules; nothing Qt is imported here."""

__all__: list[str] = []
