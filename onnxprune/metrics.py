"""Parameter and FLOP counts, from initializers and inferred shapes.

FLOPs count a multiply-add as two operations and cover the layers that dominate cost (Conv,
ConvTranspose, Gemm, MatMul); element-wise ops are left out, as most FLOP counters do.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .analysis.state import static_shape


def count_params(graph: gs.Graph) -> int:
    """Elements of all floating-point constants (weights, biases, BN parameters)."""
    seen, total = set(), 0
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and t.name not in seen:
                seen.add(t.name)
                if np.issubdtype(np.dtype(t.dtype), np.floating):
                    total += int(np.prod(t.shape, dtype=np.int64))
    return total


def node_flops(node: gs.Node) -> int:
    """FLOPs of one node for the shapes shape inference gave (0 if unknown or not counted)."""
    try:
        if node.op == "Conv":
            out = static_shape(node.outputs[0])
            w = node.inputs[1].shape
            return 2 * int(np.prod(out, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64)) if out else 0
        if node.op == "ConvTranspose":
            inp = static_shape(node.inputs[0])
            w = node.inputs[1].shape
            return 2 * int(np.prod(inp, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64)) if inp else 0
        if node.op in ("Gemm", "MatMul"):
            out = static_shape(node.outputs[0])
            a = static_shape(node.inputs[0])
            if not out or not a:
                return 0
            k = a[0] if node.op == "Gemm" and int(node.attrs.get("transA", 0)) else a[-1]
            return 2 * int(np.prod(out, dtype=np.int64)) * k
    except (TypeError, IndexError, AttributeError):
        return 0
    return 0


def count_flops(graph: gs.Graph) -> int:
    return sum(node_flops(n) for n in graph.nodes)
