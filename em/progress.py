"""Progress that reaches the log file: ``done/total``, rate and ETA as logging lines.

A terminal bar (tqdm) is lost from ``evaluate.log`` and from a batch job's output file; these lines are
not. :class:`ProgressLog` logs one line when work starts, then at most every ``every_s`` seconds (and at
least every ``every_frac`` of the total), and one when it ends. Judging (``em.judge.base.run_judge``) and
sampling (``em.evaluate.run``, both backends; with generated tokens per second) use it. The tqdm bars stay
as they are on terminals; this runs beside them.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ProgressLog:
    """Logs ``<desc>: done/total (pct), rate/s[, tokens tok/s], elapsed, ETA`` lines to ``logger`` at INFO.

    Args:
        desc: what is counted (``judge gpt-4o``).
        total: the number of items (>= 0).
        logger: where the lines go (the stage's logger, which Hydra writes to ``<stage>.log``).
        every_s: seconds between lines at most (a line is also logged after each ``every_frac`` of the total).
        every_frac: fraction of the total between lines at most.
        clock: seconds (``time.monotonic``; tests pass a fake clock).
    """

    def __init__(self, desc: str, total: int, logger: logging.Logger, every_s: float = 30.0,
                 every_frac: float = 0.1, clock: Optional[Callable[[], float]] = None):
        self.desc, self.total, self.log = desc, int(total), logger
        self.every_s, self.every_frac = every_s, every_frac
        self.clock = clock or time.monotonic
        self.done = 0
        self.tokens = 0  # generated tokens counted by update(tokens=...); shown as tok/s once > 0
        self.t0 = self.clock()
        self._last_t, self._last_n = self.t0, 0
        self.lines: list[str] = []  # every line logged (tests and callers read them)
        self._emit(f"{self.desc}: 0/{self.total} to do")

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        self.log.info("%s", line)

    def line(self) -> str:
        """The current progress line: done/total, percent, rate per second (and tokens per second when
        tokens are counted), elapsed time and ETA (``?`` before any rate)."""
        elapsed = max(self.clock() - self.t0, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        toks = f", {self.tokens / elapsed:.1f} tok/s" if self.tokens else ""
        return (f"{self.desc}: {self.done}/{self.total} ({pct:.0f}%), {rate:.2f}/s{toks}, "
                f"elapsed {_duration(elapsed)}, ETA {eta}")

    def update(self, n: int = 1, tokens: int = 0) -> None:
        """Count ``n`` more finished items (and ``tokens`` generated tokens); log a line when ``every_s`` or
        ``every_frac`` has passed."""
        self.done += n
        self.tokens += int(tokens)
        now = self.clock()
        step = max(1, int(self.total * self.every_frac))
        if self.done >= self.total or now - self._last_t >= self.every_s or self.done - self._last_n >= step:
            self._last_t, self._last_n = now, self.done
            self._emit(self.line())


__all__ = ["ProgressLog"]
