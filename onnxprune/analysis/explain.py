"""Why nothing can be pruned, and which weights no group covers: one answer for ``prune`` and ``analyze``."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .groups import Analysis
from ..ops import WEIGHT_LAYERS, integer_layer, quantized_weight


def uncovered_weights(analysis: Analysis) -> list[str]:
    """Constants of two or more dimensions that no slice site covers, as ``name (dtype, shape,
    read by Op 'node')``: the weights pruning leaves as they are."""
    covered = {id(site.node.inputs[site.input_index]) for site in analysis.sites}
    found, seen = [], set()
    for node in _all_nodes(analysis.graph):
        for t in node.inputs:
            if not isinstance(t, gs.Constant) or id(t) in covered or id(t) in seen or len(t.shape) < 2:
                continue
            seen.add(id(t))
            dims = "x".join(str(int(d)) for d in t.shape)
            found.append(f"{t.name} ({_dtype_name(t.dtype)} {dims}, read by {node.op} '{node.name}')")
    return found


def _all_nodes(graph: gs.Graph):
    """The graph's nodes, and those of its subgraphs (If, Loop, Scan bodies), depth first."""
    for node in graph.nodes:
        yield node
        for attr in node.attrs.values():
            for sub in attr if isinstance(attr, list) else [attr]:
                if isinstance(sub, gs.Graph):
                    yield from _all_nodes(sub)


def _dtype_name(dtype) -> str:
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):  # an ONNX type number (float8)
        import onnx

        return onnx.TensorProto.DataType.Name(int(dtype)).lower()
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def _subgraph_layers(graph: gs.Graph) -> tuple[list[str], int]:
    """Control-flow nodes with weight layers inside their subgraphs, and how many layers."""
    holders, count = [], 0
    for node in graph.nodes:
        inner = 0
        for attr in node.attrs.values():
            for sub in attr if isinstance(attr, list) else [attr]:
                if isinstance(sub, gs.Graph):
                    inner += sum(1 for n in sub.nodes if n.op in WEIGHT_LAYERS or integer_layer(n)) \
                        + _subgraph_layers(sub)[1]
        if inner:
            holders.append(f"{node.op} '{node.name}'")
            count += inner
    return holders, count


def nothing_to_prune(analysis: Analysis) -> str:
    """Why no group is prunable, in one line (empty when some group is)."""
    if analysis.prunable_groups:
        return ""
    groups = analysis.groups
    if groups:
        return f"every channel group ({len(groups)}) is blocked"
    nodes = analysis.graph.nodes
    layers = [n for n in nodes if n.op in WEIGHT_LAYERS]
    quantized = [n for n in layers if quantized_weight(n)]
    integer = [n for n in nodes if integer_layer(n)]
    holders, inner = _subgraph_layers(analysis.graph)
    parts = []
    if quantized:
        kinds = sorted({_dtype_name(n.inputs[1].inputs[0].inputs[0].dtype) for n in quantized
                        if n.inputs[1].inputs and n.inputs[1].inputs[0].inputs})
        parts.append(f"the weights of {len(quantized)} layers are quantized (DequantizeLinear of "
                     f"{', '.join(kinds) or 'computed values'}), a form that is not pruned (8- to 32-bit "
                     "integer weights are)")
    if integer:
        ops = sorted({n.op for n in integer})
        parts.append(f"{len(integer)} layers compute on integer weights ({', '.join(ops)}), which are not pruned")
    if holders:
        parts.append(f"{inner} layers are inside the subgraphs of {', '.join(holders[:3])}"
                     + (f" (+{len(holders) - 3})" if len(holders) > 3 else "") + ", which are not analyzed")
    computed = [n for n in layers if n not in quantized and not isinstance(n.inputs[1] if len(n.inputs) > 1 else None,
                                                                           gs.Constant)]
    if computed and not parts:
        parts.append(f"the weights of {len(computed)} {', '.join(sorted({n.op for n in computed}))} layers are "
                     "computed at run time")
    if parts:
        return "; ".join(parts)
    return f"no {', '.join(WEIGHT_LAYERS[:-1])} or {WEIGHT_LAYERS[-1]} layer with constant weights"
