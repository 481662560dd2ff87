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


#: Bytes of cut tensors kept per network between reconstruction waves; above this the next wave
#: runs from the model's inputs again (the result is the same, only slower).
MAX_CACHE_BYTES = 1536 << 20


class StagedCapture:
    """Captures tensors of one graph in stages (reconstruction waves), each stage running only
    the nodes not run before: the tensors at the cut between what has run and what has not are
    kept per calibration run, so all stages together cost about one forward pass.

    Correct as long as nothing upstream of the cut changes between stages (a wave refits only
    layers downstream of its own inputs). Past ``max_bytes`` of kept tensors the cut is dropped
    and the next stage runs from the model's inputs."""

    def __init__(self, graph: gs.Graph, threads: int | None = None, max_bytes: int | None = None):
        self.graph, self.threads = graph, threads
        self.max_bytes = MAX_CACHE_BYTES if max_bytes is None else max_bytes
        self.nodes_run = 0  # nodes the current stage runs (all stages together: about the graph once)
        self.ran: set[str] = set()  # tensors computed by earlier stages (and the graph inputs)
        self.kept: list[dict[str, np.ndarray]] = []  # per run: the cut tensors
        self._session = None
        self._plan: tuple[list[str], list[str]] = ([], [])

    def start(self, wanted: list[str]) -> bool:
        """Prepare the stage that captures ``wanted`` (tensor names); True where it reads the
        calibration data (the first stage, or after the cut was dropped)."""
        self.graph.toposort()  # a refit may have appended a bias Add that earlier nodes read
        inputs = {t.name for t in self.graph.inputs}
        if self.kept and set(wanted) & self.ran - set(self.kept[0]):
            self.kept, self.ran = [], set()  # a wanted tensor left the cut: run from the inputs
        known = set(self.kept[0]) if self.kept else inputs
        reads = {id(n): _reads(n) for n in self.graph.nodes}
        nodes = _needed_nodes(self.graph.nodes, reads, set(wanted), known)
        self.nodes_run = len(nodes)
        produced = {t.name for n in nodes for t in n.outputs if t.name}
        ran_after = (self.ran if self.kept else inputs) | produced
        # the new cut: tensors run so far that a node not yet run still reads
        later = {t for n in self.graph.nodes if not {o.name for o in n.outputs} <= ran_after for t in reads[id(n)]}
        cut = sorted(t for t in ran_after & later if t)
        outputs = sorted((set(wanted) | set(cut)) & produced)
        self._plan, self._ran_after = (outputs, cut), ran_after
        dtypes = {k: v.dtype for k, v in self.kept[0].items()} if self.kept else {}
        self._session = _cut_session(self.graph, nodes, reads, outputs, known, dtypes, self.threads) if outputs else None
        self._new_kept: list[dict[str, np.ndarray]] | None = []
        self._bytes = 0
        return not self.kept

    def capture(self, index: int, feeds: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """The stage's tensors (and the wanted ones) for run ``index``; ``feeds`` may be None
        when :attr:`needs_feeds` was False at :meth:`start`."""
        have = dict(self.kept[index]) if self.kept else dict(feeds)
        if self.kept:
            self.kept[index] = {}  # its tensors now live in ``have``: free them as soon as done
        if self._session is not None:
            have.update(capture(self._session, have))
        outputs, cut = self._plan
        if self._new_kept is not None:
            kept = {t: have[t] for t in cut if t in have}
            self._bytes += sum(v.nbytes for v in kept.values())
            if self._bytes > self.max_bytes or len(kept) < len(cut):
                self._new_kept = None  # too big to keep: the next stage starts from the inputs
            else:
                self._new_kept.append(kept)
        return have

    def finish(self) -> None:
        """End the stage: the next one continues from its cut (or from the inputs)."""
        self._session = None
        if self._new_kept:
            self.kept, self.ran = self._new_kept, self._ran_after
        else:
            self.kept, self.ran = [], set()


def _reads(node: gs.Node) -> list[str]:
    """The tensor names ``node`` reads: its inputs and, in its subgraphs, outer tensors."""
    names = [t.name for t in node.inputs if t.name]
    if any(isinstance(v, gs.Graph) or (isinstance(v, list) and v and isinstance(v[0], gs.Graph))
           for v in node.attrs.values()):
        names += sorted(_subgraph_names(gs.exporters.onnx_exporter.OnnxExporter.export_node(node)))
    return names


def _needed_nodes(nodes: list[gs.Node], reads: dict[int, list[str]], wanted: set[str], known: set[str]) -> list[gs.Node]:
    """The nodes (in graph order) needed to compute ``wanted`` from the ``known`` tensors."""
    needed = set(wanted) - known
    kept = []
    for node in reversed(nodes):
        if needed.intersection(t.name for t in node.outputs):
            kept.append(node)
            needed.update(t for t in reads[id(node)] if t not in known)
    kept.reverse()
    return kept


def _cut_session(graph: gs.Graph, nodes: list[gs.Node], reads: dict[int, list[str]], outputs: list[str],
                 known: set[str], dtypes: dict[str, np.dtype], threads: int | None):
    """A session running ``nodes`` from the ``known`` tensors (graph inputs or kept ones) to
    ``outputs``: only these nodes and the constants they read are exported (not the whole
    graph, once per stage). Shapes are left to ONNX Runtime (a pruned graph's stored ones may
    be stale)."""
    from onnx import helper
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx
    from onnx_graphsurgeon.ir.tensor import SparseValues

    tensors = graph.tensors()
    read = sorted({t for n in nodes for t in reads[id(n)]})
    produced = {t.name for n in nodes for t in n.outputs}
    consts = [tensors[t] for t in read if isinstance(tensors.get(t), gs.Constant)]
    by_input = {t.name: t for t in graph.inputs}

    def info(name: str, dtype=None):
        if dtype is None and name in tensors and tensors[name].dtype is not None:
            dtype = tensors[name].dtype
        if dtype is None:
            return helper.make_empty_tensor_value_info(name)
        shape = by_input[name].shape if name in by_input and name not in dtypes else None
        return helper.make_tensor_value_info(name, dtype_to_onnx(dtype), shape)

    sources = [info(t, dtypes.get(t)) for t in read if t in known and t not in produced
               and not isinstance(tensors.get(t), gs.Constant)]
    sparse = [c for c in consts if isinstance(c._values, SparseValues)]
    sub = helper.make_graph([OnnxExporter.export_node(n) for n in nodes], graph.name or "stage", sources,
                            [info(t) for t in outputs],
                            [OnnxExporter.export_tensor_proto(c) for c in consts if c not in sparse],
                            sparse_initializer=[OnnxExporter.export_sparse_tensor_proto(c) for c in sparse])
    model = helper.make_model(sub, opset_imports=gs.exporters.onnx_exporter.update_import_domains(graph),
                              ir_version=max(graph.ir_version or 8, 4))
    model.functions.extend(OnnxExporter.export_function(f) for f in graph.functions)
    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
