"""Parameter and FLOP counts, from initializers and inferred shapes.

:func:`count_flops_at` counts a graph at stated input shapes (``--input-shape``, a calibration
sample), with shapes inferred afresh on a weight-free copy, so that the original and the pruned
model are counted the same way whatever shapes their tensors happen to carry. Dynamic
dimensions not fixed by those shapes count as 1, so FLOPs of such models are per unit of each
(e.g. per token for a transformer with dynamic batch and sequence).

FLOPs count a multiply-add as two operations and cover the layers that dominate cost (Conv,
ConvTranspose, Gemm, MatMul); element-wise ops are left out, as most FLOP counters do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from .analysis.state import shape
from .io import export_skeleton
from .ops import spec_for
from .ops.inference import infer_shapes
from .dtypes import is_floating  # noqa: F401  (callers import it from here too)


def static_shape(tensor) -> list[int] | None:
    """The tensor's shape with dynamic dimensions taken as 1; None if the rank is unknown."""
    dims = shape(tensor)
    return None if dims is None else [1 if d is None else int(d) for d in dims]


def count_params(graph: gs.Graph) -> int:
    """Elements of all floating-point constants (weights, biases, BN parameters); the parameters
    packed integer weights hold (``OpSpec.packed_params``: MatMulNBits' K x N); and the integer
    weights and biases of quantized layers (``OpSpec.integer_layer``), each counted as one weight:
    the float-equivalent parameter count (a QDQ weight is read as its float value)."""
    from .ops import integer_layer, parameter_inputs

    seen, total = set(), 0
    for node in graph.nodes:
        packed_fn = spec_for(node).packed_params
        packed = packed_fn(node) if packed_fn is not None else {}
        counted = parameter_inputs(node) if integer_layer(node) else ()
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant) and t.name not in seen:
                if i in packed:
                    seen.add(t.name)
                    total += int(packed[i])
                elif is_floating(t.dtype) or i in counted:
                    seen.add(t.name)
                    total += int(np.prod(t.shape, dtype=np.int64))
    return total


ShapeOf = Callable[[object], "list[int] | None"]


@dataclass
class _NodeShapes:
    """The shapes a FLOP formula reads, of one node, asked of ``shape_of`` when read."""

    node: gs.Node
    shape_of: ShapeOf

    @property
    def attrs(self) -> dict:
        return self.node.attrs

    def x(self) -> list[int] | None:
        return self.shape_of(self.node.inputs[0])

    def w(self) -> list[int] | None:
        return self.shape_of(self.node.inputs[1])

    def y(self) -> list[int] | None:
        return self.shape_of(self.node.outputs[0])


def node_flops(node: gs.Node, shape_of: ShapeOf = static_shape) -> int:
    """FLOPs of one node for the shapes ``shape_of`` gives (default: the shapes its tensors carry;
    0 if unknown or not counted): its op spec's formula (:mod:`onnxprune.ops`)."""
    counter = spec_for(node).flops
    try:
        return counter(_NodeShapes(node, shape_of)) if counter else 0
    except (TypeError, IndexError, AttributeError):
        return 0


def count_flops(graph: gs.Graph) -> int:
    """FLOPs at the shapes the graph's tensors carry (see :func:`count_flops_at` to compare models)."""
    return sum(node_flops(n) for n in graph.nodes)


@dataclass
class FlopCount:
    """FLOPs of a graph at ``shapes``; ``uncounted`` names the layers whose shapes inference left
    unknown, wholly (counted 0) or in part (those dimensions counted as 1)."""

    flops: int
    shapes: dict[str, list[int]]
    uncounted: list[str] = field(default_factory=list)
    #: inputs with a dynamic dimension that no given shape fixed, counted as 1
    dynamic_as_one: list[str] = field(default_factory=list)


def count_flops_at(graph: gs.Graph, input_shapes: dict[str, list[int]] | None = None) -> FlopCount:
    """FLOPs with the graph's inputs at ``input_shapes`` (their other dynamic dimensions as 1),
    every other shape inferred afresh by ONNX shape inference: the same procedure for any model,
    independent of the shapes its tensors or its file's value_info carry."""
    inferred, shapes, defaulted = _inferred_shapes(graph, input_shapes or {})

    guessed = []

    def shape_of(tensor) -> list[int] | None:
        if isinstance(tensor, gs.Constant):
            return [int(d) for d in tensor.shape]
        dims = inferred.get(tensor.name)
        if dims is not None and None in dims:
            guessed.append(tensor.name)
        return None if dims is None else [1 if d is None else d for d in dims]

    total, uncounted = 0, []
    for node in graph.nodes:
        guessed.clear()
        flops = node_flops(node, shape_of)
        total += flops
        if spec_for(node).flops is not None and (not flops or guessed):
            uncounted.append(node.name)
    return FlopCount(total, shapes, uncounted, sorted(defaulted))


def static_shapes_at(graph: gs.Graph, input_shapes: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """{tensor name: dims} as :func:`count_flops_at` sees them (unknown dims as 1; tensors of
    unknown rank left out), for cost models that must agree with its count."""
    inferred = _inferred_shapes(graph, input_shapes or {})[0]
    return {name: [1 if d is None else d for d in dims] for name, dims in inferred.items() if dims is not None}


def _inferred_shapes(graph: gs.Graph, input_shapes: dict[str, list[int]]) -> tuple[dict, dict, set]:
    """({tensor name: dims, None for unknown}, {input name: the dims counted at}, {inputs with a
    dynamic dimension taken as 1}) from inference on
    a skeleton: float constants become inputs (never serialized), inputs get fixed dims, and the
    file's value_info is dropped so nothing but the graph (and its declared outputs, which pruning
    never changes) decides."""
    model = export_skeleton(graph)
    n_inputs = len(graph.inputs)
    del model.graph.value_info[:]
    counted_at, inputs, defaulted = {}, model.graph.input[:n_inputs], set()
    named = {}  # a dimension named in a given shape ("sequence") takes that size in every input
    for vi in inputs:
        given = input_shapes.get(vi.name)
        if given is not None and len(given) == len(vi.type.tensor_type.shape.dim):
            named.update({d.dim_param: int(v) for d, v in zip(vi.type.tensor_type.shape.dim, given) if d.dim_param})
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        given = input_shapes.get(vi.name)
        if given is not None and len(given) == len(dims):
            # a dim the graph fixes wins: a pruned graph's cache inputs have fewer heads than the
            # original's shapes say (for the original, --input-shape must agree with them anyway)
            fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else int(v) for d, v in zip(dims, given)]
        else:
            fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else named.get(d.dim_param, 0)
                     for d in dims]
            defaulted.update(vi.name for v in fixed if not v)
            fixed = [v or 1 for v in fixed]
        for d, value in zip(dims, fixed):
            d.Clear()
            d.dim_value = value
        counted_at[vi.name] = fixed
    model.ir_version = max(model.ir_version, 4)
    try:
        model = infer_shapes(model)
    except Exception:  # inference errors on exotic graphs: their layers stay uncounted
        return dict(counted_at), counted_at, defaulted
    inferred = {name: list(dims) for name, dims in counted_at.items()}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            inferred[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    return inferred, counted_at, defaulted
