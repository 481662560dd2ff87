"""Attention ops: ai.onnx Attention (opset 23), and ONNX Runtime's com.microsoft Attention and
MultiHeadAttention as onnxruntime.transformers writes them. A head is the unit that is removed."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.edits import SetAttrToKeptCount, SetAttrToKeptSizes
from ..analysis.provenance import dim_of
from ..analysis.state import State, UnsupportedPattern, const, has_input, rank
from .common import output_used
from .registry import register, rule


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


@rule("com.microsoft:MultiHeadAttention", channel_inputs=(0, 1, 2, 6, 7))
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
    if has_input(node, 5):
        raise UnsupportedPattern("MultiHeadAttention with an attention bias")
    if any(has_input(node, i) for i in range(8, len(node.inputs))):
        raise UnsupportedPattern("MultiHeadAttention with a past sequence length or cache indirection")
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
    _cache(node, 6, 1, per_head[0], state, "MultiHeadAttention")
    _cache(node, 7, 2, per_head[0], state, "MultiHeadAttention")
    state.edit(SetAttrToKeptCount(node, "num_heads", per_head[0]))
    state.heads.append(per_head[0])
    state.set_track(node.outputs[0], 2, tracks[2].atoms, 3)



# --- ai.onnx Attention (opset 23) ---------------------------------------------------------------

def _heads_of(node: gs.Node, tr, attr: str, r: int, state: State) -> np.ndarray:
    """One atom per head of Q, K or V: 4-D (batch, heads, length, size) carries them on axis 1;
    3-D (batch, length, heads x size) carries channels, whose blocks of ``size`` are tied."""
    count = int(node.attrs.get(attr, 0))
    if r == 4:
        if tr.axis != 1:
            raise UnsupportedPattern("Attention input carries channels on an axis other than its heads")
        if count and count != len(tr.atoms):
            raise UnsupportedPattern(f"Attention {attr} does not match its input's heads")
        return tr.atoms
    if tr.axis != 2:
        raise UnsupportedPattern("Attention input carries channels on an axis other than its features")
    if count < 1 or len(tr.atoms) % count:
        raise UnsupportedPattern(f"Attention 3-D input without {attr} dividing its features")
    blocks = tr.atoms.reshape(count, -1)
    for j in range(1, blocks.shape[1]):
        state.union(blocks[:, 0], blocks[:, j])
    return blocks[:, 0]


def _mask_follows_heads(node: gs.Node, q_heads: np.ndarray, state: State) -> None:
    """The mask broadcasts to (batch, q heads, q length, kv length): a head dim of 1 (or none)
    passes, a constant one per head is sliced with the heads."""
    if not has_input(node, 3):
        return
    mask = node.inputs[3]
    if state.track(mask) is not None:
        raise UnsupportedPattern("Attention mask carries channels")
    r = rank(state, mask)
    if r is None:
        raise UnsupportedPattern("Attention mask of unknown rank")
    if r < 3:
        return
    axis = r - 3
    dim = dim_of(mask, axis, state.dims_cache)
    if dim == 1:
        return
    if dim == len(q_heads) and const(mask) is not None:
        state.site(node, 3, axis, q_heads, "channel_const")
        return
    raise UnsupportedPattern("Attention mask has a head axis that does not follow the heads")


def _cache(node: gs.Node, past: int, present: int, atoms: np.ndarray, state: State, op: str = "Attention") -> None:
    """past_key/past_value (batch, kv heads, past length, size) in, present_* out: tied to the K/V
    heads. A past that is a graph input must be a KV cache (analysis.cache_io: its shape then
    changes with the heads); a present that is a graph output is checked the same way."""
    if has_input(node, past):
        tensor = node.inputs[past]
        tr = state.track(tensor)
        if tr is None:
            if not state.is_cache_name(tensor):
                raise UnsupportedPattern(f"{op} past key/value '{tensor.name}' does not carry the heads")
            state.cache_io(tensor, 1, atoms)  # a KV-cache graph input (analysis.cache_io)
        elif tr.rank != 4 or tr.axis != 1 or len(tr.atoms) != len(atoms):
            raise UnsupportedPattern(f"{op} past key/value carries channels other than its heads")
        else:
            state.union(tr.atoms, atoms)
    if len(node.outputs) > present and node.outputs[present].name:
        state.set_track(node.outputs[present], 1, atoms, 4)


@rule("Attention", channel_inputs=(0, 1, 2, 4, 5))
def onnx_attention(node: gs.Node, state: State) -> None:
    """ai.onnx Attention (opset 23): Q with ``q_num_heads`` heads, K and V with ``kv_num_heads``
    (grouped-query attention: each K/V head serves ``q/kv`` consecutive query heads, so heads go
    in whole K/V groups). Inputs are 4-D (batch, heads, length, size) or 3-D (batch, length,
    heads x size, the counts in the attributes); the output has Q's layout with V's head size.
    A head is one unit (its Q, K, V channels); the head counts become the kept ones."""
    tracks = [state.track(node.inputs[i]) if has_input(node, i) else None for i in range(3)]
    if all(t is None for t in tracks):
        return
    if any(t is None for t in tracks):
        raise UnsupportedPattern("Attention with a query, key or value that does not carry the heads")
    if has_input(node, 6):
        raise UnsupportedPattern("Attention with nonpad_kv_seqlen")
    r = tracks[0].rank
    if r not in (3, 4) or any(t.rank != r for t in tracks):
        raise UnsupportedPattern("Attention inputs are not all 3-D or all 4-D")
    q = _heads_of(node, tracks[0], "q_num_heads", r, state)
    k = _heads_of(node, tracks[1], "kv_num_heads", r, state)
    v = _heads_of(node, tracks[2], "kv_num_heads", r, state)
    if len(k) != len(v) or len(q) % len(k):
        raise UnsupportedPattern("Attention query heads are not whole groups of its key/value heads")
    group = len(q) // len(k)
    state.union(q, np.repeat(k, group))
    state.union(k, v)
    _mask_follows_heads(node, q, state)
    _cache(node, 4, 1, k, state)
    _cache(node, 5, 2, v, state)
    if len(node.outputs) > 3 and node.outputs[3].name:  # the QK products, (batch, q heads, q len, kv len)
        state.set_track(node.outputs[3], 1, q, 4)
    for attr, atoms in (("q_num_heads", q), ("kv_num_heads", k)):
        if attr in node.attrs:
            state.edit(SetAttrToKeptCount(node, attr, atoms))
    state.heads.append(q)
    if r == 4:
        state.set_track(node.outputs[0], 1, q, 4)
    else:  # each query head's output holds its K/V group's value channels
        values = tracks[2].atoms.reshape(len(v), -1)
        state.set_track(node.outputs[0], 2, np.repeat(values, group, axis=0).ravel(), 3)


def attention_flops(s) -> int:
    """QKᵀ and the weighted sum of V: 2·B·Hq·S·T·(D + Dv) (the keys' length T from K; a cache's
    past length is not counted)."""
    q, k, y = s.x(), s.w(), s.y()
    if not q or not k or not y or len(q) != len(k):
        return 0
    if len(q) == 4:
        b, hq, seq, d = q
        length, dv = k[2], y[3]
    else:
        hq = int(s.attrs.get("q_num_heads", 0))
        if hq < 1:
            return 0
        b, seq, d, length, dv = q[0], q[1], q[2] // hq, k[1], y[2] // hq
    return 2 * b * hq * seq * length * (d + dv)


register("Attention", flops=attention_flops)


# --- shapes and costs of ONNX Runtime's fused attention (ONNX's shape inference does not know them)

def _ort_attention_shapes(attrs: dict, shapes: list, n_outputs: int) -> list:
    """Attention: (batch, length, hidden) in, (batch, length, V width) out (present: not needed)."""
    x, w = shapes[0], shapes[1] if len(shapes) > 1 else None
    sizes = attrs.get("qkv_hidden_sizes")
    width = int(sizes[2]) if sizes is not None and len(sizes) == 3 else \
        (w[1] // 3 if w is not None and len(w) == 2 and isinstance(w[1], int) else None)
    if x is None or len(x) != 3 or width is None:
        return [None] * n_outputs
    return [[x[0], x[1], width]] + [None] * (n_outputs - 1)


def _mha_shapes(attrs: dict, shapes: list, n_outputs: int) -> list:
    """MultiHeadAttention: query (batch, length, hidden), value 3-D (batch, kv length, V width)
    or 4-D (batch, heads, kv length, head size) -> (batch, length, V width); packed forms: unknown."""
    q, v = shapes[0], shapes[2] if len(shapes) > 2 else None
    if q is None or len(q) != 3 or v is None:
        return [None] * n_outputs
    if len(v) == 3:
        width = v[2]
    elif len(v) == 4 and isinstance(v[1], int) and isinstance(v[3], int):
        width = v[1] * v[3]
    else:
        width = None
    return [None if width is None else [q[0], q[1], width]] + [None] * (n_outputs - 1)


def _ort_attention_flops(s) -> int:
    """The packed QKV projection, 2·B·S·C·(Q+K+V), and the attention core, 2·B·S²·(Q+V)."""
    x, w = s.x(), s.w()
    if not x or not w or len(x) != 3 or len(w) != 2:
        return 0
    sizes = s.attrs.get("qkv_hidden_sizes")
    q, _, v = [int(t) for t in sizes] if sizes is not None else [w[1] // 3] * 3
    b, seq, c = x
    return 2 * b * seq * c * w[1] + 2 * b * seq * seq * (q + v)


def _mha_flops(s) -> int:
    """The attention core, 2·B·S·L·(Q+V), from 3-D query and key/value (other layouts: not counted)."""
    q, k, y = s.x(), s.w(), s.y()
    if not q or not k or not y or len(q) != 3 or len(k) != 3 or len(y) != 3:
        return 0
    return 2 * q[0] * q[1] * k[1] * (q[2] + y[2])


register("com.microsoft:Attention", infer=_ort_attention_shapes, flops=_ort_attention_flops, parameter_inputs=(1, 2))
register("com.microsoft:MultiHeadAttention", infer=_mha_shapes, flops=_mha_flops, parameter_inputs=(3,))
