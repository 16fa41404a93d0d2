"""Progress of the search and training loops: tqdm bars on a terminal, and one line per interval (as
timm's train.py logs) when the output is a batch job's log file."""
from __future__ import annotations

import sys
import time
from typing import Optional


class Progress:
    """A drop-in for the ``tqdm(...)`` bars of the loops when the output is not a terminal (a batch job's log
    file): no bar frames, one line per ``interval_s`` seconds and one when the bar closes, as timm's train.py
    logs. :func:`progress` picks it or tqdm."""

    def __init__(self, iterable=None, *, desc: str = '', total: Optional[int] = None, initial: int = 0,
                 disable: bool = False, interval_s: float = 60.0, file=None, **_ignored):
        self.iterable, self.desc, self.n, self.disable = iterable, desc, initial, disable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, '__len__') else None)
        self.interval_s, self.file, self.postfix = interval_s, file, ''
        self._start = self._last = time.perf_counter()
        self._written = None  # (count, postfix) of the last line written

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:  # also when the loop breaks out early (the generator is closed)
            self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps; writes a line when ``interval_s`` passed since the last."""
        self.n += n
        if time.perf_counter() - self._last >= self.interval_s:
            self._write()

    def set_postfix(self, **values) -> None:
        """The values shown after the count (as tqdm's ``set_postfix``)."""
        self.postfix = ', '.join(f'{k}={v}' for k, v in values.items())

    def close(self) -> None:
        """Write the final line (once, and only if the last line written is not already it)."""
        if self._last is not None and self._written != (self.n, self.postfix):
            self._write()
        self._last = None

    def _write(self) -> None:
        self._last = time.perf_counter()
        self._written = (self.n, self.postfix)
        if self.disable:
            return
        count = f'{self.n}/{self.total}' if self.total else str(self.n)
        print(f"{self.desc}: {count} ({self._last - self._start:.0f} s){'; ' + self.postfix if self.postfix else ''}",
              file=self.file or sys.stderr, flush=True)


def progress(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` on a terminal, else a :class:`Progress` writing one line per interval."""
    if (kwargs.get('file') or sys.stderr).isatty():
        from tqdm.auto import tqdm
        return tqdm(iterable, **kwargs)
    return Progress(iterable, **kwargs)
