"""Throttled progress lines (done, rate, ETA) on stderr for long-running work, and per-stage timing."""

import collections
import contextlib
import sys
import time


def format_duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ProgressReporter:
    """Prints `what: done/total (pct) rate/s, ETA` at most every `interval` seconds, and at the end.

    Lines rather than carriage returns, because multi-day jobs are usually logged to files.
    """

    def __init__(self, what, total, unit="images", interval=10.0, stream=None, clock=time.monotonic):
        self._what = what
        self._total = total
        self._unit = unit
        self._interval = interval
        self._stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._start = clock()
        self._last_print = self._start
        self.done = 0

    def advance(self, count):
        self.done += count
        now = self._clock()
        if self.done >= self._total or now - self._last_print >= self._interval:
            self._last_print = now
            self._stream.write(self.line(now) + "\n")
            self._stream.flush()

    def exclude(self, count):
        """Takes work that turned out not to be needed (e.g. reused shards) out of the total and the ETA."""
        self._total -= count

    def line(self, now=None):
        elapsed = max((now if now is not None else self._clock()) - self._start, 1e-9)
        rate = self.done / elapsed
        percent = 100.0 * self.done / self._total if self._total else 100.0
        remaining = self._total - self.done
        eta = format_duration(remaining / rate) if rate > 0 else "unknown"
        if remaining <= 0:
            eta = "done in " + format_duration(elapsed)
        else:
            eta = "ETA " + eta
        return (f"{self._what}: {self.done:,}/{self._total:,} {self._unit} ({percent:.1f}%), "
                f"{rate:,.1f} {self._unit}/s, {eta}")


class StageTimes:
    """Seconds spent per named stage (read, verify, ...), summed over many calls."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)

    @contextlib.contextmanager
    def stage(self, name):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
