"""A plain-text progress bar with ETA for the command line (stderr)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class TextProgress:
    """Callable ``progress(done, total)`` that draws a bar with rate and ETA.

    On a terminal the bar redraws in place at most 10 times a second; into a
    pipe or log it prints a line every 10 %. With `delay_s` it draws nothing
    until that long after it was made (a step that is usually quick stays silent).
    """

    def __init__(
        self,
        desc: str,
        unit: str = "tiles",
        stream: TextIO | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self.desc = desc
        self.unit = unit
        self.stream = stream or sys.stderr
        self.delay_s = delay_s
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.start < self.delay_s:
            return
        finished = total > 0 and done >= total
        if self._tty:
            if not finished and now - self._last_draw < 0.1:
                return
        else:
            decile = int(10 * done / total) if total else 0
            if decile == self._last_decile and not finished:
                return
            self._last_decile = decile
        self._last_draw = now
        elapsed = now - self.start
        frac = done / total if total else 0.0
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        bar = "#" * int(30 * frac)
        line = (
            f"{self.desc}: [{bar:<30}] {100 * frac:5.1f}% {done}/{total} {self.unit}, "
            f"{elapsed:5.1f} s elapsed, ETA {eta:5.1f} s"
        )
        if self._tty:
            self.stream.write("\r" + line + ("\n" if finished else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
