"""Normalize: bring every exporter's way of storing weights to one form.

Paddle2ONNX writes weights as ``Constant`` nodes, the model-zoo "light" models compute them with
``ConstantOfShape`` subgraphs, others wrap them in Cast/Transpose/Unsqueeze chains. The analysis
only needs to ask "is this input a constant, and what are its values", so we turn all of these
into initializers (``gs.Constant``) and then infer shapes.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from ..io import lazy_external_values, read_values

log = logging.getLogger(__name__)

#: Ops never folded: random ones change meaning, (de)quantization is kept so that
#: quantized models stay quantized.
_NO_FOLD = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
}
#: Do not materialise folded tensors larger than this (elements); such nodes stay as they are.
MAX_FOLD_ELEMENTS = 1 << 28


def normalize(model: onnx.ModelProto) -> gs.Graph:
    """Return a graph with constants folded into initializers and shapes inferred.

    The input proto is not modified. Weights in external data files (``io.load_model`` leaves
    them there) are read on demand, never all at once.
    """
    from onnx_graphsurgeon.logger import G_LOGGER

    with G_LOGGER.suppress(G_LOGGER.ERROR):  # "no NumPy type for BFLOAT16": we read those with onnx
        graph = gs.import_onnx(model)
    lazy_external_values(graph)
    _constant_nodes_to_initializers(graph)
    _fold_constant_nodes(graph, list(model.opset_import), model.ir_version)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    _name_nodes(graph)
    return infer_shapes(graph)


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
    """
    swaps, placeholders = [], {}
    for node in graph.nodes:
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant) and _is_bulky(t):
                if t.name not in placeholders:
                    placeholders[t.name] = gs.Variable(t.name, dtype=t.dtype, shape=list(t.shape))
                swaps.append((node, i, t))
                node.inputs[i] = placeholders[t.name]
    real_inputs = list(graph.inputs)
    graph.inputs = real_inputs + list(placeholders.values())
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        graph.inputs = real_inputs
        for node, i, t in swaps:
            node.inputs[i] = t
    # IR < 4 requires every initializer to be a graph input; inference silently gives up
    # otherwise. IR 4 lifts that rule and changes nothing else the rewrite relies on.
    model.ir_version = max(model.ir_version, 4)
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
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
            if tensor.shape is None and tt.HasField("shape"):
                tensor.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
    return graph


def _is_bulky(t: gs.Constant) -> bool:
    from ..dtypes import is_floating

    try:
        return is_floating(t.dtype) and int(np.prod(t.shape)) > 64
    except TypeError:
        return False


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


def _replace_output_with_constant(graph: gs.Graph, node: gs.Node, index: int, values: np.ndarray) -> None:
    var = node.outputs[index]
    const = gs.Constant(var.name, np.array(values, order="C"))  # 0-d stays 0-d (ascontiguousarray would not)
    for consumer in list(var.outputs):
        for i, inp in enumerate(consumer.inputs):
            if inp is var:
                consumer.inputs[i] = const
    for i, out in enumerate(graph.outputs):
        if out is var:
            # A graph output must stay a node output: keep the node in that case.
            return
    node.outputs[index] = gs.Variable(var.name + "__folded_unused", dtype=var.dtype)


def _fold_constant_nodes(graph: gs.Graph, opsets: list, ir_version: int) -> None:
    """Evaluate nodes whose inputs are all constants with ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    graph.toposort()
    for node in list(graph.nodes):
        if node.op in _NO_FOLD or node.domain not in (None, "", "ai.onnx") or node.op == "Constant":
            continue
        if any(isinstance(a, gs.Graph) for a in node.attrs.values()):
            continue
        if not node.inputs or not all(isinstance(t, gs.Constant) or _is_empty(t) for t in node.inputs):
            continue
        if any(o in graph.outputs for o in node.outputs):
            continue
        try:
            results = _evaluate(node, opsets, ir_version, ReferenceEvaluator)
        except Exception as exc:
            log.debug("not folding %s (%s): %s", node.name, node.op, exc)
            continue
        if any(r is None or np.asarray(r).size > MAX_FOLD_ELEMENTS for r in results):
            continue
        for i, r in enumerate(results):
            if node.outputs[i].name:
                _replace_output_with_constant(graph, node, i, np.asarray(r))


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
    inputs, inits = [], []
    for i, t in enumerate(node.inputs):
        if _is_empty(t):
            inputs.append("")
            continue
        name = f"in{i}"
        inputs.append(name)
        inits.append(numpy_helper.from_array(np.asarray(read_values(t)), name))
    outputs = [f"out{i}" if o.name else "" for i, o in enumerate(node.outputs)]
    attrs = {}
    for k, v in node.attrs.items():
        if isinstance(v, gs.Constant):
            v = numpy_helper.from_array(np.asarray(v.values), k)
        attrs[k] = v
    onnx_node = helper.make_node(node.op, inputs, outputs, **attrs)
    g = helper.make_graph([onnx_node], "fold", [], [helper.make_value_info(o, onnx.TypeProto()) for o in outputs if o],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=opsets, ir_version=ir_version)
    res = evaluator_cls(m).run(None, {})
    return list(res)
