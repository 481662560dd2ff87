"""Progress on the terminal: one updating line on stderr, only when stderr is a terminal.

Silent when output goes to a file or a pipe (build logs stay clean) and when the command runs
with ``--quiet``; library use is silent unless a caller turns it on with :func:`enable`.
"""

from __future__ import annotations

import sys
import time

_enabled = False


def enable(on: bool = True) -> None:
    """Show progress lines (the CLI turns this on unless ``--quiet``); a no-op without a TTY."""
    global _enabled
    _enabled = on and sys.stderr.isatty()


class Progress:
    """``with Progress("calibrating", total) as p: ... p.advance()`` — a counter line, cleared at the end."""

    def __init__(self, label: str, total: int | None = None, every_s: float = 0.2, silent: bool = False):
        self.label, self.total, self.done = label, total, 0
        self.silent = silent
        self.every_s = every_s
        self._last = 0.0
        self._shown = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not _enabled or self.silent:
            return
        now = time.monotonic()
        if now - self._last < self.every_s and (self.total is None or self.done < self.total):
            return
        self._last = now
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        bar = ""
        if self.total:
            filled = int(20 * min(self.done, self.total) / self.total)
            bar = "[" + "#" * filled + "." * (20 - filled) + "] "
        sys.stderr.write(f"\r{self.label} {bar}{count}\033[K")
        sys.stderr.flush()
        self._shown = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
