"""Reshaping (Flatten, Reshape): channels map to blocks of features, or split into heads."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.provenance import count_entry, count_use, dim_of, value_of
from ..analysis.state import State, UnsupportedPattern, const, symbolic_shape
from .common import norm_axis, zero_through_data
from .registry import dims, register, rule


def _map_reshape(in_dims: list, axis: int, out_dims: list) -> tuple[int, int] | None:
    """Where does channel axis ``axis`` of ``in_dims`` land in ``out_dims``?

    Returns ``(out_axis, m)``: channel ``c`` becomes indices ``c*m .. c*m+m-1`` of ``out_axis``
    (m = 1: the axis is kept; m > 1: the channel is merged with the axes after it, as a Flatten
    before a Gemm does). None when the channel axis is split or merged with earlier axes.
    Dims before the channel axis may be dynamic (named) if the output repeats them unchanged;
    the channel axis and everything after it must be static.
    """
    # Trailing dims repeated unchanged (even dynamic ones) are contiguous blocks on both sides.
    k = 0
    while k < len(in_dims) - axis - 1 and k < len(out_dims) - 1 and in_dims[-1 - k] == out_dims[-1 - k]:
        k += 1
    if k:
        in_dims, out_dims = in_dims[:len(in_dims) - k], out_dims[:len(out_dims) - k]
    tail = in_dims[axis:]
    if not all(isinstance(d, int) for d in tail):
        return None
    if all(isinstance(d, int) for d in in_dims) and all(isinstance(d, int) for d in out_dims):
        return _map_static(in_dims, axis, out_dims)
    # Dynamic leading dims: they may be kept, merged or split (x.view(-1, C), (N, C) -> (B, T, C)),
    # since the static suffix of the output that holds as many elements as the channel axis and
    # everything after it is where the channels land (both sides hold the same element count).
    total = int(np.prod(tail, dtype=np.int64))
    for b in range(len(out_dims) - 1, -1, -1):
        suffix = out_dims[b:]
        if not isinstance(suffix[0], int):
            return None
        p = int(np.prod(suffix, dtype=np.int64))
        if p == total and suffix[0] != 1:
            mapped = _map_static([1] + tail, 1, [1] + suffix)
            return None if mapped is None else (mapped[0] - 1 + b, mapped[1])
        if p > total:
            return None
    return None


def _map_static(in_dims: list[int], axis: int, out_dims: list[int]) -> tuple[int, int] | None:
    outer = int(np.prod(in_dims[:axis], dtype=np.int64))
    inner = int(np.prod(in_dims[axis + 1:], dtype=np.int64))
    channels = in_dims[axis]
    if channels <= 1 or 0 in in_dims:
        return None
    prefix = 1
    for b, d in enumerate(out_dims):
        if prefix == outer and d != 1 and d % channels == 0:
            m = d // channels
            if m == 1 or inner % m == 0:
                return b, m
            return None
        prefix *= d
        if prefix > outer:
            return None
    return None


@rule("Flatten", channel_inputs=(0,))
def flatten(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    dims = symbolic_shape(node.inputs[0])
    k = norm_axis(int(node.attrs.get("axis", 1)), tr.rank)
    if dims is None or not all(isinstance(d, int) for d in dims[k:]):
        raise UnsupportedPattern("Flatten of a tensor with unknown shape")
    inner = int(np.prod(dims[k:], dtype=np.int64))
    if all(isinstance(d, int) for d in dims[:k]):
        out_dims = [int(np.prod(dims[:k], dtype=np.int64)), inner]
    elif k == 1:  # (batch, C, ...) -> (batch, C*...): a dynamic batch passes through
        out_dims = [dims[0], inner]
    else:
        raise UnsupportedPattern("Flatten of a tensor with unknown shape")
    mapped = _map_reshape(dims, tr.axis, out_dims)
    if mapped is None:
        raise UnsupportedPattern("Flatten merges the channel axis with earlier axes")
    out_axis, m = mapped
    state.set_track(node.outputs[0], out_axis, np.repeat(tr.atoms, m), 2)


@rule("Reshape", channel_inputs=(0,))
def reshape(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    in_dims = symbolic_shape(node.inputs[0])
    out_dims = symbolic_shape(node.outputs[0])
    if in_dims is None or out_dims is None:
        raise UnsupportedPattern("Reshape with unknown input or output shape")
    # Dims shape inference lost (e.g. after attention's MatMuls) are followed back to their source.
    in_dims = [d if isinstance(d, int) else (dim_of(node.inputs[0], i, state.dims_cache) or d)
               for i, d in enumerate(in_dims)]
    if not isinstance(in_dims[tr.axis], int):
        in_dims[tr.axis] = len(tr.atoms)
    elif in_dims[tr.axis] != len(tr.atoms):
        raise UnsupportedPattern("Reshape input does not match its channels")
    entries = value_of(node.inputs[1], state.dims_cache)
    if entries is not None:  # counts read at run time hold today's count
        for use in state.count_uses:
            if use.node is node and use.entry < len(entries):
                entries[use.entry] = len(use.atoms) * use.factor
    if entries is not None and len(entries) == len(out_dims):
        out_dims = _resolve_target(in_dims, tr.axis, out_dims, entries, node)
        last = len(out_dims) - 1
        if entries[last] == -1 and entries.count(-1) == 1 and not isinstance(out_dims[last], int) \
                and all(isinstance(d, int) for d in in_dims[tr.axis:]):
            features = int(np.prod(in_dims[tr.axis:], dtype=np.int64))
            if _weight_layers_fix(node.outputs[0], features):
                out_dims[last] = features
    mapped = _map_reshape(in_dims, tr.axis, out_dims)
    if mapped is None:
        if not _heads_through_batch(node, state, in_dims, entries):
            _split_into_heads(node, state, in_dims, out_dims, entries)
        return
    out_axis, m = mapped
    out_atoms = np.repeat(tr.atoms, m)
    entry = entries[out_axis] if entries is not None and len(entries) == len(out_dims) else None
    if count_use(node, state, out_axis, out_atoms):
        entry = -1  # read from these channels at run time: follows by itself
    if entry == 0 and not int(node.attrs.get("allowzero", 0)):
        if not (out_axis == tr.axis and m == 1):
            raise UnsupportedPattern("Reshape copies a dimension that does not follow the channels")
    elif entry != -1:  # an inferred -1 follows the pruning, even where the vector is shared
        count_entry(node, 1, out_axis, out_atoms, state, expect=len(out_atoms))
    state.set_track(node.outputs[0], out_axis, out_atoms, len(out_dims))


def _weight_layers_fix(tensor, features: int) -> bool:
    """Every consumer of ``tensor`` contracts its last axis with a constant weight of ``features``
    rows. Then, in any run of the original model, a -1 that ends the Reshape making ``tensor``
    is ``features`` (the channels and everything after them): the other entries hold as many
    elements as the input's leading dims. Pruning changes neither those entries nor those dims,
    so the -1 keeps being the channels' share (``reshape(b, t, -1)`` into an output projection,
    where the batch and length are read from tensors whose dims cannot be matched by name)."""
    if not tensor.outputs:
        return False
    for user in tensor.outputs:
        weight = const(user.inputs[1]) if len(user.inputs) > 1 else None
        if user.inputs[0] is not tensor or weight is None or weight.ndim != 2:
            return False
        if user.op == "MatMul" and weight.shape[0] == features:
            continue
        r = len(tensor.shape) if tensor.shape is not None else None
        if user.op == "Gemm" and r == 2 and not int(user.attrs.get("transA", 0)) \
                and weight.shape[1 if int(user.attrs.get("transB", 0)) else 0] == features:
            continue
        return False
    return True


def _map_split(in_dims: list, axis: int, out_dims: list) -> tuple[int, int, int] | None:
    """Does the Reshape split channel axis ``axis`` into (heads, per-head dims...)?

    Returns ``(out_axis, heads, stop)``: channel ``c`` lands at index ``c // (C / heads)`` of
    ``out_axis``, and output axes ``out_axis + 1 .. stop - 1`` hold its place inside the head.
    The dims after the channel axis must come out unchanged, and the dims before it must either
    be repeated unchanged or (all static) multiply to the same count.
    """
    channels, inner = in_dims[axis], in_dims[axis + 1:]
    if not isinstance(channels, int):
        return None
    stop = len(out_dims) - len(inner)
    if out_dims[stop:] != inner:
        return None
    # The static dims just before the inner ones that multiply to C are the split channel axis
    # (the leading dims then hold the same element count on both sides, however arranged).
    for start in range(stop - 2, -1, -1):
        body = out_dims[start:stop]
        if not all(isinstance(d, int) and d > 0 for d in body):
            return None
        p = int(np.prod(body, dtype=np.int64))
        if p == channels:
            return start, body[0], stop
        if p > channels:
            return None
    return None


def _split_into_heads(node: gs.Node, state: State, in_dims: list, out_dims: list, entries: list | None) -> None:
    """A Reshape that splits channels C into (H, D...): attention heads.

    The D channels of each head are tied into one removable unit, and the output carries one
    atom per head on the H axis; the H entry of the shape vector becomes the kept head count
    (an inferred -1 follows by itself). The per-head entries must be constants, so that every
    kept head keeps its size.
    """
    tr = state.track(node.inputs[0])
    split = _map_split(in_dims, tr.axis, out_dims)
    if split is None:
        raise UnsupportedPattern("Reshape splits the channel axis or merges it with earlier axes")
    out_axis, heads, stop = split
    if entries is None or len(entries) != len(out_dims):
        raise UnsupportedPattern("Reshape splits the channel axis into heads with a shape computed at run time")
    allow_zero = int(node.attrs.get("allowzero", 0))
    for j in range(out_axis + 1, stop):
        if not isinstance(entries[j], int) or entries[j] == 0 or (entries[j] == -1 and entries[out_axis] == -1):
            raise UnsupportedPattern("Reshape splits the channel axis into heads of a size computed at run time")
    head_entry = entries[out_axis]
    count_use(node, state, out_axis, np.zeros(0, np.int64))  # a count read as the head count: refused
    if not isinstance(head_entry, int) or head_entry == 0 and not allow_zero:
        raise UnsupportedPattern("Reshape reads its head count at run time")
    blocks = tr.atoms.reshape(heads, -1)
    for j in range(1, blocks.shape[1]):
        state.union(blocks[:, 0], blocks[:, j])
    atoms = blocks[:, 0]
    if head_entry != -1:
        count_entry(node, 1, out_axis, atoms, state, expect=heads)
    state.heads.append(atoms)
    state.set_track(node.outputs[0], out_axis, atoms, len(out_dims))


def _heads_through_batch(node: gs.Node, state: State, in_dims: list, entries: list | None) -> bool:
    """torch's SDPA decomposition transposes K's last two axes through 3-D tensors: the heads
    are merged into the batch, ``reshape(-1, T, D)``, ``transpose(0, 2, 1)``, then split back,
    ``reshape(B, H, D, T)`` with B and H read by Shape from the same K. The chain is one
    transpose of the 4-D tensor: the heads land on the same axis of the last Reshape's output,
    and the track goes there (the tensors in between carry heads merged with the batch, which
    nothing else may read). The -1 and the head count read at run time follow by themselves; a
    constant head count becomes the kept one. Returns False where the Reshape is not the start
    of that chain (its refusal is then the caller's)."""
    tr = state.track(node.inputs[0])
    a = tr.axis
    rest = in_dims[a + 1:]
    if entries is None or a < 1 or entries != [-1] + rest or any(not isinstance(d, (int, str)) for d in in_dims):
        return False
    merged = node.outputs[0]
    transpose = _only_user(merged, state)
    if transpose is None or transpose.op != "Transpose":
        return False
    perm = [int(p) for p in transpose.attrs.get("perm", range(len(rest), -1, -1))]
    back = _only_user(transpose.outputs[0], state)
    if perm[0] != 0 or back is None or back.op != "Reshape" or back.inputs[0] is not transpose.outputs[0]:
        return False
    target = value_of(back.inputs[1], state.dims_cache)
    if target is None or target[:a] != in_dims[:a] or target[a + 1:] != [rest[p - 1] for p in perm[1:]]:
        return False
    if not count_use(back, state, a, tr.atoms):
        if target[a] != len(tr.atoms):
            return False
        count_entry(back, 1, a, tr.atoms, state, expect=len(tr.atoms))
    state.set_track(back.outputs[0], a, tr.atoms, len(in_dims))
    return True


def _only_user(tensor, state: State) -> gs.Node | None:
    """The one node reading ``tensor`` (None where several do, or it is a graph output)."""
    if len(tensor.outputs) != 1 or state.graph is not None and any(t is tensor for t in state.graph.outputs):
        return None
    return tensor.outputs[0]


def _resolve_target(in_dims: list, axis: int, out_dims: list, entries: list, node: gs.Node) -> list:
    """Fill output dims that shape inference left unknown, from what the target vector says
    (:func:`value_of`: ints, dims read at run time by name): 0 copies the input's dim, and a
    single -1 is what is left once the leading (batch-like) dims are matched."""
    allow_zero = int(node.attrs.get("allowzero", 0))
    out = list(out_dims)
    for j, e in enumerate(entries):
        if isinstance(e, str) and not isinstance(out[j], int) or isinstance(e, int) and e > 0:
            out[j] = e
        elif e == 0 and not allow_zero and j < len(in_dims):
            out[j] = in_dims[j]
    free = [j for j, e in enumerate(entries) if e == -1]
    if len(free) == 1 and free[0] >= axis and out[:axis] == in_dims[:axis] \
            and all(isinstance(d, int) for d in in_dims[axis:]):
        rest = [d for j, d in enumerate(out) if j >= axis and j != free[0]]
        if all(isinstance(d, int) and d > 0 for d in rest):
            total = int(np.prod(in_dims[axis:], dtype=np.int64))
            known = int(np.prod(rest, dtype=np.int64))
            if total % known == 0:
                out[free[0]] = total // known
    return out


@dims("Reshape")
def reshape_dim(w, node: gs.Node, axis: int, r: int, d: int):
    """The target vector's entry, where it is a size (0 and -1 depend on the input; not needed so far)."""
    vector = w.value(node.inputs[1], d)
    if vector is None or len(vector) != r:
        return None
    v = vector[axis]
    return None if isinstance(v, int) and v <= 0 else v


register("Reshape", "Flatten", zero_out=zero_through_data)  # zeros stay zeros
