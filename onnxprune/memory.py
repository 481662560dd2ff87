"""The process's resident memory, measured: what pruning a model left in its files costs.

The peak is the kernel's high-water mark of resident set size (``VmHWM``), whole process:
memory-mapped weight pages that were read count, as they do for the machine running it.
``ru_maxrss`` is the fallback where there is no ``/proc`` (it may include a parent's
memory before ``exec`` on Linux, hence not the first choice).
"""

from __future__ import annotations

import sys


def _status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss(at_least: int | None = None) -> int | None:
    """Bytes: the highest resident set size of this process so far (None where unknown), and
    at least ``at_least`` (a resident size measured earlier): the kernel updates its high-water
    mark only at some points and keeps approximate counters, so the mark can read a few pages
    below a size read earlier (60 kB seen)."""
    peak = _status("VmHWM")
    if peak is not None:
        return max(peak, at_least or 0)
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024, at_least or 0)


def current_rss() -> int | None:
    """Bytes resident now (None where unknown)."""
    return _status("VmRSS")
