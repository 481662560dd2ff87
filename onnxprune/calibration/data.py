"""Calibration data sources, each yielding batches: dicts of input name -> array.

Accepted: a ``.npz`` keyed by input names (samples stacked on axis 0), a folder of such files
(one sample or batch each; shapes may differ between files), a folder of images for a model with
one image input (``images.py``; an :class:`ImageFolder` sets its preprocessing), a ``.py`` file
defining ``load_data()`` that yields dicts, or any Python iterable of dicts. Every batch is checked
against the model's inputs, so bad data fails early with a message that names the problem.

However the samples are packed (one per file, a few files of many, one big array), they are
regrouped into the same chunks of ``CHUNK`` consecutive samples of one shape before anything
runs: statistics, the refit's two folds and the fidelity check see the same batches, so the
packing never changes the result.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import BadInputError
from .images import ImageFolder, image_files

#: Samples per chunk, whatever the packing of the files: the unit of the refit's two folds, run
#: as one batch (or, for large samples or a model with a fixed batch size, as a few).
CHUNK = 16

#: Input bytes up to which a chunk runs as one batch; larger samples run a few at a time
#: (decided by the sample's size alone, so still independent of packing).
MAX_RUN_BYTES = 32 << 20
NPZ_BATCH = CHUNK  # the old name: a stacked .npz is cut into batches of this many samples


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # ints, or None/str for dynamic dims


@dataclass(frozen=True)
class CalibrationBatch:
    """One run of the model on calibration data: its feeds, how many samples they hold, and
    the chunk they belong to (consecutive runs of a fixed-batch model share a chunk)."""

    chunk: int
    samples: int
    feeds: dict[str, np.ndarray]


@dataclass(frozen=True)
class _Piece:
    """A validated batch as the source gave it, with where it came from (for messages)."""

    origin: str
    samples: int | None  # None: inputs without a common sample axis, used whole
    feeds: dict[str, np.ndarray]


def input_specs(graph) -> list[InputSpec]:
    """Model inputs as the calibration data must match them (from an onnx-graphsurgeon graph)."""
    return [InputSpec(t.name, np.dtype(t.dtype), tuple(t.shape) if t.shape is not None else ()) for t in graph.inputs]


class Calibration:
    """A re-iterable, validated source of batches (reconstruction reads the data several times)."""

    def __init__(self, source, specs: list[InputSpec], max_samples: int | None = None,
                 description: str | None = None):
        if max_samples is not None and max_samples < 1:
            raise BadInputError(f"--calib-samples must be positive, got {max_samples}")
        if isinstance(source, (str, os.PathLike)) and _is_image_folder(Path(source)):
            source = ImageFolder(source)
        if isinstance(source, ImageFolder):
            source = source.bind(specs)
            description = description or repr(source)  # bound: says how images are preprocessed
        self.source = source
        self.specs = specs
        self.max_samples = max_samples
        self.description = description or (str(source) if isinstance(source, (str, os.PathLike))
                                           else f"{type(source).__name__} of batches")
        self._pieces: list[_Piece] | None = None
        if not isinstance(source, (str, os.PathLike)) and iter(source) is source:
            # a one-shot iterator: keep what it gives (capped) so it can be replayed
            self._pieces = list(_take(self._validated(source), max_samples))
        first = next(iter(self), None)
        if first is None:
            raise BadInputError(f"calibration data {self.description}: no samples")

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for batch in self.runs():
            yield batch.feeds

    def runs(self) -> Iterator[CalibrationBatch]:
        """The batches to run, each with its chunk and sample count (see the module's doc)."""
        pieces = iter(self._pieces) if self._pieces is not None else \
            _take(self._validated(self.source), self.max_samples)
        yield from _chunked(pieces, _fixed_batch(self.specs), self.description)

    def _validated(self, source) -> Iterator[_Piece]:
        for origin, offset, batch in _raw_batches(source, self.description):
            feeds = validate_batch(batch, self.specs, f"calibration {origin}", offset)
            yield _Piece(origin, _sample_count(feeds), feeds)


def sample_total(batches) -> int | None:
    """How many samples ``batches`` hold, where that is known before reading them (batches held
    in memory, ``.npz`` headers, image file counts; capped by ``--calib-samples``), for a
    progress bar's time left; None otherwise (a script's ``load_data()``, an iterator)."""
    if not isinstance(batches, Calibration):
        return sum(_sample_count(f) or 1 for f in batches) if isinstance(batches, (list, tuple)) else None
    if batches._pieces is not None:
        total: int | None = sum(p.samples if p.samples is not None else 1 for p in batches._pieces)
    else:
        total = _source_samples(batches.source)
    cap = batches.max_samples
    return total if total is None or cap is None else min(total, cap)


def _source_samples(source) -> int | None:
    """The samples of a source, from file headers or counts only (nothing loaded)."""
    if isinstance(source, Calibration):
        return sample_total(source)
    if isinstance(source, ImageFolder):
        return len(image_files(source.folder))
    if isinstance(source, (list, tuple)):
        return sum(_sample_count({k: np.asarray(v) for k, v in f.items()}) or 1 if isinstance(f, dict) else 1
                   for f in source)
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path] if path.suffix == ".npz" else []
    counts = [_npz_samples(f) for f in files]
    return sum(counts) if counts and None not in counts else None


def _npz_samples(path: Path) -> int | None:
    """The length of axis 0 of the first array in an ``.npz``, from its header alone."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z, z.open(z.namelist()[0]) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read(f)[0]
    except (OSError, ValueError, IndexError, zipfile.BadZipFile):  # unreadable: reading it says so
        return None
    return int(shape[0]) if shape else None


def runs_of(batches) -> Iterator[CalibrationBatch]:
    """The runs of a :class:`Calibration`, or of a plain iterable of feed dicts (a chunk each)."""
    if isinstance(batches, Calibration):
        yield from batches.runs()
        return
    for i, feeds in enumerate(batches):
        yield CalibrationBatch(i, _sample_count(feeds) or 1, feeds)


def _fixed_batch(specs: list[InputSpec]) -> int | None:
    """The model's batch size where every input fixes the same one (exporters often fix it to 1)."""
    fixed = {int(s.shape[0]) for s in specs if s.shape and isinstance(s.shape[0], (int, np.integer))
             and s.shape[0] > 0}
    return fixed.pop() if len(fixed) == 1 else None


def _sample_count(feeds: dict[str, np.ndarray]) -> int | None:
    """Samples on axis 0 shared by every input; None where the inputs have no common one."""
    counts = {a.shape[0] if a.ndim else None for a in feeds.values()}
    return counts.pop() if len(counts) == 1 and None not in counts else None


def _take(pieces: Iterator[_Piece], limit: int | None) -> Iterator[_Piece]:
    """At most ``limit`` samples (a batch without a sample axis counts as one)."""
    seen = 0
    for piece in pieces:
        if limit is not None and seen >= limit:
            return
        n = piece.samples if piece.samples is not None else 1
        if limit is not None and seen + n > limit and piece.samples is not None:
            n = limit - seen
            piece = _Piece(piece.origin, n, {k: v[:n] for k, v in piece.feeds.items()})
        seen += n
        yield piece


def _chunked(pieces: Iterator[_Piece], fixed: int | None, description: str) -> Iterator[CalibrationBatch]:
    """Regroup samples into chunks of ``CHUNK`` consecutive ones of one shape (a multiple of a
    fixed batch size), run whole or, for a fixed batch size, in runs of that size."""
    size = CHUNK if fixed is None else fixed * -(-CHUNK // fixed)
    for chunk, parts in enumerate(_chunk_parts(pieces, size)):
        feeds = {k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
        count = _sample_count(feeds)
        if count is None:  # no common sample axis: a chunk of its own, as given
            yield CalibrationBatch(chunk, 1, feeds)
        else:
            yield from _runs(chunk, count, feeds, fixed, description)


def _chunk_parts(pieces: Iterator[_Piece], size: int) -> Iterator[list[dict[str, np.ndarray]]]:
    """The slices of the pieces that make up each chunk: ``size`` samples, fewer where the
    shape changes or the data ends. Depends on the sequence of samples only, not on the pieces."""
    held: list[dict[str, np.ndarray]] = []
    count, key = 0, None
    for piece in pieces:
        shape = None if piece.samples is None else tuple((k, v.shape[1:]) for k, v in piece.feeds.items())
        if held and (shape is None or shape != key):
            yield held
            held, count = [], 0
        if shape is None:
            yield [piece.feeds]
            continue
        key = shape
        start = 0
        while start < piece.samples:  # each turn takes at least one sample
            n = min(size - count, piece.samples - start)
            held.append({k: v[start:start + n] for k, v in piece.feeds.items()})
            count, start = count + n, start + n
            if count == size:
                yield held
                held, count = [], 0
    if held:
        yield held


def _runs(chunk: int, count: int, feeds: dict, fixed: int | None, description: str) -> Iterator[CalibrationBatch]:
    """One chunk as batches of the model's fixed batch size, or of as many samples as
    ``MAX_RUN_BYTES`` of inputs hold (at least one)."""
    if fixed is not None and count % fixed:
        raise BadInputError(f"calibration data {description}: {count} samples of one shape do not divide into "
                            f"the model's fixed batch size {fixed}")
    step = fixed or max(1, MAX_RUN_BYTES * count // max(sum(v.nbytes for v in feeds.values()), 1))
    for start in range(0, count, step):
        n = min(step, count - start)
        yield CalibrationBatch(chunk, n, {k: v[start:start + n] for k, v in feeds.items()} if n < count else feeds)


def validate_batch(batch, specs: list[InputSpec], where: str, offset: int = 0) -> dict[str, np.ndarray]:
    """``batch`` checked against the model's inputs (names, ranks, dtypes, shapes, finite
    values); ``where`` and ``offset`` (its first sample's index there) name it in errors."""
    if not isinstance(batch, dict):
        raise BadInputError(f"{where}: expected a dict of input name -> array, got {type(batch).__name__}")
    names = {s.name for s in specs}
    unknown = sorted(set(batch) - names)
    if unknown:
        raise BadInputError(f"{where}: unknown input name(s) {', '.join(unknown)} "
                            f"(model inputs: {', '.join(s.name for s in specs)})")
    missing = sorted(names - set(batch))
    if missing:
        raise BadInputError(f"{where}: missing input(s) {', '.join(missing)}")
    out = {}
    for spec in specs:
        arr = np.asarray(batch[spec.name])
        if spec.shape and arr.ndim != len(spec.shape):
            raise BadInputError(f"{where}: input '{spec.name}' has rank {arr.ndim}, the model expects "
                                f"{len(spec.shape)} {list(spec.shape)}")
        if arr.dtype != spec.dtype:
            same_kind = (np.issubdtype(arr.dtype, np.floating) and np.issubdtype(spec.dtype, np.floating)) or (
                np.issubdtype(arr.dtype, np.integer) and np.issubdtype(spec.dtype, np.integer))
            if not same_kind:
                raise BadInputError(f"{where}: input '{spec.name}' has dtype {arr.dtype}, the model expects {spec.dtype}")
            arr = arr.astype(spec.dtype)
        for axis, (have, want) in enumerate(zip(arr.shape, spec.shape)):
            if axis > 0 and isinstance(want, (int, np.integer)) and want > 0 and have != want:
                raise BadInputError(f"{where}: input '{spec.name}' has shape {list(arr.shape)}, "
                                    f"the model expects {list(spec.shape)}")
        _check_finite(arr, spec.name, where, offset)
        out[spec.name] = arr
    return out


def _check_finite(arr: np.ndarray, name: str, where: str, offset: int) -> None:
    """NaN or Inf in an input poisons every statistic and refit downstream: refuse it, naming
    the first sample that holds one."""
    if not np.issubdtype(arr.dtype, np.inexact) or np.isfinite(arr).all():
        return
    bad = ~np.isfinite(arr)
    first = int(np.argmax(bad.reshape(len(arr), -1).any(axis=1))) if arr.ndim else 0
    value = arr[first].reshape(-1)[bad[first].reshape(-1)][0] if arr.ndim else arr[()]
    what = "NaN" if np.isnan(value) else ("Inf" if value > 0 else "-Inf")
    raise BadInputError(f"{where}: input '{name}' holds {what} in sample {offset + first} "
                        f"({int(bad.sum())} non-finite value(s) in this batch); calibration data must be finite")


def _is_image_folder(path: Path) -> bool:
    """A folder of images (and no .npz files, which take precedence)."""
    return path.is_dir() and not any(path.glob("*.npz")) and bool(image_files(path))


def _raw_batches(source, description: str) -> Iterator[tuple[str, int, dict]]:
    """(where it comes from, index of its first sample there, batch) for each batch of ``source``."""
    if not isinstance(source, (str, os.PathLike)):
        for i, batch in enumerate(source):
            yield f"batch {i} ({description})", 0, batch
        return
    path = Path(source)
    if not path.exists():
        raise BadInputError(f"calibration data {path}: no such file or folder")
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise BadInputError(f"calibration folder {path}: no .npz files or images")
        for f in files:
            yield from _npz_batches(f)
    elif path.suffix == ".npz":
        yield from _npz_batches(path)
    elif path.suffix == ".py":
        for i, batch in enumerate(_script_batches(path)):
            yield f"batch {i} of {path}:load_data()", 0, batch
    else:
        raise BadInputError(f"calibration data {path}: expected a .npz file, a folder of .npz files or images, "
                            "or a .py file defining load_data()")


def _npz_batches(path: Path) -> Iterator[tuple[str, int, dict]]:
    try:
        data = np.load(path, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise BadInputError(f"calibration file {path}: unreadable ({type(exc).__name__})") from exc
    if not arrays:
        raise BadInputError(f"calibration file {path}: empty")
    if any(a.ndim == 0 for a in arrays.values()):
        raise BadInputError(f"calibration file {path}: arrays need a sample axis (axis 0)")
    n = len(next(iter(arrays.values())))
    if any(len(a) != n for a in arrays.values()):
        raise BadInputError(f"calibration file {path}: arrays have different sample counts on axis 0")
    for start in range(0, n, CHUNK):  # read in pieces; chunking regroups them anyway
        yield f"file {path}", start, {k: a[start:start + CHUNK] for k, a in arrays.items()}


def _script_batches(path: Path) -> Iterator[dict]:
    spec = importlib.util.spec_from_file_location(f"onnxprune_calib_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's code: its failure is bad input, whatever it raises
        raise BadInputError(f"calibration script {path}: failed to load ({type(exc).__name__}: {exc})") from exc
    if not callable(getattr(module, "load_data", None)):
        raise BadInputError(f"calibration script {path}: defines no load_data()")
    try:
        batches = iter(module.load_data())
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            yield batch
    except (Exception, SystemExit) as exc:
        if isinstance(exc, BadInputError):
            raise
        raise BadInputError(f"calibration script {path}: load_data() failed ({type(exc).__name__}: {exc})") from exc
