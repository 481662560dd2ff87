"""Temporary files beside an output, and what happens to them when the run is stopped.

Every output is written to a temporary file in its folder and renamed over the target, so a
reader never sees half a file. These helpers make sure the temporary file never outlives the
run: its name fits the folder's file-name limit whatever the target's length, it is removed on
any exception, and SIGTERM, SIGINT and SIGHUP (:func:`signals_handled`) remove it before the process
exits.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: Temporary files created and not yet renamed or removed, by path.
_LIVE: set[str] = set()
#: Temporary folders (for tools that write files of their own), removed whole.
_LIVE_DIRS: set[str] = set()
#: File-name limit where the folder does not say (Linux, macOS and Windows all allow 255).
DEFAULT_NAME_MAX = 255
_RANDOM_CHARS = 8  # from secrets.token_hex(4)
#: What stops a run from outside: kill and CI cancellation, Ctrl-C, a closed terminal.
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))


class Interrupted(BaseException):
    """A stopping signal arrived: unwind (every ``finally`` runs) and exit with 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_code = 128 + signum


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name (in bytes) the file system of ``folder`` allows."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError, TypeError):
        return DEFAULT_NAME_MAX


def temp_name(target_name: str, limit: int = DEFAULT_NAME_MAX) -> str:
    """``.<target name>.<random>.tmp``, the target name cut so that the whole fits ``limit`` bytes."""
    tail = f".{secrets.token_hex(_RANDOM_CHARS // 2)}.tmp"
    room = limit - 1 - len(tail)
    head = target_name.encode("utf-8", "surrogateescape")[:max(room, 0)]
    return "." + head.decode("utf-8", "ignore") + tail


@contextmanager
def temp_beside(target: Path) -> Iterator[tuple[int, str]]:
    """A new file (open descriptor, path) in ``target``'s folder, removed when the block ends
    unless the block renamed it (over ``target``)."""
    limit = name_max(target.parent)
    while True:
        path = os.path.join(target.parent, temp_name(target.name, limit))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            continue
    _LIVE.add(path)
    try:
        yield fd, path
    finally:
        _LIVE.discard(path)
        _remove(path)


@contextmanager
def temp_folder(parent: Path, label: str) -> Iterator[Path]:
    """A new private folder ``.<label>.<random>.tmp`` in ``parent``, removed with everything in it
    when the block ends or a stopping signal arrives: for tools that write temporary files of
    their own, so that those stay beside the output and never outlive the run."""
    limit = name_max(parent)
    while True:
        path = os.path.join(parent, temp_name(label, limit))
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            continue
    _LIVE_DIRS.add(path)
    try:
        yield Path(path)
    finally:
        _LIVE_DIRS.discard(path)
        shutil.rmtree(path, ignore_errors=True)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:  # nothing more can be done; the error that stopped the run matters more
        pass


def _on_signal(signum: int, frame) -> None:
    for path in list(_LIVE):  # first, in case unwinding is cut short by a second signal
        _LIVE.discard(path)
        _remove(path)
    for path in list(_LIVE_DIRS):
        _LIVE_DIRS.discard(path)
        shutil.rmtree(path, ignore_errors=True)
    raise Interrupted(signum)


@contextmanager
def signals_handled() -> Iterator[None]:
    """Within the block, SIGTERM, SIGINT and SIGHUP stop the run by an exception (:class:`Interrupted`),
    after removing the temporary files; the previous handlers are back afterwards. For the main
    thread of a command-line run: a library leaves the process's signal handling alone."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:  # ignored (nohup, a shell's background job): left so
            signal.signal(signum, _on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
