"""Grouped-query attention as the ONNX Runtime GenAI model builder writes it: com.microsoft
GroupQueryAttention (packed or separate QKV, a K/V cache) and RotaryEmbedding (ONNX Runtime's
and ONNX's opset-23 op). The unit removed is a K/V group: one K and one V head and the query
heads that share them."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.edits import SetAttrToKeptCount
from ..analysis.state import State, UnsupportedPattern, has_input
from .common import output_used, pass_through, same_dim, shape_of_input
from .inference import ABSENT
from .registry import Shapes, dims, register, rule

#: GroupQueryAttention inputs: 0 query (or packed QKV), 1 key, 2 value, 3 past_key, 4 past_value,
#: 5 seqlens_k, 6 total_sequence_length, 7 cos_cache, 8 sin_cache, 9 position_ids,
#: 10 attention_bias, 11 head_sink; outputs: 0 output, 1 present_key, 2 present_value, 3 output_qk
_GQA_PAST, _GQA_HEAD_INPUTS = (3, 4), (10, 11)


def _head_blocks(state: State, atoms: np.ndarray, heads: int, what: str) -> np.ndarray:
    """Tie the channels of each of ``heads`` equal blocks of ``atoms``; one atom per head."""
    if heads < 1 or len(atoms) % heads:
        raise UnsupportedPattern(f"{what} of {len(atoms)} channels does not split into {heads} heads")
    blocks = atoms.reshape(heads, -1)
    for j in range(1, blocks.shape[1]):
        state.union(blocks[:, 0], blocks[:, j])
    return blocks[:, 0]


def _gqa_qkv(node: gs.Node, state: State, heads: int, kv_heads: int):
    """The Q, K, V channel atoms of a GroupQueryAttention node's (packed or separate) inputs, or
    None where none carries channels."""
    tracks = [state.track(node.inputs[i]) if has_input(node, i) else None for i in range(3)]
    if all(t is None for t in tracks):
        return None
    q = tracks[0]
    if q is None or q.rank != 3 or q.axis != 2:
        raise UnsupportedPattern("GroupQueryAttention query not shaped (batch, length, heads x size) or not prunable")
    if not has_input(node, 1) and not has_input(node, 2):  # packed QKV: [Q | K | V] columns
        if len(q.atoms) % (heads + 2 * kv_heads):
            raise UnsupportedPattern("GroupQueryAttention packed QKV does not split into its heads")
        size = len(q.atoms) // (heads + 2 * kv_heads)
        return q.atoms[:heads * size], q.atoms[heads * size:(heads + kv_heads) * size], \
            q.atoms[(heads + kv_heads) * size:]
    if any(t is None or t.rank != 3 or t.axis != 2 for t in tracks[1:]):
        raise UnsupportedPattern("GroupQueryAttention key or value not prunable with the query")
    return q.atoms, tracks[1].atoms, tracks[2].atoms


@rule("com.microsoft:GroupQueryAttention", channel_inputs=(0, 1, 2, 3, 4))
def group_query_attention(node: gs.Node, state: State) -> None:
    """ONNX Runtime's grouped-query attention (the GenAI builder's), packed QKV or separate.

    Query head ``h`` attends with K/V head ``h // (num_heads / kv_num_heads)``, so a unit is one
    K/V group: its K and V heads and the query heads that share them (the kernel needs the ratio
    to stay whole). ``num_heads`` and ``kv_num_heads`` become the kept counts; the head size never
    changes (ONNX Runtime's CPU kernel needs it a multiple of 8), nor do the rotary cos/sin caches
    (per position and rotary channel), ``seqlens_k`` or ``total_sequence_length``. The past
    key/value inputs and present outputs, (batch, kv_num_heads, length, head size), are KV-cache
    graph I/O whose head axis changes with the kept K/V heads (``analysis.cache_io``).
    """
    heads, kv_heads = int(node.attrs.get("num_heads", 0)), int(node.attrs.get("kv_num_heads", 0))
    past = [state.track(node.inputs[i]) for i in _GQA_PAST if has_input(node, i)]
    qkv = _gqa_qkv(node, state, heads, kv_heads)
    if qkv is None:
        if any(t is not None for t in past):
            raise UnsupportedPattern("GroupQueryAttention past key/value carry channels its query does not")
        return
    if heads < 1 or kv_heads < 1 or heads % kv_heads:
        raise UnsupportedPattern("GroupQueryAttention num_heads is not a multiple of kv_num_heads")
    q, k, v = qkv
    if len(q) % heads or len(k) != len(q) // heads * kv_heads or len(v) != len(k):
        raise UnsupportedPattern("GroupQueryAttention query, key and value head sizes differ")
    for i in _GQA_HEAD_INPUTS:
        if has_input(node, i):
            raise UnsupportedPattern("GroupQueryAttention with an attention bias or head sinks (per-head inputs)")
    if output_used(node, 3):
        raise UnsupportedPattern("GroupQueryAttention output_qk is used")
    q_heads = _head_blocks(state, q, heads, "GroupQueryAttention query")
    kv = _head_blocks(state, k, kv_heads, "GroupQueryAttention key")
    state.union(kv, _head_blocks(state, v, kv_heads, "GroupQueryAttention value"))
    group = heads // kv_heads
    for j in range(group):
        state.union(q_heads.reshape(kv_heads, group)[:, j], kv)
    for i in _GQA_PAST:
        if not has_input(node, i):
            continue
        tr = state.track(node.inputs[i])
        if tr is None:  # a KV-cache graph input (analysis.cache_io) or refused with the reason
            state.cache_io(node.inputs[i], 1, kv)
        elif tr.rank != 4 or tr.axis != 1 or len(tr.atoms) != kv_heads:
            raise UnsupportedPattern("GroupQueryAttention past key/value carry channels off the K/V-head axis")
        else:
            state.union(tr.atoms, kv)
    for out in (1, 2):  # present key/value; a graph output is checked as KV-cache I/O at the end
        if len(node.outputs) > out and node.outputs[out].name:
            state.set_track(node.outputs[out], 1, kv, 4)
    state.edit(SetAttrToKeptCount(node, "num_heads", q_heads))
    state.edit(SetAttrToKeptCount(node, "kv_num_heads", kv))
    state.heads.append(kv)
    state.set_track(node.outputs[0], 2, q, 3)


def _gqa_shapes(attrs: dict, shapes: list, n_outputs: int) -> list:
    """Output (batch, length, num_heads x head size); present: (batch, kv_num_heads, ?, head size)."""
    heads, kv_heads = int(attrs.get("num_heads", 0)), int(attrs.get("kv_num_heads", 0))
    q = shapes[0] if shapes else None
    out = [None] * n_outputs
    if not q or len(q) != 3 or heads < 1:
        return out
    packed = len(shapes) < 3 or (shapes[1] == ABSENT and shapes[2] == ABSENT)
    if isinstance(q[2], int):
        size = q[2] // (heads + 2 * kv_heads) if packed else q[2] // heads
        out[0] = [q[0], q[1], heads * size]
        for i in (1, 2):
            if i < n_outputs:
                out[i] = [q[0], kv_heads, None, size]
    return out


def _gqa_flops(s: Shapes) -> int:
    """q·kᵀ and probs·v, with the keys counted as the new tokens only (a past length is unknown)."""
    y = s.y()
    return 4 * int(np.prod(y, dtype=np.int64)) * y[1] if y and len(y) == 3 else 0


register("com.microsoft:GroupQueryAttention", infer=_gqa_shapes, flops=_gqa_flops)


@rule("com.microsoft:RotaryEmbedding", "RotaryEmbedding", channel_inputs=(0,))
def rotary_embedding(node: gs.Node, state: State) -> None:
    """Rotary position embedding, per head: the rotated channel pairs lie inside a head and the
    angles depend on the position only, so whole heads pass. On (batch, length, hidden) input the
    channels of each of ``num_heads`` heads are tied (``num_heads`` becomes the kept count); on
    (batch, heads, length, head size) input (ONNX's opset-23 op, and ONNX Runtime's 4-D form)
    heads pass on axis 1 and channels inside a head are refused."""
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    heads = int(node.attrs.get("num_heads", 0))
    if tr.rank == 4 and tr.axis == 1:
        pass_through(node, state)
        return
    if tr.rank != 3 or tr.axis != 2:
        raise UnsupportedPattern("RotaryEmbedding rotates channel pairs inside a head")
    if heads < 1:
        raise UnsupportedPattern("RotaryEmbedding on (batch, length, hidden) without num_heads")
    per_head = _head_blocks(state, tr.atoms, heads, "RotaryEmbedding input")
    state.edit(SetAttrToKeptCount(node, "num_heads", per_head))
    state.heads.append(per_head)
    pass_through(node, state)


dims("com.microsoft:RotaryEmbedding", "RotaryEmbedding")(same_dim)
register("com.microsoft:RotaryEmbedding", infer=shape_of_input(0))
