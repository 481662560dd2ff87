"""Fused attention: ONNX Runtime's com.microsoft Attention and MultiHeadAttention, as
onnxruntime.transformers writes them. A head is the unit that is removed."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.edits import SetAttrToKeptCount, SetAttrToKeptSizes
from ..analysis.state import State, UnsupportedPattern, const, has_input, rank
from .common import output_used
from .registry import rule


@rule("com.microsoft:Attention", channel_inputs=(0,))
def ort_attention(node: gs.Node, state: State) -> None:
    """Packed QKV projection and attention in one op: ``num_heads`` heads of the weight's Q, K and
    V column blocks. A head is one unit (its Q, K, V columns and bias); the output carries it on
    its V columns, and ``num_heads`` (and ``qkv_hidden_sizes``) become the kept counts."""
    tr = state.track(node.inputs[0])
    weight, bias = const(node.inputs[1]), const(node.inputs[2]) if has_input(node, 2) else None
    heads = int(node.attrs.get("num_heads", 0))
    if weight is None or weight.ndim != 2 or heads < 1:
        if tr is not None:
            raise UnsupportedPattern("Attention with weights computed at run time")
        return
    if tr is not None:
        if tr.axis != tr.rank - 1 or len(tr.atoms) != weight.shape[0]:
            raise UnsupportedPattern("Attention input carries channels on a non-feature axis")
        state.site(node, 1, 0, tr.atoms, "weight_in")
    sizes = node.attrs.get("qkv_hidden_sizes")
    sizes = [int(v) for v in sizes] if sizes is not None else [weight.shape[1] // 3] * 3
    if sum(sizes) != weight.shape[1] or any(v % heads for v in sizes) or sizes[0] != sizes[1]:
        raise UnsupportedPattern("Attention weight does not split into its heads")
    if any(has_input(node, i) for i in range(4, len(node.inputs))) or \
            any(output_used(node, i) for i in range(1, len(node.outputs))):
        raise UnsupportedPattern("Attention with a key/value cache or an attention bias")
    r = rank(state, node.inputs[0]) or 3  # (batch, length, hidden) by the op's definition
    if r != 3:
        raise UnsupportedPattern("Attention input is not (batch, length, hidden)")
    h = state.fresh(heads, node)
    pieces = [np.repeat(h, v // heads) for v in sizes]
    columns = np.concatenate(pieces)
    state.site(node, 1, 1, columns, "weight_out")
    if bias is not None:
        if bias.shape != (weight.shape[1],):
            raise UnsupportedPattern("Attention bias of unexpected shape")
        state.site(node, 2, 0, columns, "bias")
    elif has_input(node, 2):
        raise UnsupportedPattern("Attention bias computed at run time")
    state.edit(SetAttrToKeptCount(node, "num_heads", h))
    if "qkv_hidden_sizes" in node.attrs:
        state.edit(SetAttrToKeptSizes(node, "qkv_hidden_sizes", pieces))
    state.heads.append(h)
    state.set_track(node.outputs[0], r - 1, pieces[-1], r)


@rule("com.microsoft:MultiHeadAttention", channel_inputs=(0, 1, 2))
def ort_multi_head_attention(node: gs.Node, state: State) -> None:
    """Attention on projected query, key and value (B, S, heads x head size): the channels of
    each head are tied across Q, K and V, the output carries the heads on V's channels, and
    ``num_heads`` becomes the kept count."""
    heads = int(node.attrs.get("num_heads", 0))
    tracks = [state.track(node.inputs[i]) if has_input(node, i) else None for i in range(3)]
    if all(t is None for t in tracks):
        return
    if heads < 1 or any(t is None for t in tracks):
        raise UnsupportedPattern("MultiHeadAttention with packed or non-prunable query, key or value")
    extra = [i for i in range(4, len(node.inputs)) if has_input(node, i) and i != 4]
    if extra or any(output_used(node, i) for i in range(1, len(node.outputs))):
        raise UnsupportedPattern("MultiHeadAttention with an attention bias or a key/value cache")
    per_head = []
    for tr in tracks:
        if tr.rank != 3 or tr.axis != 2 or len(tr.atoms) % heads:
            raise UnsupportedPattern("MultiHeadAttention input not shaped (batch, length, heads x size)")
        blocks = tr.atoms.reshape(heads, -1)
        for j in range(1, blocks.shape[1]):
            state.union(blocks[:, 0], blocks[:, j])
        per_head.append(blocks[:, 0])
    state.union(per_head[0], per_head[1])
    state.union(per_head[0], per_head[2])
    if has_input(node, 3):
        bias = const(node.inputs[3])
        if bias is None or bias.ndim != 1 or len(bias) != sum(len(t.atoms) for t in tracks):
            raise UnsupportedPattern("MultiHeadAttention bias computed at run time or of unexpected shape")
        state.site(node, 3, 0, np.concatenate([t.atoms for t in tracks]), "channel_const")
    state.edit(SetAttrToKeptCount(node, "num_heads", per_head[0]))
    state.heads.append(per_head[0])
    state.set_track(node.outputs[0], 2, tracks[2].atoms, 3)

