"""Run a model in ONNX Runtime with chosen intermediate tensors exposed as outputs."""

from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np
import onnx_graphsurgeon as gs

from ..io import SlicedValues, export_by_reference
from .session import onnxruntime


def capture_session(graph: gs.Graph, names: list[str], threads: int | None = None):
    """A session over ``graph`` whose outputs are the tensors ``names`` (graph untouched)."""
    tensors = graph.tensors()
    saved = list(graph.outputs)
    graph.outputs = [tensors[n] for n in names]
    try:
        model, weights = export_by_reference(graph)
    finally:
        graph.outputs = saved
    model.ir_version = max(model.ir_version, 4)
    _drop_unneeded(model.graph)
    return cpu_session(model, weights, threads)


#: Prepacking copies every MatMul weight into a packed buffer: the whole model again, for a model
#: run from its files. It also changes the last bits of the products, so it is off in every
#: analysis session (captures, fidelity), in memory or not: both paths give the same numbers.
NO_PREPACKING = "session.disable_prepacking"

#: ONNX Runtime's worker threads spin after each run waiting for the next. An analysis session
#: runs between numpy steps (Gram products, scoring) whose BLAS threads want the same cores, and
#: other captures' sessions are alive meanwhile: spinning threads take the cores those need (on
#: 2 cores a calibrated MiniLM pruning took 90 s wall with spinning, 38-56 s without, under load).
NO_SPINNING = "session.intra_op.allow_spinning"


def analysis_options(threads: int | None = None):
    """Session options of every analysis session: quiet, no prepacking, no spinning threads."""
    opts = onnxruntime().SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry(NO_PREPACKING, "1")
    opts.add_session_config_entry(NO_SPINNING, "0")
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def graph_session(graph: gs.Graph, threads: int | None = None):
    """A CPU session running ``graph`` as it is, its weights handed over by reference (a model
    whose weights were left in their files is never serialized whole, which protobuf could not)."""
    model, weights = export_by_reference(graph)
    model.ir_version = max(model.ir_version, 4)
    return cpu_session(model, weights, threads)


def cpu_session(model, weights: dict[str, np.ndarray], threads: int | None = None):
    """A CPU session over ``model``; ``weights`` (from :func:`io.export_by_reference`) are handed
    to ONNX Runtime as shared initializers, used in place: a model whose weights were left in
    their files runs from its memory maps, changed weights from their arrays, with no copy
    (``add_external_initializers`` copies each one). The arrays are kept alive with the session."""
    ort = onnxruntime()
    opts = analysis_options(threads)
    names = [t.name for t in model.graph.initializer if t.name in weights]
    # sliced weights of a model left in its files are built here, for this session only
    arrays = [weights[n].load() if isinstance(weights[n], SlicedValues) else np.asarray(weights[n]) for n in names]
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
    if names:
        _relative_stubs(model, set(names), opts)
        for name, value in zip(names, values):
            opts.add_initializer(name, value)
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    session._onnxprune_weights = (values, arrays)  # ORT reads them in place
    return session


def _relative_stubs(model, names: set[str], opts) -> None:
    """ONNX Runtime refuses absolute external-data paths in a model loaded from bytes: the stubs
    name their file relative to its folder, given as the session's external-data folder."""
    folder = None
    for t in model.graph.initializer:
        if t.name in names:
            entry = next(e for e in t.external_data if e.key == "location")
            folder, entry.value = os.path.dirname(entry.value), os.path.basename(entry.value)
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)


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
        nodes = _needed_nodes(self.graph.nodes, set(wanted), known)
        self.nodes_run = len(nodes)
        produced = {t.name for n in nodes for t in n.outputs if t.name}
        ran_after = (self.ran if self.kept else inputs) | produced
        # the new cut: tensors run so far that a node not yet run still reads
        later = {t for n in self.graph.nodes if not {o.name for o in n.outputs} <= ran_after for t in _reads(n)}
        cut = sorted(t for t in ran_after & later if t)
        outputs = sorted((set(wanted) | set(cut)) & produced)
        self._plan, self._ran_after = (outputs, cut), ran_after
        dtypes = {k: v.dtype for k, v in self.kept[0].items()} if self.kept else {}
        self._session = _stage_session(self.graph, nodes, outputs, known, dtypes,
                                       self.threads) if outputs else None
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

    def reset(self) -> None:
        """Forget the kept cut (a layer upstream of it changed): the next stage runs from the inputs."""
        self.kept, self.ran = [], set()

    def finish(self) -> None:
        """End the stage: the next one continues from its cut (or from the inputs)."""
        self._session = None
        if self._new_kept:
            self.kept, self.ran = self._new_kept, self._ran_after
        else:
            self.kept, self.ran = [], set()


def _reads(node: gs.Node) -> set[str]:
    """The tensor names ``node`` reads, its subgraphs' outer references included."""
    names = {t.name for t in node.inputs if t.name}
    for value in node.attrs.values():
        for sub in value if isinstance(value, list) else [value]:
            if isinstance(sub, gs.Graph):
                names.update(t for inner in sub.nodes for t in _reads(inner))
    return names


def _needed_nodes(nodes: list[gs.Node], wanted: set[str], known: set[str]) -> list[gs.Node]:
    """The nodes (in graph order) needed to compute ``wanted`` from the ``known`` tensors."""
    needed = set(wanted) - known
    kept = []
    for node in reversed(nodes):
        if needed.intersection(t.name for t in node.outputs):
            kept.append(node)
            needed.update(t for t in _reads(node) if t not in known)
    kept.reverse()
    return kept


def subgraph_session(graph: gs.Graph, nodes: list[gs.Node], inputs: list[str], outputs: list[str],
                     threads: int | None = None, dtype=np.float32):
    """A session running ``nodes`` of ``graph`` (with the constants they read) from the tensors
    ``inputs`` (of ``dtype``) to ``outputs``: a piece of a model evaluated on arrays of one's own."""
    return _stage_session(graph, nodes, outputs, set(inputs), {n: np.dtype(dtype) for n in inputs}, threads)


def _stage_session(graph: gs.Graph, nodes: list[gs.Node], outputs: list[str], known: set[str],
                   dtypes: dict[str, np.dtype], threads: int | None):
    """The session of one stage, exported from its own nodes and the constants they read (by
    reference: weights left in their files stay there), not from the whole graph each time."""
    reads = set().union(*(_reads(n) for n in nodes))
    own = gs.Graph(nodes=nodes, inputs=[t for t in graph.inputs if t.name in reads], outputs=[],
                   name=graph.name, opset=graph.opset, import_domains=graph.import_domains,
                   functions=graph.functions, ir_version=graph.ir_version)
    model, weights = export_by_reference(own)
    return _cut_session(model, weights, list(model.graph.node), outputs, known, dtypes, threads)


def _cut_session(model, weights: dict[str, np.ndarray], nodes: list, outputs: list[str], known: set[str],
                 dtypes: dict[str, np.dtype], threads: int | None):
    """A session running ``nodes`` from the ``known`` tensors (graph inputs or kept ones) to
    ``outputs``. Shapes are left to ONNX Runtime (a pruned graph's stored ones may be stale)."""
    from onnx import helper

    g = model.graph
    reads = {t for n in nodes for t in list(n.input) + list(_subgraph_names(n)) if t}
    produced = {t for n in nodes for t in n.output}
    inits = [t for t in g.initializer if t.name in reads]
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.value_info) + list(g.output)}
    types.update({n: helper.np_dtype_to_tensor_dtype(d) for n, d in dtypes.items()})
    graph_inputs = {i.name: i for i in g.input}
    sources = [graph_inputs[n] if n in graph_inputs else helper.make_tensor_value_info(n, types.get(n, 0), None)
               for n in sorted((reads - produced - {t.name for t in inits}) & known)]
    outs = [helper.make_tensor_value_info(n, types[n], None) if types.get(n) else helper.make_empty_tensor_value_info(n)
            for n in outputs]
    sub = helper.make_graph(nodes, g.name, sources, outs, inits)
    cut = helper.make_model(sub, opset_imports=model.opset_import, ir_version=max(model.ir_version, 4))
    cut.functions.extend(model.functions)
    return cpu_session(cut, weights, threads)
