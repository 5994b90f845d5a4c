"""``python -m napari_histo.cli``: the ``napari-histo`` command."""

import sys

from napari_histo.cli import main

if __name__ == "__main__":
    sys.exit(main())
