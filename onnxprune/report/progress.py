"""Progress on the terminal: tqdm bars on stderr (rate and ETA where the total is known).

A bar appears only once its step has run for a couple of seconds (short steps stay quiet) and
only when stderr is a terminal: build logs and pipes stay clean, and so does ``--quiet``. Library
use is silent unless a caller turns it on with :func:`enable`. Lines printed while a bar is shown
go through :func:`write`, so the bar is redrawn below them instead of being torn.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")

_enabled = False

#: seconds a step runs before its bar is drawn
DELAY_S = 2.0


def enable(on: bool = True) -> None:
    """Show progress bars (the CLI turns this on unless ``--quiet``); a no-op without a TTY."""
    global _enabled
    _enabled = on and sys.stderr.isatty()


def enabled() -> bool:
    return _enabled


#: the bars open now (their lines must be moved out of the way of other output)
_open: list = []


def write(message: str) -> None:
    """Print a line on stderr above any progress bar shown (a bar still within its delay is not
    drawn by this either: tqdm would draw it and then not clear it)."""
    if any(time.time() - bar.start_t >= bar.delay for bar in _open):  # tqdm clocks with time.time
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)
    else:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


class Progress:
    """``with Progress("calibrating", total, unit="batch") as p: ... p.advance()`` — a bar, cleared at the end."""

    def __init__(self, label: str, total: int | None = None, every_s: float = 0.2, silent: bool = False,
                 unit: str = "it"):
        self.label, self.total, self.done = label, total, 0
        self._bar = None
        if _enabled and not silent:
            from tqdm import tqdm

            # the size from the terminal: tqdm's own probe of stderr can come back as -1 rows, and then
            # it draws nothing at all
            width, rows = shutil.get_terminal_size((100, 24))
            self._bar = tqdm(total=total, desc=label, unit=unit, file=sys.stderr, leave=False, delay=DELAY_S,
                             mininterval=every_s, ncols=width if width > 20 else 100, nrows=max(rows, 3))
            _open.append(self._bar)

    def advance(self, n: float = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            _open.remove(self._bar)
            self._bar.close()
            self._bar = None


def track(items: Iterable[T], label: str, total: int | None = None, unit: str = "it",
          size: Callable[[T], float] | None = None) -> Iterator[T]:
    """``for x in track(items, "label", total):`` — the loop with a bar; ``size(x)`` counts an item
    as several units (a wave of layers). The bar closes when the loop ends or is left."""
    with Progress(label, total, unit=unit) as bar:
        for item in items:
            yield item
            bar.advance(size(item) if size else 1)
