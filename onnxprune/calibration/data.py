"""Calibration data sources, each yielding batches: dicts of input name -> array.

Accepted: a ``.npz`` keyed by input names (samples stacked on axis 0), a folder of such files
(one sample or batch each; shapes may differ between files), a folder of images for a model with
one image input (``images.py``; an :class:`ImageFolder` sets its preprocessing), a ``.py`` file
defining ``load_data()`` that yields dicts, or any Python iterable of dicts. Every batch is checked
against the model's inputs, so bad data fails early with a message that names the problem.
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

#: Batches cut from one stacked .npz.
NPZ_BATCH = 16


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple  # ints, or None/str for dynamic dims


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
        if not isinstance(source, (str, os.PathLike)) and iter(source) is source:
            # a one-shot iterator: keep what it gives (capped) so it can be replayed
            self.source = list(_take(self._validated(source), max_samples))
        first = next(iter(self), None)
        if first is None:
            raise BadInputError(f"calibration data {self.description}: no samples")

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if isinstance(self.source, list):
            batches = _take(iter(self.source), self.max_samples)
        else:
            batches = _take(self._validated(_raw_batches(self.source)), self.max_samples)
        yield from self._rebatched(batches)

    def _rebatched(self, batches: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """Cut batches to the model's batch size where it is fixed (exporters often fix it to 1)."""
        fixed = {s.shape[0] for s in self.specs if s.shape and isinstance(s.shape[0], (int, np.integer))
                 and s.shape[0] > 0}
        if len(fixed) != 1:
            yield from batches
            return
        size = fixed.pop()
        for batch in batches:
            n = len(next(iter(batch.values())))
            if n % size:
                raise BadInputError(f"calibration data {self.description}: a batch of {n} samples does not divide "
                                    f"into the model's fixed batch size {size}")
            for start in range(0, n, size):
                yield {k: v[start:start + size] for k, v in batch.items()}

    def _validated(self, batches: Iterable[dict]) -> Iterator[dict[str, np.ndarray]]:
        for i, batch in enumerate(batches):
            yield validate_batch(batch, self.specs, f"calibration batch {i} ({self.description})")


def _take(batches: Iterator[dict[str, np.ndarray]], limit: int | None) -> Iterator[dict[str, np.ndarray]]:
    seen = 0
    for batch in batches:
        if limit is not None and seen >= limit:
            return
        n = len(next(iter(batch.values())))
        if limit is not None and seen + n > limit:
            batch = {k: v[: limit - seen] for k, v in batch.items()}
            n = limit - seen
        seen += n
        yield batch


def validate_batch(batch, specs: list[InputSpec], where: str) -> dict[str, np.ndarray]:
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
    out, batch_size = {}, None
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
        if batch_size is None:
            batch_size = arr.shape[0] if arr.ndim else 1
        out[spec.name] = arr
    return out


def _is_image_folder(path: Path) -> bool:
    """A folder of images (and no .npz files, which take precedence)."""
    return path.is_dir() and not any(path.glob("*.npz")) and bool(image_files(path))


def _raw_batches(source) -> Iterator[dict]:
    if not isinstance(source, (str, os.PathLike)):
        yield from source
        return
    path = Path(source)
    if not path.exists():
        raise BadInputError(f"calibration data {path}: no such file or folder")
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise BadInputError(f"calibration folder {path}: no .npz files or images")
        for f in files:
            yield from _npz_batches(f, whole=True)
    elif path.suffix == ".npz":
        yield from _npz_batches(path, whole=False)
    elif path.suffix == ".py":
        yield from _script_batches(path)
    else:
        raise BadInputError(f"calibration data {path}: expected a .npz file, a folder of .npz files or images, "
                            "or a .py file defining load_data()")


def _npz_batches(path: Path, whole: bool) -> Iterator[dict]:
    try:
        data = np.load(path, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise BadInputError(f"calibration file {path}: unreadable ({type(exc).__name__})") from None
    if not arrays:
        raise BadInputError(f"calibration file {path}: empty")
    n = len(next(iter(arrays.values())))
    if any(len(a) != n for a in arrays.values()):
        raise BadInputError(f"calibration file {path}: arrays have different sample counts on axis 0")
    step = n if whole else NPZ_BATCH
    for start in range(0, n, step):
        yield {k: a[start:start + step] for k, a in arrays.items()}


def _script_batches(path: Path) -> Iterator[dict]:
    spec = importlib.util.spec_from_file_location(f"onnxprune_calib_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise BadInputError(f"calibration script {path}: failed to load ({type(exc).__name__}: {exc})") from None
    if not callable(getattr(module, "load_data", None)):
        raise BadInputError(f"calibration script {path}: defines no load_data()")
    yield from module.load_data()
