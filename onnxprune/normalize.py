"""Normalize: bring every exporter's way of storing weights to one form.

Paddle2ONNX writes weights as ``Constant`` nodes, the model-zoo "light" models compute them with
``ConstantOfShape`` subgraphs, others wrap them in Cast/Transpose/Unsqueeze chains. The analysis
only needs to ask "is this input a constant, and what are its values", so we turn all of these
into initializers (``gs.Constant``) and then infer shapes.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from .io import export_skeleton, is_bulky, lazy_external_values, read_values
from .ops.inference import infer_shapes as extended_infer_shapes

log = logging.getLogger(__name__)

#: Ops never folded: random ones change meaning, (de)quantization is kept so that
#: quantized models stay quantized.
_NO_FOLD = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
}
#: Never materialise a folded tensor larger than this; such nodes stay as they are.
MAX_FOLD_BYTES = 1 << 30
#: Folding may add at most this many bytes to what the model stores, over all folds of values
#: that are neither layer parameters (``OpSpec.parameter_inputs``) nor vectors: a fold costs its
#: output's bytes less the bytes of inputs only it reads. A small Expand or Tile of a constant
#: is folded; one that would turn a few bytes into megabytes stays a computation, as in the input.
FOLD_BUDGET_BYTES = 64 * 1024
#: A fold that adds more than this many bytes to what the model stores (its inputs stay, or it is
#: much larger than they are) is recorded, and written back as its computation if the rewrite
#: leaves it and its inputs alone (a weight made by ConstantOfShape, the transpose of a tied weight).
WRITE_BACK_BYTES = 4096
#: Vectors (at most one dimension over 1: per-channel scales, shape vectors) are folded outside
#: the budget up to this size: the analysis reads them (BN parameters made by ConstantOfShape).
MAX_VECTOR_BYTES = 1 << 20


def normalize(model: onnx.ModelProto) -> gs.Graph:
    """Return a graph with constants folded into initializers and shapes inferred.

    The input proto is not modified. Weights in external data files (``io.load_model`` leaves
    them there) are read on demand, never all at once.
    """
    from onnx_graphsurgeon.logger import G_LOGGER

    with G_LOGGER.suppress(G_LOGGER.ERROR):  # "no NumPy type for BFLOAT16": we read those with onnx
        graph = gs.import_onnx(model)
    lazy_external_values(graph)
    _forget_generated_dims(graph)
    _constant_nodes_to_initializers(graph)
    _fold_decoded(graph)
    _fold_constant_nodes(graph, list(model.opset_import), model.ir_version)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    _name_nodes(graph)
    return infer_shapes(graph)


#: the names ONNX shape inference gives dimensions it cannot name (``unk__<n>``)
_GENERATED_DIM = re.compile(r"unk__\d+")


def _forget_generated_dims(graph: gs.Graph) -> None:
    """Dimensions a tool's earlier shape inference named ``unk__<n>`` (ONNX Runtime's quantizer
    writes them into value_info) become unknown, for inference to name again: left, they stop
    equal dimensions from being seen as equal (its run lacked data propagation, so a reshaped
    attention output got a new name, and every residual block after it looked mismatched)."""
    io = {id(t) for t in list(graph.inputs) + list(graph.outputs)}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in io and tensor.shape is not None:
            if any(isinstance(d, str) and _GENERATED_DIM.fullmatch(d) for d in tensor.shape):
                tensor.shape = [None if isinstance(d, str) and _GENERATED_DIM.fullmatch(d) else d
                                for d in tensor.shape]


def _name_nodes(graph: gs.Graph) -> None:
    """Give unnamed or duplicate-named nodes unique names: reports and reconstruction refer to them."""
    seen = set()
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            base = node.name or node.op
            node.name = f"{base}_{i}"
            while node.name in seen:
                node.name += "_"
        seen.add(node.name)


def infer_shapes(graph: gs.Graph) -> gs.Graph:
    """Run ONNX shape inference (with data propagation) and record the shapes on ``graph``.

    Inference runs on a skeleton: large float constants become graph inputs of the same type,
    so the weights are never serialized (which dominated run time on big models). Small and
    integer constants stay, because data propagation reads shape vectors. Inference is
    best-effort: where it fails, tensors keep unknown shapes and the rules that need a shape
    block their groups instead of guessing.

    ONNX Runtime's fused ops get their shapes from their op specs (:mod:`onnxprune.ops.inference`).
    """
    model = export_skeleton(graph)
    # IR < 4 requires every initializer to be a graph input; inference silently gives up
    # otherwise. IR 4 lifts that rule and changes nothing else the rewrite relies on.
    model.ir_version = max(model.ir_version, 4)
    try:
        model = extended_infer_shapes(model)
    except Exception as exc:  # inference errors on exotic graphs must not stop us
        log.warning("shape inference failed: %s", exc)
        return graph
    inferred = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    for tensor in graph.tensors().values():
        vi = inferred.get(tensor.name)
        if isinstance(tensor, gs.Variable) and vi is not None and vi.type.HasField("tensor_type"):
            tt = vi.type.tensor_type
            if tensor.dtype is None and tt.elem_type:
                tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            if tt.HasField("shape"):
                found = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
                if tensor.shape is None:
                    tensor.shape = found
                elif None in tensor.shape and len(found) == len(tensor.shape):  # fill what was unknown
                    tensor.shape = [f if d is None else d for d, f in zip(tensor.shape, found)]
    return graph


def _constant_nodes_to_initializers(graph: gs.Graph) -> None:
    for node in list(graph.nodes):
        if node.op != "Constant" or node.domain not in (None, "", "ai.onnx") or len(node.outputs) != 1:
            continue
        values = _constant_node_values(node)
        if values is None:
            continue
        _replace_output_with_constant(graph, node, 0, values)


def _constant_node_values(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        v = attrs["value"]
        return np.asarray(v.values) if isinstance(v, gs.Constant) else None
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    return None  # strings and sparse values are left alone


def _replace_output_with_constant(graph: gs.Graph, node: gs.Node, index: int, values: np.ndarray) -> gs.Constant:
    const = gs.Constant(node.outputs[index].name, np.array(values, order="C"))  # 0-d stays 0-d
    return _replace_output_with(graph, node, index, const)


def _replace_output_with(graph: gs.Graph, node: gs.Node, index: int, const: gs.Constant) -> gs.Constant:
    var = node.outputs[index]
    for consumer in list(var.outputs):
        for i, inp in enumerate(consumer.inputs):
            if inp is var:
                consumer.inputs[i] = const
    for i, out in enumerate(graph.outputs):
        if out is var:
            # A graph output must stay a node output: keep the node in that case.
            return const
    node.outputs[index] = gs.Variable(var.name + "__folded_unused", dtype=var.dtype)
    return const


def _fold_decoded(graph: gs.Graph) -> None:
    """Nodes of constants that store a float constant in another form (a DequantizeLinear of an
    integer weight: ``OpSpec.decode``) become that float constant, with the codec attached as
    ``codec``: the analysis reads the float values, the rewrite slices the codec with them and
    the export writes the node back (``rewrite.export_checked``), so a quantized model stays
    quantized. A node that only encodes a constant for such readers (``OpSpec.encode``) is
    evaluated first."""
    from .ops import decoder
    from .ops.registry import encoder

    for node in list(graph.nodes):
        encode = encoder(node)
        if encode is None or len(node.outputs) != 1 or node.outputs[0] in graph.outputs:
            continue
        encoded = encode(node)
        if encoded is not None:
            _replace_output_with_constant(graph, node, 0, encoded)
    for node in list(graph.nodes):
        decode = decoder(node)
        if decode is None or len(node.outputs) != 1 or not node.outputs[0].outputs \
                or node.outputs[0] in graph.outputs:
            continue
        found = decode(node)
        if found is None:
            continue
        values, codec = found
        const = _replace_output_with_constant(graph, node, 0, values)
        codec.values = np.asarray(const.values)
        const.codec = codec


@dataclass
class FoldRecord:
    """How a fold that adds to what the model stores was computed (a weight made by
    ``ConstantOfShape``, the transpose of a weight also read as it is): the export writes that
    computation back where the rewrite left the value and its inputs as they were, so folding
    never stores a weight pruning did not change."""

    op: str
    domain: str
    attrs: dict
    #: the node's inputs (constants, perhaps folded themselves, or empty optional inputs)
    inputs: list
    #: the value objects the constant and its inputs held when folded: unchanged while identical
    values: object
    input_values: list = field(default_factory=list)


def _record_fold(const: gs.Constant, node: gs.Node) -> None:
    inputs = list(node.inputs)
    const.fold_record = FoldRecord(node.op, node.domain, dict(node.attrs), inputs, const._values,
                                   [getattr(t, "_values", None) for t in inputs])


def _fold_constant_nodes(graph: gs.Graph, opsets: list, ir_version: int) -> None:
    """Evaluate nodes whose inputs are all constants with ONNX's reference evaluator.

    What the analysis reads is folded: layer parameters (weights computed by ``ConstantOfShape``,
    transposed weights) up to :data:`MAX_FOLD_BYTES`, and vectors (per-channel scales, shape
    vectors) up to :data:`MAX_VECTOR_BYTES`. Anything else is folded only within
    :data:`FOLD_BUDGET_BYTES` of growth, so that constant folding never blows a small model up.
    Sizes are predicted by shape inference before anything is evaluated; a fold that adds to what
    the model stores is recorded, and written back as its computation if the rewrite leaves it alone.
    """
    from onnx.reference import ReferenceEvaluator

    graph.toposort()
    needed = _parameter_sources(graph)
    budget = FOLD_BUDGET_BYTES
    folded: dict[tuple, gs.Constant] = {}
    for node in list(graph.nodes):
        used = [o for o in node.outputs if o.outputs]
        if not used or not _foldable(node, graph):
            continue
        if node.op == "Identity" and isinstance(node.inputs[0], gs.Constant):
            # its readers share the constant itself (exporters read shared weights through
            # Identity nodes): folding never copies a weight
            _replace_output_with(graph, node, 0, node.inputs[0])
            continue
        key = _computation_key(node)
        if key in folded:  # the same computation of the same constants: share its result
            _replace_output_with(graph, node, 0, folded[key])
            continue
        parameter, freed = all(id(o) in needed for o in used), _freed_bytes(node)
        predicted = _predicted_outputs(node, opsets, ir_version)
        if predicted is None and _input_bytes(node) > FOLD_BUDGET_BYTES:
            continue  # size unknown and the inputs are not small: leave it
        if predicted is not None and _fold_charge(predicted, parameter, freed, budget) is None:
            log.debug("not folding %s (%s): over the folding limits", node.name, node.op)
            continue
        try:
            results = [np.asarray(r) for r in _evaluate(node, opsets, ir_version, ReferenceEvaluator)]
        except Exception as exc:
            log.debug("not folding %s (%s): %s", node.name, node.op, exc)
            continue
        charge = _fold_charge([(r.nbytes, r.shape) for r in results], parameter, freed, budget)
        if charge is None:
            continue
        budget -= charge
        large = len(results) == 1 and results[0].nbytes > freed + WRITE_BACK_BYTES
        for i, r in enumerate(results):
            if node.outputs[i].name:
                const = _replace_output_with_constant(graph, node, i, r)
                if large:
                    _record_fold(const, node)
                if key is not None:
                    folded[key] = const


def _fold_charge(outputs: list[tuple[int, tuple]], parameter: bool, freed: int, budget: int) -> int | None:
    """Bytes a fold takes from the budget (0 for what the analysis reads), None if not allowed.
    ``outputs``: (bytes, dims) of each output; ``freed``: bytes of inputs only this node reads."""
    total = sum(nbytes for nbytes, _ in outputs)
    if total > MAX_FOLD_BYTES:
        return None
    if parameter:
        return 0
    if total <= MAX_VECTOR_BYTES and all(sum(int(d) > 1 for d in dims) <= 1 for _, dims in outputs):
        return 0
    cost = max(total - freed, 0)
    return cost if cost <= budget else None


def _computation_key(node: gs.Node) -> tuple | None:
    """What a single-output node computes from which constants (None: not comparable)."""
    if len(node.outputs) != 1:
        return None
    try:
        attrs = tuple(sorted((k, repr(np.asarray(v.values).tolist()) if isinstance(v, gs.Constant) else repr(v))
                             for k, v in node.attrs.items()))
    except Exception:
        return None
    return node.op, node.domain, attrs, tuple(_input_key(t) for t in node.inputs)


def _input_key(t) -> tuple:
    """A small constant by its values (exporters repeat shape vectors), anything else by identity."""
    if isinstance(t, gs.Constant) and _nbytes(t) <= 4096:
        values = np.asarray(read_values(t))
        return str(values.dtype), values.shape, values.tobytes()
    return ("tensor", id(t))


def _foldable(node: gs.Node, graph: gs.Graph) -> bool:
    if node.op in _NO_FOLD or node.domain not in (None, "", "ai.onnx") or node.op == "Constant":
        return False
    if any(isinstance(a, gs.Graph) for a in node.attrs.values()):
        return False
    if not node.inputs or not all(isinstance(t, gs.Constant) or _is_empty(t) for t in node.inputs):
        return False
    if any(getattr(t, "codec", None) is not None for t in node.inputs):
        return False  # a quantized weight stays one: a computation on it is not folded into floats
    return not any(o in graph.outputs for o in node.outputs)


def _parameter_sources(graph: gs.Graph) -> set:
    """Tensors whose values end up in a layer parameter (``OpSpec.parameter_inputs``), directly or
    through nodes that fold: the values the analysis reads and slices."""
    from .ops import parameter_inputs

    needed: set[int] = set()  # ids: graphsurgeon tensors are not hashable
    for node in graph.nodes:
        for i in parameter_inputs(node):
            if i < len(node.inputs) and isinstance(node.inputs[i], gs.Variable):
                needed.add(id(node.inputs[i]))
    for node in reversed(graph.nodes):  # topological order: consumers first
        if any(id(o) in needed for o in node.outputs):
            needed.update(id(t) for t in node.inputs if isinstance(t, gs.Variable))
    return needed


def _input_bytes(node: gs.Node) -> int:
    return sum(_nbytes(t) for t in {id(t): t for t in node.inputs if isinstance(t, gs.Constant)}.values())


def _freed_bytes(node: gs.Node) -> int:
    """Bytes of the node's constant inputs that no other node reads (folding frees them)."""
    freed = 0
    for t in {id(t): t for t in node.inputs if isinstance(t, gs.Constant)}.values():
        if all(reader is node for reader in t.outputs):
            freed += _nbytes(t)
    return freed


def _nbytes(t: gs.Constant) -> int:
    try:
        return int(np.prod(t.shape, dtype=np.int64)) * np.dtype(_np_dtype(t.dtype)).itemsize
    except (TypeError, ValueError, KeyError):
        return 0


def _np_dtype(dtype):
    """A numpy dtype also for types given as ONNX type numbers (bfloat16, float8: ml_dtypes)."""
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        return helper.tensor_dtype_to_np_dtype(int(dtype))
    return dtype


def _predicted_outputs(node: gs.Node, opsets: list, ir_version: int) -> list[tuple[int, tuple]] | None:
    """(bytes, dims) of the node's outputs as shape inference sees them, without evaluating it:
    bulky inputs stand in as typed graph inputs, small ones (shapes, repeats) are given as values."""
    try:
        m, outputs = _node_model(node, opsets, max(ir_version, 4), lambda t: _nbytes(t) <= 4096 or not is_bulky(t),
                                 declare_outputs=False)
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:
        return None
    types = {vi.name: vi.type.tensor_type for vi in inferred.graph.value_info}
    found = []
    for name in (o for o in outputs if o):
        tt = types.get(name)
        if tt is None or not tt.elem_type or not tt.HasField("shape") or \
                any(not d.HasField("dim_value") for d in tt.shape.dim):
            return None
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
        dims = tuple(int(d.dim_value) for d in tt.shape.dim)
        found.append((int(np.prod(dims, dtype=np.int64)) * itemsize, dims))
    return found


def _onnx_attrs(node: gs.Node) -> dict:
    attrs = {}
    for k, v in node.attrs.items():
        if isinstance(v, gs.Constant):
            v = numpy_helper.from_array(np.asarray(v.values), k)
        attrs[k] = v
    return attrs


def _is_empty(t) -> bool:
    return isinstance(t, gs.Variable) and t.name == ""


def _constant_of_shape(node: gs.Node) -> list:
    value = node.attrs.get("value")
    fill = np.asarray(value.values).reshape(-1)[0] if isinstance(value, gs.Constant) else np.float32(0)
    return [np.full(tuple(int(d) for d in np.asarray(node.inputs[0].values)), fill, dtype=np.asarray(fill).dtype)]


#: Folds done directly in numpy, where the reference evaluator is slow on large tensors.
_FAST_FOLDS = {"ConstantOfShape": _constant_of_shape}


def _evaluate(node: gs.Node, opsets: list, ir_version: int, evaluator_cls) -> list:
    if node.op in _FAST_FOLDS:
        return _FAST_FOLDS[node.op](node)
    m, _ = _node_model(node, opsets, ir_version, lambda t: True, declare_outputs=True)
    return list(evaluator_cls(m).run(None, {}))


def _node_model(node: gs.Node, opsets: list, ir_version: int, by_value: Callable[[gs.Tensor], bool],
                declare_outputs: bool) -> tuple[onnx.ModelProto, list[str]]:
    """``node`` alone as a model, for evaluating it or inferring its output shapes: each input an
    initializer where ``by_value`` says so, else a typed graph input; outputs named ``out<i>``."""
    inputs, inits, graph_inputs = [], [], []
    for i, t in enumerate(node.inputs):
        if _is_empty(t):
            inputs.append("")
            continue
        name = f"in{i}"
        inputs.append(name)
        if by_value(t):
            inits.append(numpy_helper.from_array(np.asarray(read_values(t)), name))
        else:
            numbered = isinstance(t.dtype, (int, np.integer))
            elem = int(t.dtype) if numbered else helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
            graph_inputs.append(helper.make_tensor_value_info(name, elem, list(t.shape)))
    outputs = [f"out{i}" if o.name else "" for i, o in enumerate(node.outputs)]
    declared = [helper.make_value_info(o, onnx.TypeProto()) for o in outputs if o] if declare_outputs else []
    g = helper.make_graph([helper.make_node(node.op, inputs, outputs, **_onnx_attrs(node))], node.op or "node",
                          graph_inputs, declared, initializer=inits)
    return helper.make_model(g, opset_imports=opsets, ir_version=ir_version), outputs
