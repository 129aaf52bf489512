"""Progress of a long encode on stderr: a bar on a terminal (tqdm: images/s, ETA), a one-line
summary every `interval` seconds otherwise (logs, CI), and nothing when quiet."""

from __future__ import annotations

import sys
import time
from typing import TextIO

# How often a non-terminal stream hears of progress: a log line per 30 s of a day-long job.
SUMMARY_INTERVAL_S = 30.0


def duration(seconds: float) -> str:
    """`1h 02m`, `3m 05s`, `42s`: as long as it needs to be read at a glance."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class ImageProgress:
    """`update(n)` after every `n` images; `total` images of which `done` were done before
    (a resumed run). Use as a context manager: leaving it prints the final summary."""

    def __init__(self, total: int, done: int = 0, quiet: bool = False,
                 stream: TextIO | None = None, interval: float = SUMMARY_INTERVAL_S,
                 bar: bool | None = None) -> None:
        self.total = total
        self.done = done
        self.first = done
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.interval = interval
        self.use_bar = (self.stream.isatty() if bar is None else bar) and not quiet
        self._bar = None
        self._start = self._last_line = time.monotonic()

    def __enter__(self) -> ImageProgress:
        self._start = self._last_line = time.monotonic()
        if self.use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, unit="img",
                             desc="pe-port: encode", file=self.stream, dynamic_ncols=True,
                             smoothing=0.1)
        return self

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
        elif not self.quiet and time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            print(f"pe-port: {self.summary()}", file=self.stream, flush=True)

    def rate(self) -> float:
        """Images per second in this process (a resume's earlier work does not count)."""
        return (self.done - self.first) / max(time.monotonic() - self._start, 1e-9)

    def summary(self) -> str:
        rate = self.rate()
        line = (f"{self.done:,}/{self.total:,} images ({self.done / max(self.total, 1):.0%}), "
                f"{rate:.1f} images/s")
        if rate > 0 and self.done < self.total:
            line += f", ETA {duration((self.total - self.done) / rate)}"
        return line

    def __exit__(self, kind, error, traceback) -> None:
        if self._bar is not None:
            self._bar.close()
        if not self.quiet and kind is None:
            elapsed = duration(time.monotonic() - self._start)
            print(f"pe-port: encoded {self.done - self.first:,} images in {elapsed} "
                  f"({self.rate():.1f} images/s)", file=self.stream, flush=True)
