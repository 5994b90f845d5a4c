"""Atomic file writes: a temporary file in the same directory, fsync, rename.

Readers see the old file or the new one, never a partial one, also after a
crash or SIGKILL mid-write; optional rotating backups keep earlier versions.
New files get the mode ``open()`` would give them (umask applied), not
``mkstemp``'s private 0600.
"""

from __future__ import annotations

import math
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]

__all__ = ["atomic_write_bytes", "atomic_write_text", "default_file_mode", "json_safe"]


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes, backups: int = 0) -> Path:
    """Replace `path` with `data` so that it is never partial or missing.

    The data goes to a temporary file in the same directory, is fsynced, and is
    renamed over `path`. Before that, earlier versions rotate to ``path.1``
    (newest) … ``path.<backups>`` (oldest); ``path.1`` is made as a hard link
    (or a copy) of the current file, so `path` itself always exists.

    Parameters
    ----------
    path : str or PathLike
        Destination file.
    data : bytes
        Complete new content.
    backups : int
        How many previous versions to keep (0 keeps none).

    Returns
    -------
    Path
        `path`.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; these are shared files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if backups > 0 and path.exists():
            for k in range(backups - 1, 0, -1):
                older = path.with_name(f"{path.name}.{k}")
                if older.exists():
                    os.replace(older, path.with_name(f"{path.name}.{k + 1}"))
            link = path.with_name(f".{path.name}.{uuid.uuid4().hex}.bak")
            try:
                os.link(path, link)
            except OSError:  # no hard links here (FAT, some shares): copy instead
                link.write_bytes(path.read_bytes())
            os.replace(link, path.with_name(f"{path.name}.1"))
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: PathLike, text: str, backups: int = 3) -> Path:
    """:func:`atomic_write_bytes` of `text` encoded as UTF-8 (default: 3 backups)."""
    return atomic_write_bytes(path, text.encode("utf-8"), backups=backups)


def json_safe(value: Any) -> Any:
    """`value` with NaN and infinities as None, recursively: strict JSON has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
