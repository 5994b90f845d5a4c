"""glibc malloc settings under which large torch tensors are not page-faulted again and again.

glibc serves an allocation above its mmap threshold (adaptive, at most 32 MiB)
with a fresh ``mmap`` and unmaps it on free, so every large activation of a
CPU forward pass is faulted in, zeroed by the kernel and given back, pass after
pass. A 2048-px large tile makes many such tensors: on the 2-core machine the
``bench infer --quick`` large-tile run took 6.5 M minor page faults and 14 s of
system time, against 0.58 M and 3.6 s with these settings, and ran about 10 %
faster (20–21 s → 18.6–18.8 s; the bare forwards 16.5 s → 14.7–15.0 s); CPU
training steps ran 7 % (the shipped members, one thread, bfloat16) to 35 % (wider
U-Nets, float32) faster.
dask's nanny makes it worse: its ``MALLOC_TRIM_THRESHOLD_=65536`` also turns
the adaptive threshold off, so every tensor above 128 KiB was mmapped (a CPU
forward pass took 2x as long).

Large mmap and trim thresholds keep freed tensors in the heap for the next
pass; freed memory still goes back to the system above 256 MiB. Large-tile
runs and the trainers set them; the viewer's process and blended-patch runs
(the viewer's jobs: tensors of a few MiB, which glibc's adaptive threshold
already keeps) are left alone: with these settings in the viewer's process
its pan gaps were no better (p95 51–63 ms against 46–49 ms, ``bench ui
--quick``) and it held 145 MB more.
The cost is memory held between passes: peak RSS of the 16k-px run 906–1156 MB
against 716–1054 MB without (three runs each; fragmentation varies run to run).
``NAPARI_HISTO_MALLOC=default`` in the environment leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import threading

__all__ = ["MALLOC_ENV", "release_free_memory", "tune_malloc"]

#: Set to "default" to keep glibc's own malloc settings.
MALLOC_ENV = "NAPARI_HISTO_MALLOC"

#: Allocations below this come from the heap, freed ones are reused (bytes).
MMAP_THRESHOLD_BYTES = 256 << 20
#: Free memory at the heap's top above this goes back to the system (bytes).
TRIM_THRESHOLD_BYTES = 256 << 20

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_lock = threading.Lock()
_tuned: bool | None = None


def tune_malloc() -> bool:
    """Set the thresholds once per process; True when glibc took them.

    Safe to call from anywhere, any number of times: only the first call acts.
    Not glibc (macOS, musl, Windows), or :data:`MALLOC_ENV` set to "default":
    nothing to do, False.
    """
    global _tuned
    with _lock:
        if _tuned is None:
            _tuned = _apply()
        return _tuned


def _apply() -> bool:
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "default":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return bool(ok)


def release_free_memory() -> bool:
    """Hand the pages malloc holds free back to the system (glibc ``malloc_trim``).

    Called when a job ends, in the viewer's process and the worker's: what a
    run freed would otherwise stay in the heap, and the viewer's RSS grew
    65–75 MB over five viewport runs (``bench ui --quick``) against 49 MB
    with it. A few milliseconds; not glibc: nothing, False.
    """
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(trim(0))
