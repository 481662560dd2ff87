"""The files one run reads and writes, checked against each other before any work.

An output must never replace a file the run reads (the model, its external data, calibration
data, a latency table, the config), nor another output of the same run: a report written over
the model, or the model over its own weights, loses the user's file. Paths are compared as
resolved paths and, where the files exist, as the same file (symlinks, hard links).
Every command builds a :class:`RunFiles` and calls :meth:`RunFiles.check` first.
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInputError
from .tempfiles import name_max


@dataclass(frozen=True)
class _Entry:
    what: str  # how a message names it: "the input model", "--report"
    path: Path
    resolved: Path
    inode: tuple[int, int] | None  # (st_dev, st_ino) where the file exists
    only_if_large: bool = False  # written only for models over the external-data threshold


def _entry(what: str, path: Path, resolved: Path | None = None, stat: os.stat_result | None = None,
           only_if_large: bool = False) -> _Entry:
    if stat is None:
        try:
            stat = os.stat(path)
        except OSError:
            stat = None
    return _Entry(what, Path(path), resolved or Path(os.path.realpath(path)),
                  (stat.st_dev, stat.st_ino) if stat is not None else None, only_if_large)


@dataclass
class RunFiles:
    """What a run reads and what it writes; :meth:`check` refuses any output that is an input
    or another output."""

    reads: list[_Entry] = field(default_factory=list)
    writes: list[_Entry] = field(default_factory=list)

    def read(self, what: str, path: str | os.PathLike | None) -> RunFiles:
        if path is not None:
            check_regular(what, Path(path))
            self.reads.append(_entry(what, Path(path)))
        return self

    def read_model(self, path: str | os.PathLike, what: str = "the input model") -> RunFiles:
        """The model file and every external-data file it names."""
        self.read(what, path)
        for data in external_data_files(Path(path)):
            self.read(f"{what}'s external data", data)
        return self

    def read_data(self, what: str, path: str | os.PathLike | None) -> RunFiles:
        """A data file, or every file in a data folder (calibration data)."""
        if path is None:
            return self
        path = Path(path)
        self.read(what, path)
        if path.is_dir():
            folder = Path(os.path.realpath(path))
            with os.scandir(path) as entries:
                for e in entries:
                    try:
                        st = e.stat()
                    except OSError:
                        continue
                    _refuse_special(what, Path(e.path), st)
                    if stat.S_ISREG(st.st_mode):
                        resolved = Path(os.path.realpath(e.path)) if e.is_symlink() else folder / e.name
                        self.reads.append(_entry(what, Path(e.path), resolved, st))
        return self

    def write(self, flag: str, path: str | os.PathLike | None) -> RunFiles:
        if path is not None:
            self.writes.append(_entry(flag, Path(path)))
        return self

    def write_model(self, path: str | os.PathLike, flag: str = "-o") -> RunFiles:
        """The output model and the external-data file written beside it for large models."""
        path = Path(path)
        self.write(flag, path)
        self.writes.append(_entry(f"{flag} {path}'s external data", path.with_name(path.name + ".data"),
                                  only_if_large=True))
        return self

    def check(self) -> None:
        """One-line :class:`BadInputError` (exit 2) for the first output that cannot be written
        or would replace an input or another output."""
        for i, w in enumerate(self.writes):
            for r in self.reads:
                if _same(w, r):
                    raise BadInputError(f"{w.what} {w.path}: is {r.what}{_aka(w, r)}; an output never replaces "
                                        "a file the run reads")
            for other in self.writes[:i]:
                if _same(w, other):
                    raise BadInputError(f"{w.what} {w.path}: is also where {other.what} goes{_aka(w, other)}; "
                                        "each output needs its own file")
        for w in self.writes:
            if not w.only_if_large:
                _check_writable(w)


def check_regular(what: str, path: Path) -> None:
    """:class:`BadInputError` where ``path`` exists and is neither a file nor a folder (see below)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return  # missing: the reader says so
    _refuse_special(what, path, st)


def _refuse_special(what: str, path: Path, st: os.stat_result) -> None:
    """A FIFO, socket or device is not a file to read: opening a FIFO waits for a writer forever,
    a device such as /dev/zero never ends."""
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return
    kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
    raise BadInputError(f"{path}: {what} is {kind}, not a regular file")


def _aka(a: _Entry, b: _Entry) -> str:
    return "" if str(a.path) == str(b.path) else f" ({b.path})"


def _same(a: _Entry, b: _Entry) -> bool:
    return a.resolved == b.resolved or (a.inode is not None and a.inode == b.inode)


def _check_writable(w: _Entry) -> None:
    """What can be told before any work: a legal name, not a folder, its parent not a file."""
    existing = next((p for p in w.path.parents if _exists(p)), Path("."))
    limit = name_max(existing)
    for part in w.path.parts:
        if len(os.fsencode(part)) > limit:
            raise BadInputError(f"{w.what} {w.path}: a name in it is {len(os.fsencode(part))} bytes long, "
                                f"over the file system's limit of {limit}")
    if w.path.is_symlink():  # the rename would replace the link (/dev/stdout...), not write through it
        raise BadInputError(f"{w.what} {w.path}: is a symbolic link; give the path of the file itself")
    if w.path.is_dir():
        raise BadInputError(f"{w.what} {w.path}: is a directory")
    try:
        mode = os.stat(w.path).st_mode
    except OSError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):  # the rename would replace the device itself
        raise BadInputError(f"{w.what} {w.path}: is not a regular file (a device, FIFO or socket)")
    if not existing.is_dir():
        raise BadInputError(f"{w.what} {w.path}: {existing} is not a directory")


def _exists(path: Path) -> bool:
    try:
        return os.path.lexists(path)
    except (OSError, ValueError):
        return False


def external_data_files(model: Path) -> list[Path]:
    """The external-data files a model names (that exist in its folder), without loading it:
    most models have none, which a scan of the bytes tells without parsing."""
    try:
        with open(model, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(b"location") < 0:
                return []
    except (OSError, ValueError):  # missing, empty, a FIFO: loading says what is wrong
        return []
    import onnx
    from onnx import external_data_helper

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception:
        return []
    files = []
    for t in external_data_helper._get_all_tensors(proto):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), None)
        if location:
            path = model.parent / location
            if path not in files:
                files.append(path)
    return files
