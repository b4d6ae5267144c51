"""Progress on stderr: a tqdm bar on a terminal, else plain log lines (every ~10% of the work
and at least every ``PLAIN_EVERY_S`` seconds), so that a log file shows how far a build got."""

from __future__ import annotations

import sys
import time

PLAIN_EVERY_S = 60.0


class _Plain:
    """Plain progress lines for logs (and where tqdm is not installed)."""

    def __init__(self, total: int, desc: str, initial: int = 0):
        self.total, self.desc, self.n, self._shown, self._t0 = total, desc, initial, -1, time.time()
        self._initial, self._last = initial, self._t0
        if initial:
            self._line(f"resuming at {initial}/{total}")

    def _line(self, extra: str = "") -> None:
        elapsed = time.time() - self._t0
        done = self.n - self._initial
        left = (self.total - self.n) * elapsed / done if done else None
        eta = f", about {left:.0f} s left" if left is not None and self.n < self.total else ""
        print(f"{self.desc}: {self.n}/{self.total} ({elapsed:.0f} s{eta}){' ' + extra if extra else ''}",
              file=sys.stderr, flush=True)
        self._last = time.time()

    def update(self, k: int = 1) -> None:
        self.n += k
        step = int(10 * self.n / max(1, self.total))
        if step != self._shown or time.time() - self._last >= PLAIN_EVERY_S:
            self._shown = step
            self._line()

    def close(self) -> None:
        pass


def progress(total: int, desc: str, initial: int = 0):
    """A progress bar with ``update(k)`` and ``close()``: tqdm when stderr is a terminal and tqdm
    is installed, else plain lines."""
    try:
        if not sys.stderr.isatty():
            raise ImportError
        from tqdm.auto import tqdm
    except ImportError:
        return _Plain(total, desc, initial)
    return tqdm(total=total, desc=desc, initial=initial, file=sys.stderr, dynamic_ncols=True, leave=False)
