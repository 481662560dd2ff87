"""Axis bookkeeping: Concat, Split, Slice, Transpose, Squeeze, Unsqueeze, Expand, Gather, and the
ops that read shapes at run time (Shape, Size) or compute them (Range, ConstantOfShape)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.edits import SetExplicitAxes, SetSliceBounds, SetSplitSizes
from ..analysis.provenance import aligned, axes_of, broadcast, count_entry, count_read, count_use, rank_of, \
    slice_of_shape, value_of
from ..analysis.state import State, UnsupportedPattern, const, rank, shape
from .common import ints, is_constant, norm_axis, pass_through, zero_through_data
from .registry import ZeroPath, dims, register, rule, values


@rule("Concat")
def concat(node: gs.Node, state: State) -> None:
    tracks = [state.track(t) for t in node.inputs]
    first = next((t for t in tracks if t is not None), None)
    if first is None:
        return
    r = first.rank
    axis = norm_axis(int(node.attrs["axis"]), r)
    if any(t is not None and t.axis == axis for t in tracks):
        if any(t is not None and t.axis != axis for t in tracks):
            raise UnsupportedPattern("Concat of inputs with channels on different axes")
        pieces = []
        for t, tr in zip(node.inputs, tracks):
            if tr is not None:
                pieces.append(tr.atoms)
                continue
            dims = shape(t)
            if dims is None or dims[axis] is None:
                raise UnsupportedPattern(f"Concat input '{t.name}' of unknown size")
            fixed = state.fresh(dims[axis], node)
            state.block(fixed, f"concatenated with non-prunable tensor '{t.name}'")
            pieces.append(fixed)
        state.set_track(node.outputs[0], axis, np.concatenate(pieces), r)
        return
    for t, tr in zip(node.inputs, tracks):
        if tr is None and state.is_cache_name(t):  # past keys/values, a graph input (analysis.cache_io)
            state.cache_io(t, first.axis, first.atoms)
            tr = state.track(t)
        if tr is None:
            raise UnsupportedPattern(f"Concat merges channels with non-prunable tensor '{t.name}'")
        if tr.axis != first.axis or len(tr.atoms) != len(first.atoms):
            raise UnsupportedPattern("Concat of inputs with channels on different axes")
        state.union(first.atoms, tr.atoms)
    state.set_track(node.outputs[0], first.axis, first.atoms, r)


@rule("Split", channel_inputs=(0,))
def split(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    axis = norm_axis(int(node.attrs.get("axis", 0)), tr.rank)
    if axis != tr.axis:
        for out in node.outputs:
            state.set_track(out, tr.axis, tr.atoms, tr.rank)
        return
    sizes = ints(node, "split", 1, 13, state)
    n_out, total = len(node.outputs), len(tr.atoms)
    if sizes is None:
        if "num_outputs" in node.attrs:
            n_out = int(node.attrs["num_outputs"])
        chunk = -(-total // n_out)
        sizes = [min(chunk, total - i * chunk) for i in range(n_out)]
    if sum(sizes) != total or len(sizes) != len(node.outputs):
        raise UnsupportedPattern("Split sizes do not match the channel count")
    offsets = np.cumsum([0] + sizes)
    pieces = [tr.atoms[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
    for out, piece in zip(node.outputs, pieces):
        state.set_track(out, axis, piece, tr.rank)
    state.edit(SetSplitSizes(node, pieces, as_input=state.opset >= 13))


@rule("Slice", channel_inputs=(0,))
def slice_(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    as_input = state.opset >= 10
    axes = ints(node, "axes", 3, 10, state)
    if axes is not None and tr.axis not in [norm_axis(a, tr.rank) for a in axes]:
        pass_through(node, state)  # bounds on other axes may be computed (x[..., : x.shape[-1] // 2])
        return
    starts = ints(node, "starts", 1, 10, state)
    ends = ints(node, "ends", 2, 10, state)
    steps = ints(node, "steps", 4, 10, state) if as_input else None
    if starts is None or ends is None:
        raise UnsupportedPattern("Slice without bounds")
    axes = [norm_axis(a, tr.rank) for a in (axes if axes is not None else range(len(starts)))]
    if tr.axis not in axes:
        pass_through(node, state)
        return
    pos = axes.index(tr.axis)
    if steps is not None and steps[pos] != 1:
        raise UnsupportedPattern("Slice with a step on the channel axis")
    start, stop, _ = slice(starts[pos], ends[pos]).indices(len(tr.atoms))
    stop = max(start, stop)
    state.set_track(node.outputs[0], tr.axis, tr.atoms[start:stop], tr.rank)
    state.edit(SetSliceBounds(node, pos, tr.atoms, start, stop, as_input))


@rule("Transpose", channel_inputs=(0,))
def transpose(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    perm = list(node.attrs.get("perm", range(tr.rank - 1, -1, -1)))
    state.set_track(node.outputs[0], perm.index(tr.axis), tr.atoms, tr.rank)


@rule("Squeeze", channel_inputs=(0,))
def squeeze(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    axes = ints(node, "axes", 1, 13, state)
    if axes is None:
        dims = shape(node.inputs[0])
        if dims is None or any(d is None for d in dims):
            raise UnsupportedPattern("Squeeze without axes on a tensor of unknown shape")
        axes = [i for i, d in enumerate(dims) if d == 1]
        # Without axes, Squeeze drops every size-1 dim: a group pruned to one channel would lose
        # its axis too. Write today's axes down explicitly.
        state.edit(SetExplicitAxes(node, axes, as_input=state.opset >= 13))
    axes = [norm_axis(a, tr.rank) for a in axes]
    if tr.axis in axes:
        raise UnsupportedPattern("Squeeze removes the channel axis")
    new_axis = tr.axis - sum(a < tr.axis for a in axes)
    state.set_track(node.outputs[0], new_axis, tr.atoms, tr.rank - len(axes))


@rule("Unsqueeze", channel_inputs=(0,))
def unsqueeze(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    axes = ints(node, "axes", 1, 13, state)
    if axes is None:
        raise UnsupportedPattern("Unsqueeze without axes")
    out_rank = tr.rank + len(axes)
    inserted = sorted(norm_axis(a, out_rank) for a in axes)
    kept_positions = [i for i in range(out_rank) if i not in inserted]
    state.set_track(node.outputs[0], kept_positions[tr.axis], tr.atoms, out_rank)


@rule("Expand", channel_inputs=(0,))
def expand(node: gs.Node, state: State) -> None:
    """Broadcast to a shape: the channel axis must keep its size (entry 1, or the channel count,
    which then follows the pruning), as when grouped-query attention repeats each K/V head
    along a new axis (Unsqueeze, Expand, Reshape)."""
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    entries = value_of(node.inputs[1], state.dims_cache)
    if entries is None:
        raise UnsupportedPattern("Expand to a shape computed at run time")
    out_rank = max(tr.rank, len(entries))
    out_axis = tr.axis + out_rank - tr.rank
    j = out_axis - (out_rank - len(entries))
    if j >= 0 and count_use(node, state, j, tr.atoms):
        pass  # the count is read from these channels at run time: it follows by itself
    elif j >= 0:
        entry = entries[j]
        if entry is None or isinstance(entry, str):
            raise UnsupportedPattern("Expand to a size computed at run time on the channel axis")
        if entry == len(tr.atoms) and len(tr.atoms) != 1:
            count_entry(node, 1, j, tr.atoms, state)
        elif entry != 1:
            raise UnsupportedPattern("Expand broadcasts the channel axis or reads its size at run time")
    state.set_track(node.outputs[0], out_axis, tr.atoms, out_rank)


@rule("Gather", channel_inputs=(0,))
def gather(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    axis = norm_axis(int(node.attrs.get("axis", 0)), tr.rank)
    if axis == tr.axis:
        raise UnsupportedPattern("Gather along the channel axis")
    idx_rank = rank(state, node.inputs[1])
    if idx_rank is None:
        raise UnsupportedPattern("Gather indices of unknown rank")
    new_axis = tr.axis if tr.axis < axis else tr.axis + idx_rank - 1
    state.set_track(node.outputs[0], new_axis, tr.atoms, tr.rank + idx_rank - 1)


@rule("Shape", channel_inputs=(0,))
def shape_op(node: gs.Node, state: State) -> None:
    """A shape read at run time follows pruning by itself, unless the channel count is read.

    We allow it when every consumer gathers or slices dimensions other than the channel axis, or
    reads the channel count into the shape of those same channels (see :func:`~onnxprune.analysis.provenance.count_read`).
    """
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    start = norm_axis(int(node.attrs.get("start", 0)), tr.rank)
    end = node.attrs.get("end")
    end = tr.rank if end is None else min(norm_axis(int(end), tr.rank), tr.rank)
    if not start <= tr.axis < end:
        return
    position = tr.axis - start
    for consumer in node.outputs[0].outputs:
        if consumer.op == "Slice":
            kept = slice_of_shape(consumer, end - start)
            if kept is not None and position not in kept:
                continue
            if kept is not None and count_read(consumer.outputs[0], tr.atoms, state, entry=list(kept).index(position)):
                continue  # x.shape[-1:] as a one-entry vector, or x.shape[:2] with the count in it
            raise UnsupportedPattern("the channel count is read by Shape")
        indices = const(consumer.inputs[1]) if consumer.op == "Gather" and len(consumer.inputs) > 1 else None
        if indices is None or int(consumer.attrs.get("axis", 0)) != 0:
            raise UnsupportedPattern("the channel count is read by Shape")
        read = position in [norm_axis(int(i), end - start) for i in np.atleast_1d(indices)]
        if read and (np.size(indices) != 1 or not count_read(consumer.outputs[0], tr.atoms, state)):
            raise UnsupportedPattern("the channel count is read by Shape")


@rule("Size", channel_inputs=(0,))
def size_op(node: gs.Node, state: State) -> None:
    if state.track(node.inputs[0]) is not None:
        raise UnsupportedPattern("the element count is read by Size")


# --- dims and shape vectors these ops compute (see analysis.provenance) -----------------------


@dims("Slice", "Split")
def sliced_dim(w, node: gs.Node, axis: int, r: int, d: int):
    """Dims other than the sliced/split axes pass."""
    if node.op == "Split":
        axes = [int(node.attrs.get("axis", 0))]
    elif "axes" in node.attrs:
        axes = [int(a) for a in node.attrs["axes"]]
    else:
        v = const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
        axes = None if v is None else [int(a) for a in np.atleast_1d(v)]
    if axes is None or axis in [a + r if a < 0 else a for a in axes]:
        return None
    return w.dim(node.inputs[0], axis, d)


@dims("Concat")
def concat_dim(w, node: gs.Node, axis: int, r: int, d: int):
    c = int(node.attrs.get("axis", 0))
    c = c + r if c < 0 else c
    parts = [w.dim(t, axis, d) for t in node.inputs]
    if axis == c:
        return sum(parts) if all(isinstance(p, int) for p in parts) else None
    named = [p for p in parts if p is not None]  # every input has this dim
    ints_ = [p for p in named if isinstance(p, int)]
    return ints_[0] if ints_ else (named[0] if named else None)


@dims("Gather")
def gather_dim(w, node: gs.Node, axis: int, r: int, d: int):
    data, indices = node.inputs[0], node.inputs[1]
    ri, rd = rank_of(indices), rank_of(data)
    if ri is None or rd is None:
        return None
    g = int(node.attrs.get("axis", 0))
    g = g + rd if g < 0 else g
    if axis < g:
        return w.dim(data, axis, d)
    if axis < g + ri:
        return w.dim(indices, axis - g, d)
    return w.dim(data, axis - ri + 1, d)


@dims("Range")
def range_dim(w, node: gs.Node, axis: int, r: int, d: int):
    start, delta, limit = const(node.inputs[0]), const(node.inputs[2]), w.value(node.inputs[1], d)
    if start is None or delta is None or limit is None or len(limit) != 1:
        return None
    if np.ravel(start).tolist() == [0] and np.ravel(delta).tolist() == [1]:
        return limit[0]  # a name, or an int (a negative count is empty, not handled)
    return None


@dims("Unsqueeze")
def unsqueeze_dim(w, node: gs.Node, axis: int, r: int, d: int):
    axes = axes_of(node)
    if axes is None:
        return None
    axes = [a + r if a < 0 else a for a in axes]
    if axis in axes:
        return 1
    return w.dim(node.inputs[0], axis - sum(a < axis for a in axes), d)


@dims("Transpose")
def transpose_dim(w, node: gs.Node, axis: int, r: int, d: int):
    perm = node.attrs.get("perm")
    return None if perm is None else w.dim(node.inputs[0], int(perm[axis]), d)


@dims("Expand")
def expand_dim(w, node: gs.Node, axis: int, r: int, d: int):
    vector = w.value(node.inputs[1], d)
    if vector is None:
        return None
    j = axis - (r - len(vector))
    own = aligned(w, node.inputs[0], axis, r, d)
    entry = vector[j] if j >= 0 else 1
    return broadcast([own, entry])


@dims("ConstantOfShape")
def constant_of_shape_dim(w, node: gs.Node, axis: int, r: int, d: int):
    vector = w.value(node.inputs[0], d)
    return None if vector is None or len(vector) != r else vector[axis]


@values("Shape")
def shape_value(w, node: gs.Node, tensor, d: int) -> list | None:
    r = rank_of(node.inputs[0])
    if r is None:
        return None
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    start = max(0, min(r, start + r if start < 0 else start))
    end = r if end is None else max(0, min(r, int(end) + r if int(end) < 0 else int(end)))
    return [w.dim(node.inputs[0], i, d) for i in range(start, end)]


@values("Concat")
def concat_value(w, node: gs.Node, tensor, d: int) -> list | None:
    out = []
    for t in node.inputs:
        part = w.value(t, d)
        if part is None:
            return None
        out.extend(part)
    return out


@values("Unsqueeze", "Squeeze", "Cast", "Identity", "Reshape")
def vector_value(w, node: gs.Node, tensor, d: int) -> list | None:
    """Ops that keep a vector's entries (a scalar made a one-entry vector and back)."""
    inner = w.value(node.inputs[0], d)
    r = rank_of(tensor)
    if inner is None or r is None or r > 1:
        return None
    return inner


@values("Gather")
def gather_value(w, node: gs.Node, tensor, d: int) -> list | None:
    src, idx = w.value(node.inputs[0], d), const(node.inputs[1])
    if src is None or idx is None or int(node.attrs.get("axis", 0)) != 0:
        return None
    try:
        return [src[int(i)] for i in np.atleast_1d(idx)]
    except IndexError:
        return None


@values("Slice")
def slice_value(w, node: gs.Node, tensor, d: int) -> list | None:
    if len(node.inputs) < 3:  # opset >= 10: bounds are inputs
        return None
    src = w.value(node.inputs[0], d)
    bounds = [const(node.inputs[i]) if len(node.inputs) > i and node.inputs[i].name else None
              for i in range(1, 5)]
    starts, ends, axes, steps = bounds
    if src is None or starts is None or ends is None or np.size(starts) != 1 or np.size(ends) != 1:
        return None
    if len(node.inputs) > 3 and node.inputs[3].name and (axes is None or np.ravel(axes).tolist() != [0]):
        return None
    if len(node.inputs) > 4 and node.inputs[4].name and (steps is None or np.ravel(steps).tolist() != [1]):
        return None
    return src[slice(int(np.ravel(starts)[0]), int(np.ravel(ends)[0]))]


@values("ConstantOfShape")
def constant_of_shape_value(w, node: gs.Node, tensor, d: int) -> list | None:
    shape_ = w.value(node.inputs[0], d)
    fill = node.attrs.get("value")
    fill = 0 if fill is None else np.asarray(fill.values if hasattr(fill, "values") else fill).reshape(-1)
    if shape_ is None or len(shape_) > 1 or any(s is None for s in shape_):
        return None
    if np.size(fill) != 1 or np.asarray(fill).dtype.kind not in "iub":
        return None
    n = shape_[0] if shape_ else 1
    return [int(np.ravel(fill)[0])] * n


#: moving, selecting or repeating zeros gives zeros (block removal's oracle walks through them)
register("Transpose", "Squeeze", "Unsqueeze", "Expand", "Slice", "Split", "Gather", zero_out=zero_through_data)


def _zero_concat(node: gs.Node) -> ZeroPath:
    """A concatenation is zero when every piece is: activations walked, constants zeroed."""
    through = tuple(i for i in range(len(node.inputs)) if not is_constant(node, i))
    return ZeroPath(through=through, zeroed=tuple(i for i in range(len(node.inputs)) if i not in through))


register("Concat", zero_out=_zero_concat)
