"""glibc malloc settings under which large torch tensors are not page-faulted again and again.

glibc serves an allocation above its mmap threshold (adaptive, at most 32 MiB)
with a fresh ``mmap`` and unmaps it on free, so every large activation of a
CPU forward pass is faulted in, zeroed by the kernel and given back, pass after
pass. A 2048-px large tile makes many such tensors: interleaved ``infer_slide``
runs of the ``bench infer --quick`` slide took 1.8–2.2 M minor page faults and
20.4–21.3 s, against 0.44–0.48 M and 18.5–19.0 s with these settings (about
9 % faster; docs/benchmarks.md). CPU training steps ran 7 % (the shipped
members: one thread, bfloat16) to 37 % (wider U-Nets in float32, two threads)
faster. dask's nanny makes it worse: its ``MALLOC_TRIM_THRESHOLD_=65536`` also
turns the adaptive threshold off, so every tensor above 128 KiB was mmapped (a
CPU forward pass took 2x as long).

Large mmap and trim thresholds keep freed tensors in the heap for the next
pass; free memory at the top of the main heap still goes back to the system
above 256 MiB (threads' own heaps are at most 64 MiB each: larger blocks
allocated on other threads are still mmapped). The cost is memory held between
passes: 100–250 MB more peak RSS (fragmentation). Large-tile runs, cohort
workers and the trainers set them; the viewer's process and blended-patch
runs (the viewer's jobs: tensors of a few MiB, which the adaptive threshold
already keeps) are left alone: with these settings in the viewer's process its
pan gaps were no better (p95 51–63 ms against 46–49 ms, ``bench ui --quick``)
and it held 145 MB more. ``NAPARI_HISTO_MALLOC=default`` in the environment
keeps glibc's settings (on a dask worker: the nanny's, above).

With jemalloc or tcmalloc preloaded these calls reach glibc's unused
allocator: harmless, and reported as done.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

__all__ = ["MALLOC_ENV", "RssCap", "release_free_memory", "resident_bytes", "tune_malloc"]

#: Set to "default" to keep glibc's own malloc settings.
MALLOC_ENV = "NAPARI_HISTO_MALLOC"

#: Allocations below this come from the heap, freed ones are reused (bytes).
MMAP_THRESHOLD_BYTES = 256 << 20
#: glibc before about 2.35 refuses mmap thresholds above this (bytes).
MMAP_THRESHOLD_OLD_GLIBC_BYTES = 32 << 20
#: Free memory at the heap's top above this goes back to the system (bytes).
TRIM_THRESHOLD_BYTES = 256 << 20

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

#: How far a run's resident memory may grow past its level (see RssCap), bytes.
RSS_SLACK_BYTES = 128 << 20


@functools.cache
def _libc() -> Any | None:
    """glibc, or None (macOS, musl, Windows)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@functools.cache
def tune_malloc() -> bool:
    """Set the thresholds once per process; True when glibc took them.

    Safe to call from anywhere, any number of times: later calls return the
    first one's answer (two racing first calls set the same values twice).
    Not glibc (macOS, musl, Windows), or :data:`MALLOC_ENV` set to "default":
    nothing to do, False.
    """
    return _apply()


def _apply() -> bool:
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "default":
        return False
    libc = _libc()
    if libc is None:
        return False
    for threshold in (MMAP_THRESHOLD_BYTES, MMAP_THRESHOLD_OLD_GLIBC_BYTES):
        if libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1:
            break
    else:
        # Setting only the trim threshold would turn the adaptive mmap threshold
        # off at its 128 KiB start: worse than glibc's defaults.
        return False
    return libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1


def release_free_memory() -> None:
    """Hand the pages malloc holds free back to the system (glibc ``malloc_trim``).

    Called when a job ends, on the job's thread in the viewer's process and in
    the worker's loop: what a run freed would otherwise stay in the heap, and
    the viewer's RSS grew 65–75 MB over five viewport runs (``bench ui
    --quick``) against 52–53 MB with it. Under a millisecond with little to
    give back, about 12 ms after 180 MB; it holds malloc's locks meanwhile, so
    not on the Qt thread. Not glibc: nothing.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc/self/statm``), or None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class RssCap:
    """Keeps a long run's resident memory from growing with the run's length.

    With :func:`tune_malloc`'s thresholds freed tensors stay in the heap, and a
    large-tile run leaves more of it free after every block whose shapes it
    has not seen (fragmentation: on a 32k² slide the engine's heap held 1.1 GB
    free after 36 blocks against 0.75 GB after the first). :meth:`after_unit`,
    called after each block, hands the free pages back when the resident
    memory has grown more than `slack_bytes` past its *level*, the largest
    resident size seen after one block on a fresh heap (the first block, or the
    first after a trim). Trimming after every block instead cost about 10 % of
    a CPU run (the next block faults its pages in again); with this, a 32k²
    mosaic slide trimmed 3-6 times in 64 blocks and peaked 0.9-1.1 GB above
    the loaded models, against 1.5 GB before (docs/benchmarks.md). Where the resident
    size cannot be read it trims after every unit; not glibc: nothing.

    Parameters
    ----------
    slack_bytes : int
        Growth allowed past the level, bytes.
    """

    def __init__(self, slack_bytes: int = RSS_SLACK_BYTES) -> None:
        self.slack_bytes = int(slack_bytes)
        self.level = 0
        self.trims = 0
        self._fresh = True  # no unit since the start or the last trim

    def after_unit(self) -> None:
        """Call when a unit of work (a block) has finished and freed its temporaries."""
        if _libc() is None:
            return
        rss = resident_bytes()
        if rss is not None and self._fresh:
            self.level = max(self.level, rss)
            self._fresh = False
        elif rss is None or rss > self.level + self.slack_bytes:
            release_free_memory()
            self.trims += 1
            self._fresh = True
