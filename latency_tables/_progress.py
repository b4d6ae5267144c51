"""Progress bars on stderr: tqdm when installed, else a plain line every ~10%."""

from __future__ import annotations

import sys
import time


class _Plain:
    """Minimal stand-in for tqdm (the GPU image may not ship it)."""

    def __init__(self, total: int, desc: str, initial: int = 0):
        self.total, self.desc, self.n, self._shown, self._t0 = total, desc, initial, -1, time.time()

    def update(self, k: int = 1) -> None:
        self.n += k
        step = int(10 * self.n / max(1, self.total))
        if step != self._shown:
            self._shown = step
            print(f"{self.desc}: {self.n}/{self.total} ({time.time() - self._t0:.0f} s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def progress(total: int, desc: str, initial: int = 0):
    """A progress bar with ``update(k)`` and ``close()``."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Plain(total, desc, initial)
    return tqdm(total=total, desc=desc, initial=initial, file=sys.stderr, dynamic_ncols=True, leave=False)
