"""The state that op rules read and write while channels are propagated through a graph.

Channels are tracked as *atoms*: every prunable output channel of a weight layer (Conv, Gemm,
MatMul...) gets a fresh integer id. A tensor that carries channels has a :class:`Track`: the axis
and, for each index along it, the atom it holds. Rules map tracks from a node's inputs to its
outputs; an element-wise merge unions atoms (they must go together); a Flatten into a Gemm
repeats each atom over its block of features. After propagation, each union-find class of atoms
is one removable channel, and classes seen at the same tensors form a group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..io import read_values

#: Maps an atom array to a boolean "kept" mask; used by edits when the selection is known.
KeepFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Track:
    """Channels carried by one tensor: ``atoms[i]`` is the atom at index ``i`` of ``axis``."""

    axis: int
    atoms: np.ndarray
    rank: int


@dataclass
class SliceSite:
    """A constant input of a node whose ``axis`` is indexed by channels and must be sliced."""

    node: gs.Node
    input_index: int
    axis: int
    atoms: np.ndarray
    #: weight_out / weight_in / bias / bn_scale / bn_shift / bn_stat / channel_const
    role: str
    #: consecutive channels of the node's input each index of ``axis`` covers (a quantization
    #: block of MatMulNBits' packed weight); 1 for every unpacked weight
    unit: int = 1
    #: an integer weight's dequantization (``dequantize(raw)``, ``zeroed(raw, axis, index)``:
    #: ops/quantized.py's IntegerWeight), None for float weights
    decode: object = None

    @property
    def raw_values(self) -> np.ndarray:
        """The constant's stored values (read on demand, not kept, for external data)."""
        return np.asarray(read_values(self.node.inputs[self.input_index]))

    @property
    def values(self) -> np.ndarray:
        """The weight's current values, as floats: dequantized where it is stored as integers
        (``decode``) or packed (``OpSpec.weight_values``)."""
        if self.decode is not None:
            return self.decode.dequantize(self.raw_values)
        from ..ops.registry import spec_for

        unpack = spec_for(self.node).weight_values
        values = unpack(self.node, self.input_index) if unpack is not None else None
        return self.raw_values if values is None else np.asarray(values)


class Edit:
    """A change, other than slicing a weight, that depends on which channels are kept.

    Examples: a depthwise Conv's ``group``, Split sizes, Slice bounds, a channel count in a
    Reshape shape. Each op rule that needs one creates it; the rewrite applies them all, to a
    copy of the graph: an edit holds node names and atoms (it is part of the frozen plan), and
    finds its nodes in ``nodes`` (by name) of the ``graph`` being rewritten.
    """

    def apply(self, keep: KeepFn, graph: gs.Graph, nodes: dict[str, gs.Node]) -> None:  # pragma: no cover
        raise NotImplementedError


class UnsupportedPattern(Exception):
    """Raised inside a rule to block every tracked input of the node with a reason."""


@dataclass
class State:
    """What rules see: tracks, atom bookkeeping, sites and edits being collected."""

    opset: int
    parent: list[int] = field(default_factory=list)
    atom_source: list[str] = field(default_factory=list)
    tracks: dict[str, Track] = field(default_factory=dict)
    sites: list[SliceSite] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    blocks: list[tuple[np.ndarray, str]] = field(default_factory=list)
    #: head atoms (one per head) of every Reshape that split channels into attention heads
    heads: list[np.ndarray] = field(default_factory=list)
    #: the graph being analyzed (edits that add nodes need it)
    graph: gs.Graph | None = None
    #: channel counts read at run time into shape vectors (provenance.CountUse), checked by their users
    count_uses: list = field(default_factory=list)
    #: dims and shape values worked out so far (analysis.provenance), for this graph as it is
    dims_cache: dict = field(default_factory=dict)
    #: whether KV-cache graph inputs/outputs may change shape (``PruneOptions.keep_io_shapes`` off)
    cache_io_allowed: bool = True
    #: cache graph inputs/outputs tied to channels so far: name -> (axis, atoms)
    cache_ties: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)

    # --- atoms -------------------------------------------------------------------------
    def fresh(self, count: int, source: gs.Node) -> np.ndarray:
        """New atoms for ``count`` channels created by ``source``."""
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.atom_source.extend([source.name] * count)
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Tie channel ``i`` of ``a`` to channel ``i`` of ``b``: they are removed together."""
        assert len(a) == len(b)
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def roots(self, atoms: np.ndarray) -> np.ndarray:
        return np.fromiter((self.find(a) for a in atoms.tolist()), dtype=np.int64, count=len(atoms))

    def block(self, atoms: np.ndarray, reason: str) -> None:
        """Mark the classes of ``atoms`` as not prunable, keeping the reason for the report."""
        if len(atoms):
            self.blocks.append((np.asarray(atoms), reason))

    # --- tensors -----------------------------------------------------------------------
    def track(self, tensor) -> Track | None:
        if isinstance(tensor, gs.Constant) or tensor is None or not tensor.name:
            return None
        return self.tracks.get(tensor.name)

    def set_track(self, tensor, axis: int, atoms: np.ndarray, rank: int) -> None:
        if tensor is None or not tensor.name:
            return
        self.tracks[tensor.name] = Track(axis, atoms, rank)

    def site(self, node: gs.Node, input_index: int, axis: int, atoms: np.ndarray, role: str, unit: int = 1,
             decode: object = None) -> None:
        site = SliceSite(node, input_index, axis, atoms, role, unit, decode)
        self.sites.append(site)
        # a constant stored in another form (a folded DequantizeLinear's codec) may constrain
        # which channels can go together (whole quantization blocks)
        constrain = getattr(getattr(node.inputs[input_index], "codec", None), "constrain", None)
        if constrain is not None:
            constrain(self, site)

    def edit(self, edit: Edit) -> None:
        self.edits.append(edit)

    # --- KV-cache graph inputs and outputs -----------------------------------------------
    def cache_io(self, tensor, axis: int, atoms: np.ndarray) -> None:
        """Tie ``axis`` of a KV-cache graph input or output to ``atoms``, so that pruning them
        changes its shape; raise :class:`UnsupportedPattern` with the reason where that is not
        allowed (the caller's node is then refused, as for any other refusal).

        What counts as a cache (name, place in the graph, static dim on ``axis`` equal to
        ``len(atoms)``) is documented in :mod:`analysis.cache_io`. A rule calls it where a cache
        tensor meets tracked channels, with the axis and atoms they have there, e.g.

        - a Concat appending new keys (tracked, heads on axis 1) to ``past_key_values.0.key``
          (a graph input): ``state.cache_io(past, 1, key_atoms)``, then the Concat goes on as if
          the past were tracked (this sets its track);
        - an attention op reading ``past_key`` and writing ``present_key`` (both ``[batch,
          kv_heads, seq, head_size]``): ``state.cache_io(node.inputs[i], 1, kv_atoms)`` and
          ``state.cache_io(node.outputs[j], 1, kv_atoms)`` (it sets the output's track).

        The analysis calls it for every tracked graph output (instead of blocking it), and at the
        end ties each layer's past and present together (:meth:`finish_cache_io`). Calling it
        twice for one tensor unions the atoms. The rewrite changes the graph input's or output's
        dim on ``axis`` to the kept count (``edits.SetIOShape``).
        """
        from . import cache_io
        from .edits import SetIOShape

        name = getattr(tensor, "name", "")
        parsed = cache_io.parse(name)
        is_input, is_output = self._graph_io(tensor)
        if parsed is None or not (is_input or is_output):
            where = "graph input" if is_input else "graph output" if is_output else "tensor"
            raise UnsupportedPattern(f"{where} '{name}' is not prunable (not a KV-cache input or output)")
        if (parsed.role == "past") != is_input:
            raise UnsupportedPattern(f"cache tensor '{name}' is a graph {'input' if is_input else 'output'}, "
                                     f"but its name says {parsed.role}")
        if not self.cache_io_allowed:
            raise UnsupportedPattern(f"cache {'input' if is_input else 'output'} '{name}' keeps its shape "
                                     f"(--keep-io-shapes)")
        dims = shape(tensor)
        dtype = getattr(tensor, "dtype", None)
        if dtype is not None and not np.issubdtype(np.dtype(dtype), np.floating):
            raise UnsupportedPattern(f"cache tensor '{name}' is not floating-point")
        if dims is None or not 0 <= axis < len(dims) or dims[axis] != len(atoms):
            got = "unknown" if dims is None or not 0 <= axis < len(dims) or dims[axis] is None else dims[axis]
            raise UnsupportedPattern(f"cache tensor '{name}' has no static dim {axis} of {len(atoms)} "
                                     f"(the head count it would carry; it has {got})")
        known = self.cache_ties.get(name)
        if known is not None:
            if known[0] != axis:
                raise UnsupportedPattern(f"cache tensor '{name}' is tied to channels on two axes")
            self.union(known[1], atoms)
            return
        self.cache_ties[name] = (axis, np.asarray(atoms))
        self.edit(SetIOShape(name, is_input, axis, atoms))
        if self.track(tensor) is None:
            self.set_track(tensor, axis, np.asarray(atoms), len(dims))

    def finish_cache_io(self) -> None:
        """Tie every layer's past and present of one kind together; where the graph has both
        but only one is tied to heads, block it (the decoding loop feeds one into the other)."""
        from . import cache_io

        names = {t.name for t in self.graph.inputs} | {t.name for t in self.graph.outputs}
        for name, (axis, atoms) in list(self.cache_ties.items()):
            parsed = cache_io.parse(name)
            partner = next((n for n in names if cache_io.parse(n) == cache_io.CacheName(
                parsed.partner_role, parsed.layer, parsed.kind)), None)
            if partner is None:
                continue
            tied = self.cache_ties.get(partner)
            if tied is None:
                self.block(atoms, f"cache {parsed.role} '{name}' would change shape but its {parsed.partner_role} "
                                  f"'{partner}' would not")
            elif tied[0] != axis or len(tied[1]) != len(atoms):
                self.block(np.concatenate([atoms, tied[1]]),
                           f"cache tensors '{name}' and '{partner}' carry heads on different axes or counts")
            else:
                self.union(atoms, tied[1])

    def is_cache_name(self, tensor) -> bool:
        """Whether ``tensor``'s name is a KV cache's (see :mod:`analysis.cache_io`): a rule that
        meets an untracked tensor asks this before calling :meth:`cache_io`, to keep its own
        reason for any other tensor."""
        from . import cache_io

        return cache_io.parse(getattr(tensor, "name", "")) is not None

    def _graph_io(self, tensor) -> tuple[bool, bool]:
        if self.graph is None or tensor is None or isinstance(tensor, gs.Constant):
            return False, False
        return (any(t is tensor for t in self.graph.inputs), any(t is tensor for t in self.graph.outputs))


# --- helpers shared by the rules ---------------------------------------------------------

def const(tensor) -> np.ndarray | None:
    """Values of a constant tensor, or None for activations and missing optional inputs."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(read_values(tensor))
    return None


def shape(tensor) -> list | None:
    """Static shape as a list (entries may be None for unknown dims), or None if unknown rank."""
    dims = symbolic_shape(tensor)
    return None if dims is None else [d if isinstance(d, int) else None for d in dims]


def symbolic_shape(tensor) -> list | None:
    """Shape with named dynamic dims kept as their names (equal names are equal dims);
    anonymous unknown dims become distinct objects that equal nothing."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return [int(d) for d in tensor.shape]
    if tensor.shape is None:
        return None
    out = []
    for d in tensor.shape:
        if isinstance(d, (int, np.integer)) and d >= 0:
            out.append(int(d))
        elif isinstance(d, str) and d:
            out.append(d)
        else:
            out.append(object())
    return out


def static_shape(tensor) -> list[int] | None:
    s = shape(tensor)
    if s is None or any(d is None for d in s):
        return None
    return [int(d) for d in s]


def rank(state: State, tensor) -> int | None:
    tr = state.track(tensor)
    if tr is not None:
        return tr.rank
    s = shape(tensor)
    return None if s is None else len(s)


def has_input(node: gs.Node, index: int) -> bool:
    return len(node.inputs) > index and bool(node.inputs[index].name) or (
        len(node.inputs) > index and isinstance(node.inputs[index], gs.Constant))


def set_const_input(node: gs.Node, index: int, values: np.ndarray) -> None:
    """Replace a constant input's values without touching other nodes that share it."""
    old = node.inputs[index]
    values = np.array(values, order="C")  # 0-d stays 0-d (ascontiguousarray would not)
    if isinstance(old, gs.Constant) and len(old.outputs) <= 1:
        old.values = values
        return
    # One (node, input) pair is unique, so this name is too, and it is the same on every run.
    node.inputs[index] = gs.Constant(f"{node.name}__input{index}", values)
