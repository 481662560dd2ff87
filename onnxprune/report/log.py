"""The one place diagnostics are printed: a handler for the ``onnxprune`` loggers.

Library code only logs (``logging.getLogger(__name__)``) or appends to the report's warnings; it
never prints. The CLI installs this handler, which prints each record as one line on stderr
(``warning: ...``), above any progress bar.
"""

from __future__ import annotations

import logging

from .progress import write


class TerminalHandler(logging.Handler):
    """``level: message`` on stderr through :func:`progress.write`; tracebacks only at DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"{record.levelname.lower()}: {record.getMessage()}"
            if record.exc_info and self.level <= logging.DEBUG:
                line += "\n" + logging.Formatter().formatException(record.exc_info)
            write(line)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def install(debug: bool = False) -> TerminalHandler:
    """Print the package's log records (warnings and up; everything with ``debug``), replacing a
    handler installed before."""
    logger = logging.getLogger("onnxprune")
    for old in [h for h in logger.handlers if isinstance(h, TerminalHandler)]:
        logger.removeHandler(old)
    handler = TerminalHandler(logging.DEBUG if debug else logging.WARNING)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.WARNING)
    return handler
