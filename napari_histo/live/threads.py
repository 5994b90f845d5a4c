"""Threads of live jobs: lower priority, relaying a generator.

Plain Python (no Qt, no napari); used by :meth:`napari_histo.live.controller.LiveController.job`.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Generator
from typing import Any

from napari_histo.generators import messages

__all__ = ["in_own_thread", "lower_priority"]


def lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by `nice` (Linux only; best effort)."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError:
        pass  # not permitted here: run at normal priority


def in_own_thread(make_gen, cancel: threading.Event, nice: int) -> Generator[Any, None, Any]:
    """Run generator ``make_gen()`` in a new lower-priority thread; relay what it yields."""
    items: queue.SimpleQueue = queue.SimpleQueue()

    def target() -> None:
        lower_priority(nice)
        for message in messages(make_gen):
            items.put(message)

    thread = threading.Thread(target=target, name="histo-job", daemon=True)
    thread.start()
    ended = False
    try:
        while True:
            kind, value = items.get()
            if kind == "yield":
                yield value
                continue
            ended = True
            if kind == "raise":
                raise value
            return value
    finally:
        if not ended:
            cancel.set()  # closed early: stop after the current batch
        thread.join()
