"""Parameter and FLOP counts, from initializers and inferred shapes.

Dynamic dimensions (batch, sequence length) count as 1, so FLOPs of such models are per unit
of each dynamic dimension (e.g. per token for a transformer with dynamic batch and sequence).

FLOPs count a multiply-add as two operations and cover the layers that dominate cost (Conv,
ConvTranspose, Gemm, MatMul); element-wise ops are left out, as most FLOP counters do.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .analysis.state import shape


def static_shape(tensor) -> list[int] | None:
    """The tensor's shape with dynamic dimensions taken as 1; None if the rank is unknown."""
    dims = shape(tensor)
    return None if dims is None else [1 if d is None else int(d) for d in dims]


#: Float types numpy has no dtype for; onnx-graphsurgeon gives their ONNX type number instead.
_ONNX_ONLY_FLOATS = {onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ,
                     onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ}


def is_floating(dtype) -> bool:
    """Whether a tensor dtype (a numpy dtype, or an ONNX type number for types numpy lacks) is a float."""
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        return int(dtype) in _ONNX_ONLY_FLOATS
    try:
        return np.issubdtype(np.dtype(dtype), np.floating) or np.dtype(dtype).name in ("bfloat16",) \
            or np.dtype(dtype).name.startswith("float8")
    except TypeError:
        return False


def count_params(graph: gs.Graph) -> int:
    """Elements of all floating-point constants (weights, biases, BN parameters)."""
    seen, total = set(), 0
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and t.name not in seen:
                seen.add(t.name)
                if is_floating(t.dtype):
                    total += int(np.prod(t.shape, dtype=np.int64))
    return total


def _prod(dims) -> int:
    return int(np.prod(dims, dtype=np.int64))


def _conv_flops(node: gs.Node) -> int:
    out = static_shape(node.outputs[0])
    return 2 * _prod(out) * _prod(node.inputs[1].shape[1:]) if out else 0


def _conv_transpose_flops(node: gs.Node) -> int:
    inp = static_shape(node.inputs[0])
    return 2 * _prod(inp) * _prod(node.inputs[1].shape[1:]) if inp else 0


def _matmul_flops(node: gs.Node) -> int:
    out, a = static_shape(node.outputs[0]), static_shape(node.inputs[0])
    if not out or not a:
        return 0
    k = a[0] if node.op == "Gemm" and int(node.attrs.get("transA", 0)) else a[-1]
    return 2 * _prod(out) * k


#: FLOP counters per op type; ops not listed count 0.
FLOP_COUNTERS = {"Conv": _conv_flops, "ConvTranspose": _conv_transpose_flops, "Gemm": _matmul_flops,
                 "MatMul": _matmul_flops}


def node_flops(node: gs.Node) -> int:
    """FLOPs of one node for the shapes shape inference gave (0 if unknown or not counted)."""
    counter = FLOP_COUNTERS.get(node.op)
    try:
        return counter(node) if counter else 0
    except (TypeError, IndexError, AttributeError):
        return 0


def count_flops(graph: gs.Graph) -> int:
    return sum(node_flops(n) for n in graph.nodes)
