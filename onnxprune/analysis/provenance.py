"""Where shape values come from: dims shape inference left unknown, and channel counts read at run time.

Attention masks are built from the input's shape at run time (Shape, Gather, Range, Unsqueeze,
Expand to a shape vector whose -1 entries are swapped for 1 with Equal/Where...), and ONNX shape
inference loses track of them at the first computed shape. :func:`dim_of` and :func:`value_of`
work a dim or a small shape vector out by walking back through the ops that compute it (each
op's ``dim``/``value`` in its spec, :mod:`onnxprune.ops`), and answer None when they cannot
tell — a rule then refuses, as it would for any unknown dim.

The other direction: a channel count read by Shape flows forward into shape vectors
(:func:`count_read`); the Reshape or Expand reading it checks that it follows its own channels
(:func:`count_use`), and a shape entry written as a constant is made the kept count
(:func:`count_entry`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..ops.registry import spec_for
from .edits import SetConcatVectorEntry, SetVectorEntry
from .state import State, UnsupportedPattern, const, has_input, static_shape, symbolic_shape

_DEPTH = 48


def producer(tensor) -> gs.Node | None:
    if isinstance(tensor, gs.Constant) or tensor is None or not tensor.inputs:
        return None
    return tensor.inputs[0]


def rank_of(tensor) -> int | None:
    dims = symbolic_shape(tensor)
    return None if dims is None else len(dims)


def dim_of(tensor, axis: int, cache: dict | None = None) -> int | str | None:
    """See :func:`_dim_of`. ``cache``: answers kept across calls on one unchanged graph, so that
    deep graphs are walked a little further each time rather than from their end every time."""
    return Walk(cache).dim(tensor, axis, _DEPTH)


def value_of(tensor, cache: dict | None = None) -> list | None:
    """See :func:`_value_of`."""
    return Walk(cache).value(tensor, _DEPTH)


class Walk:
    """One walk back through the graph, remembering what it has worked out. An answer that met
    the depth limit is remembered for this walk only, never in the shared cache."""

    def __init__(self, cache: dict | None = None):
        self.cache = cache if cache is not None else {}
        self.local: dict = {}
        self.cut = 0

    def _get(self, key, compute, depth: int):
        if key in self.cache:
            return self.cache[key]
        if key in self.local:
            return self.local[key]
        if depth <= 0:
            self.cut += 1
            return None
        self.local[key] = None  # cycles (none in a valid graph) end here
        before = self.cut
        result = compute()
        self.local[key] = result
        if self.cut == before:
            self.cache[key] = result
        return result

    def dim(self, tensor, axis: int, depth: int):
        return self._get(("dim", id(tensor), axis), lambda: _dim_of(self, tensor, axis, depth), depth)

    def value(self, tensor, depth: int):
        return self._get(("value", id(tensor)), lambda: _value_of(self, tensor, depth), depth)


def _dim_of(w: Walk, tensor, axis: int, depth: int) -> int | str | None:
    """The size of ``tensor`` along ``axis``: an int, a dim name (equal names are equal dims;
    names are followed back to where the dim comes from, so that two names shape inference
    gave the same dim on different paths become one), or None when it cannot be told."""
    dims = symbolic_shape(tensor)
    if dims is None or not 0 <= axis < len(dims):
        return None
    own = dims[axis]
    if isinstance(own, int):
        return own
    node = producer(tensor)
    derive = spec_for(node).dim if node is not None else None
    derived = derive(w, node, axis, len(dims), depth - 1) if derive is not None else None
    if derived is not None:
        return derived
    return own if isinstance(own, str) else None


def _value_of(w: Walk, tensor, depth: int) -> list | None:
    """Entries of a small integer (or bool) vector computed from shapes: ints where known, dim
    names (see :func:`dim_of`) for dims read at run time, else None. Scalars are one-entry
    lists. None when even the length is unknown."""
    v = const(tensor)
    if v is not None:
        if v.ndim > 1 or v.size > 64 or v.dtype.kind not in "iub":
            return None
        return [int(x) for x in np.atleast_1d(v)]
    node = producer(tensor)
    if node is None or depth <= 0:
        return None
    compute = spec_for(node).value
    return None if compute is None else compute(w, node, tensor, depth - 1)


def aligned(w: Walk, tensor, axis: int, out_rank: int, depth: int, matrix: int = 0) -> int | str | None:
    """The dim of a broadcast input at output axis ``axis`` (1 where it has no such axis);
    ``matrix`` trailing axes (MatMul's) take no part in broadcasting."""
    r = rank_of(tensor)
    if r is None:
        return None
    j = axis - (out_rank - r)
    return 1 if j < 0 or (matrix and r - matrix <= 0) else w.dim(tensor, j, depth)


def broadcast(dims: list) -> int | str | None:
    """The broadcast of dims (ints, names, None for unknown): None unless it is certain."""
    known = [d for d in dims if d is not None]
    big = {d for d in known if d != 1}
    ints = {d for d in big if isinstance(d, int)}
    if len(ints) > 1:
        return None
    if ints:
        return ints.pop()  # every other input is 1 or this
    if len(big) == 1:
        return big.pop()  # an unknown input is 1 or this
    if big:
        return None  # two names: either may be 1
    return 1 if len(known) == len(dims) else None


def axes_of(node: gs.Node) -> list[int] | None:
    """The ``axes`` of a node, as an attribute or a constant input 1."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1:
        v = const(node.inputs[1])
        if v is not None:
            return [int(a) for a in np.atleast_1d(v)]
    return None


# --- channel counts read at run time ---------------------------------------------------------

@dataclass
class CountUse:
    """A channel count read at run time that lands in entry ``entry`` of a shape vector read by
    ``node`` (a Reshape or Expand), times ``factor``. It follows the pruning by itself if that
    entry is where ``node`` puts ``factor`` copies of the same channels; the node's rule checks
    that, and the engine refuses the channels of every use left unchecked."""

    atoms: np.ndarray
    node: gs.Node
    entry: int
    factor: int
    checked: bool = False


def count_read(value, atoms: np.ndarray, state: State, entry: int = 0) -> bool:
    """Follow a channel count read at run time (a scalar or one-entry vector, or entry ``entry``
    of a vector of dims, ``x.shape[:2]``) to the shape vectors it lands in, through the ops
    exporters write around it: Unsqueeze, Cast, Mul by a constant, Concat into a vector, a -1
    Reshape of that vector, and the Equal/Where pair that swaps -1 entries for 1 (a count is
    never -1). Anything else: False (refused)."""
    uses: list[CountUse] = []
    if not _walk_count(value, entry, 1, 0, atoms, uses, state):
        return False
    state.count_uses.extend(uses)
    return True


def _walk_count(tensor, entry: int, factor: int, depth: int, atoms, uses: list, state: State) -> bool:
    if depth > 16 or any(t is tensor for t in state.graph.outputs if state.graph is not None):
        return False
    for user in tensor.outputs:
        index = next(i for i, t in enumerate(user.inputs) if t is tensor)
        follow = _count_step(user, index, entry, factor, state)
        if follow is False:
            return False
        if follow == "use":
            uses.append(CountUse(atoms, user, entry, factor))
        elif follow is not None:
            if not _walk_count(user.outputs[0], follow[0], follow[1], depth + 1, atoms, uses, state):
                return False
    return True


def _count_step(user: gs.Node, index: int, entry: int, factor: int, state: State):
    """Where a count at ``entry`` (times ``factor``) of ``user``'s input ``index`` goes: "use"
    (a shape vector read), (entry, factor) in its output, None (not further), False (refused)."""
    op = user.op
    if op in ("Reshape", "Expand") and index == 1:
        return "use"
    if op in ("Unsqueeze", "Squeeze", "Cast", "Identity") and index == 0 or \
            op == "Reshape" and index == 0 and value_of(user.inputs[1], state.dims_cache) == [-1]:
        return entry, factor
    if op == "Mul":
        other = const(user.inputs[1 - index])
        if other is None or other.size != 1 or other.dtype.kind not in "iu" or int(other.ravel()[0]) < 1:
            return False
        return entry, factor * int(other.ravel()[0])
    if op == "Concat" and int(user.attrs.get("axis", 0)) in (0, -1):
        offset = 0
        for piece in user.inputs[:index]:
            dims = static_shape(piece)
            if dims is None or len(dims) != 1:
                return False
            offset += dims[0]
        return entry + offset, factor
    if op == "Shape" or op == "Equal" and _never_equal(user, index, entry):
        return None  # the vector's length, or a comparison that is false at this entry
    if op == "Where" and index == 2 and _condition_false(user.inputs[0], entry):
        return entry, factor
    return False


def _never_equal(node: gs.Node, index: int, entry: int) -> bool:
    """Equal(count vector, other) where ``other`` is negative at ``entry``: false there."""
    other = value_of(node.inputs[1 - index])
    if other is None:
        return False
    v = other[0] if len(other) == 1 else (other[entry] if entry < len(other) else None)
    return isinstance(v, int) and v < 0


def _condition_false(cond, entry: int) -> bool:
    node = cond.inputs[0] if cond.inputs else None
    if node is None or node.op != "Equal":
        return False
    for index in (0, 1):
        if _never_equal(node, index, entry) and not isinstance(node.inputs[index], gs.Constant):
            return True
    return False


def count_use(node: gs.Node, state: State, entry: int, atoms: np.ndarray) -> bool | None:
    """Whether ``entry`` of ``node``'s shape vector is a count read at run time (see CountUse):
    True when it follows ``atoms`` by itself, None when no count is read there. Reads at other
    entries of the same vector are refused (a channel count as a non-channel dim)."""
    found = None
    for use in state.count_uses:
        if use.node is not node:
            continue
        if use.entry != entry:
            raise UnsupportedPattern(f"{node.op} uses a channel count read at run time as another dim")
        expected = np.repeat(use.atoms, use.factor)
        if len(expected) != len(atoms) or not np.array_equal(state.roots(expected), state.roots(atoms)):
            raise UnsupportedPattern(f"{node.op} uses a channel count read at run time that does not follow "
                                     "its channels")
        use.checked = True
        found = True
    return found


def slice_of_shape(node: gs.Node, length: int) -> range | None:
    """The entries a Slice (opset >= 10, constant bounds, step 1) keeps of a shape vector."""
    if len(node.inputs) < 3:
        return None
    starts, ends, axes, steps = [const(node.inputs[i]) if has_input(node, i) else None for i in range(1, 5)]
    if starts is None or ends is None or np.size(starts) != 1 or np.size(ends) != 1:
        return None
    if has_input(node, 3) and (axes is None or list(np.atleast_1d(axes)) != [0]):
        return None
    if has_input(node, 4) and (steps is None or list(np.atleast_1d(steps)) != [1]):
        return None
    return range(length)[slice(int(np.ravel(starts)[0]), int(np.ravel(ends)[0]))]


def count_entry(node: gs.Node, input_index: int, entry: int, atoms: np.ndarray, state: State,
                expect: int | None = None) -> None:
    """Record the edit that makes ``entry`` of a shape vector the kept count of ``atoms``.

    The vector is either a constant (un-shared when rewritten), or a Concat of pieces (as the
    TorchScript and dynamo exporters build ``x.view(b, t, h, d)``) where that entry comes from a
    constant piece; a vector several nodes read is copied first. An entry computed at run time is
    refused, since we could not tell whether it follows the pruned channels.
    """
    vector = node.inputs[input_index]
    values = const(vector)
    if values is not None:
        found = int(np.atleast_1d(values)[entry])
        if expect is not None and found != expect:
            raise UnsupportedPattern(f"{node.op} shape entry {found} does not match the channels ({expect})")
        state.edit(SetVectorEntry(node, input_index, entry, atoms))
        return
    source = vector.inputs[0] if vector.inputs else None
    if source is not None and source.op == "Concat" and int(source.attrs.get("axis", 0)) == 0:
        if _concat_entry(node, input_index, source, entry, atoms, state, expect):
            return
    raise UnsupportedPattern(f"{node.op} target shape computed at run time")


def _concat_entry(node: gs.Node, input_index: int, source: gs.Node, entry: int, atoms: np.ndarray,
                  state: State, expect: int | None) -> bool:
    """:func:`count_entry` for a vector built by Concat: False when the entry is not a constant piece's."""
    vector = node.inputs[input_index]
    offset = 0
    for i, piece in enumerate(source.inputs):
        dims = static_shape(piece)
        if dims is None or len(dims) != 1:
            return False
        if offset <= entry < offset + dims[0]:
            if const(piece) is None:
                return False
            found = int(const(piece)[entry - offset])
            if found == -1 and node.op == "Reshape":
                return True  # inferred: follows the pruning
            if expect is not None and found != expect:
                raise UnsupportedPattern(f"{node.op} shape entry {found} does not match the channels ({expect})")
            if len(vector.outputs) == 1:
                state.edit(SetVectorEntry(source, i, entry - offset, atoms))
            elif state.graph is not None:
                state.edit(SetConcatVectorEntry(state.graph, node, input_index, i, entry - offset, atoms))
            else:
                return False
            return True
        offset += dims[0]
    return False
