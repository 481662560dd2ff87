"""ONNX shape inference, extended by the op specs that know ops ONNX does not.

ONNX's inference stops at ONNX Runtime's fused ops (SkipLayerNormalization, GroupQueryAttention,
the GenAI builder's SimplifiedLayerNormalization...): every tensor after one has an unknown
shape, and the layers there could be neither counted nor pruned. Where an op's spec says how
(:attr:`OpSpec.infer`), its outputs' shapes are added to the model's value_info and inference
runs again from there, until nothing new is learnt.
"""

from __future__ import annotations

import onnx

from .registry import REGISTRY, Typed

#: the shape a shape function (:attr:`OpSpec.infer`) is given for an optional input left out
#: (an empty name), as opposed to None for an input whose shape is unknown
ABSENT = ()


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with inferred value_info (ONNX's inference, ``strict_mode`` off, data propagation
    on, plus the specs' shape functions). Raises what ONNX's inference raises."""
    known = [n for n in model.graph.node if _infer_fn(n) is not None]
    for _ in range(1 + len(known)):
        model = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
        if not known or not _add_unknown_op_shapes(model, known):
            break
    return model


def _infer_fn(node: onnx.NodeProto):
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    spec = REGISTRY.get(f"{domain}:{node.op_type}" if domain else node.op_type)
    return None if spec is None else spec.infer


def _add_unknown_op_shapes(model: onnx.ModelProto, known: list[onnx.NodeProto]) -> bool:
    graph = model.graph
    types = {vi.name: vi.type.tensor_type for vi in list(graph.input) + list(graph.value_info) + list(graph.output)
             if vi.type.HasField("tensor_type")}
    for t in graph.initializer:
        types.setdefault(t.name, onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)).tensor_type)
    learnt = False
    outputs = {vi.name: vi.type.tensor_type for vi in graph.output if vi.type.HasField("tensor_type")}
    for node in known:
        missing = [o for o in node.output if o and (o not in types or not types[o].HasField("shape"))]
        open_outputs = [o for o in node.output if o in outputs and _open_dims(outputs[o])]
        if not missing and not open_outputs:
            continue
        shapes = [_dims(types.get(i)) if i else ABSENT for i in node.input]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for out, shape in zip(node.output, _infer_fn(node)(attrs, shapes, len(node.output))):
            if out in open_outputs and shape is not None:
                learnt |= _fill_open_dims(outputs[out], shape)
            if out in missing and shape is not None:
                typed = shape if isinstance(shape, Typed) else Typed(shape)
                like = node.input[typed.like] if typed.like < len(node.input) else ""
                elem = typed.elem if typed.elem is not None else types[like].elem_type if like in types else 0
                vi = onnx.helper.make_tensor_value_info(out, elem, list(typed.dims))
                graph.value_info.append(vi)
                types[out] = vi.type.tensor_type
                learnt = True
    return learnt


def _dims(tt) -> list | None:
    if tt is None or not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def _open_dims(tt) -> bool:
    """A declared graph output with a dim that has no fixed size (ONNX's own inference fills in
    such dims for the ops it knows, e.g. at the fixed input shapes the FLOP count uses)."""
    return tt.HasField("shape") and any(not d.HasField("dim_value") for d in tt.shape.dim)


def _fill_open_dims(tt, shape: list) -> bool:
    dims = tt.shape.dim
    if len(dims) != len(shape):
        return False
    filled = False
    for d, v in zip(dims, shape):
        if not d.HasField("dim_value") and isinstance(v, int) and v > 0:
            d.Clear()
            d.dim_value = v
            filled = True
    return filled
