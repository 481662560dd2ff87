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
    _drop_unneeded(model.graph)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_captures(session, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Yield, per batch, the captured tensors by name."""
    for batch in batches:
        yield capture(session, batch)


def capture(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The captured tensors by name, for one batch (inputs the session does not read are left out)."""
    wanted = {i.name for i in session.get_inputs()}
    values = session.run(None, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip((o.name for o in session.get_outputs()), values))


def _drop_unneeded(graph) -> None:
    """Remove the nodes and initializers the outputs do not depend on: ONNX Runtime would run
    them (a capture of early tensors would otherwise cost a whole forward pass)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(_subgraph_names(node))
    if len(kept) == len(graph.node):
        return
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _subgraph_names(node) -> set[str]:
    """Every tensor name read inside a node's subgraphs (they may refer to outer tensors)."""
    names: set[str] = set()
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in sub.node:
                names.update(inner.input)
                names.update(_subgraph_names(inner))
    return names
