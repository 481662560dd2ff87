"""The last check before a run reports success: the written model loads in ONNX Runtime.

onnx's checker and our own validation do not see everything ONNX Runtime refuses. The model is
loaded from the written file, so its external data is read as a user's session would read it.
Where ONNX Runtime cannot load the *input* either (custom operators it has no kernel for), the
check says nothing about pruning and is skipped with a warning.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OnnxPruneError
from ..io import LAZY_LOAD_THRESHOLD
from ..paths import external_data_files


class DoesNotLoadError(OnnxPruneError):
    """The pruned model was written but ONNX Runtime refuses it (exit 1)."""


def _load(path: Path, nbytes: int) -> str | None:
    """None if ONNX Runtime creates a session from ``path`` (``nbytes`` with its data), else its
    first line of complaint."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if nbytes >= LAZY_LOAD_THRESHOLD:  # load, do not optimise: no second copy of the weights
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.add_session_config_entry("session.disable_prepacking", "1")
    try:
        try:
            str(path).encode("utf-8")
            source = str(path)
        except UnicodeEncodeError:  # a name not in UTF-8: ONNX Runtime takes no such path, but the bytes
            source = Path(path).read_bytes() if nbytes == os.path.getsize(path) else str(path)
        ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's pybind errors (Fail, InvalidGraph, NotImplemented...)
        text = str(exc).strip()
        return (text.splitlines()[0] if text else type(exc).__name__)[:500]
    return None


def check_loads(written: list[Path], original: Path) -> str | None:
    """Raise :class:`DoesNotLoadError` if ONNX Runtime cannot load the model just written
    (``written``: the model file, then its data file if any) but loads ``original``; a warning if
    it loads neither; None if it loads the written model or is not installed."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    reason = _load(written[0], sum(os.path.getsize(p) for p in written))
    if reason is None:
        return None
    inputs = [original, *(p for p in external_data_files(original) if p.is_file())]
    if _load(original, sum(os.path.getsize(p) for p in inputs)) is not None:
        return f"ONNX Runtime cannot load the input model either, so the pruned model was not checked in it ({reason})"
    raise DoesNotLoadError(f"the pruned model does not load in ONNX Runtime ({reason}); nothing was written")
