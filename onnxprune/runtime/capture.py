"""Run a model in ONNX Runtime with chosen intermediate tensors exposed as outputs."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from .session import onnxruntime


def capture_session(graph: gs.Graph, names: list[str], threads: int | None = None):
    """A session over ``graph`` whose outputs are the tensors ``names`` (graph untouched)."""
    ort = onnxruntime()
    tensors = graph.tensors()
    saved = list(graph.outputs)
    graph.outputs = [tensors[n] for n in names]
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        graph.outputs = saved
    model.ir_version = max(model.ir_version, 4)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_captures(session, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Yield, per batch, the captured tensors by name."""
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    for batch in batches:
        values = session.run(None, {k: v for k, v in batch.items() if k in wanted})
        yield dict(zip(names, values))
