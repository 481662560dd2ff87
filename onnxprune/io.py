"""Loading and saving models: input validation up front, atomic writes at the end.

Every problem with the input file becomes a :class:`BadInputError` with one line that names it,
so that a build step sees a clear message and no partial output.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from .errors import BadInputError

#: Opsets of the default domain we have rules and tests for.
MIN_OPSET = 9
MAX_OPSET = 21
#: Protobuf cannot serialise a message over 2 GiB; above this we write external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file (with its external data) and check it is something we can prune."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    if p.is_dir():
        raise BadInputError(f"{p}: is a directory, expected an .onnx file")
    if p.stat().st_size == 0:
        raise BadInputError(f"{p}: file is empty")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for garbage input
        raise BadInputError(f"{p}: not a valid ONNX model ({type(exc).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise BadInputError(f"{p}: not a valid ONNX model (no graph)")
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except FileNotFoundError as exc:
        raise BadInputError(f"{p}: missing external data file {Path(exc.filename or '?').name}") from None
    except Exception as exc:
        raise BadInputError(f"{p}: cannot read external data ({exc})") from None
    check_opset(model, str(p))
    return model


def check_opset(model: onnx.ModelProto, where: str = "model") -> int:
    """Return the default-domain opset, refusing versions outside the supported range."""
    version = default_opset(model)
    if version is None:
        raise BadInputError(f"{where}: model imports no default-domain opset")
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise BadInputError(f"{where}: opset {version} is not supported (supported: {MIN_OPSET} to {MAX_OPSET})")
    return version


def default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write atomically: a temporary file beside the target, then a rename.

    A reader never sees a half-written model, and a failure leaves nothing behind.
    Models too large for one protobuf go out with their weights as external data.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    large = model.ByteSize() > EXTERNAL_DATA_THRESHOLD if _size_is_cheap(model) else True
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    data_name = target.name + ".data"
    tmp_data = None
    try:
        if large:
            tmp_data = target.parent / f".{data_name}.tmp"
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            # onnx writes the data next to the model under `location`; move it into place last.
            written = target.parent / data_name
            os.replace(written, tmp_data)
            os.replace(tmp_data, written)
        else:
            onnx.save_model(model, tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, target)
    except BaseException:
        for leftover in (tmp, tmp_data):
            if leftover and os.path.exists(leftover):
                os.unlink(leftover)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _size_is_cheap(model: onnx.ModelProto) -> bool:
    """ByteSize() itself fails on messages past 2 GiB; estimate from raw tensors first."""
    total = sum(len(t.raw_data) for t in model.graph.initializer)
    return total < EXTERNAL_DATA_THRESHOLD


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file (reports) with the same temporary-file-then-rename discipline."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
