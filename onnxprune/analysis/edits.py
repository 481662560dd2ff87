"""Edits: updates other than weight slicing that depend on which channels are kept.

Each edit is frozen plan data: the nodes it changes by name, the atoms it counts as read-only
arrays. Rules may pass ``gs.Node`` objects; only their names are kept. ``apply`` changes the
graph being rewritten (a copy), finding the nodes there by name.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .plan import frozen_atoms, node_name
from .state import Edit, KeepFn, set_const_input


def _freeze(edit, nodes: tuple[str, ...] = (), atoms: tuple[str, ...] = (), pieces: tuple[str, ...] = (),
            lists: tuple[str, ...] = ()) -> None:
    """Replace node objects by names, arrays by read-only copies and lists by tuples, in place
    of the fields just set by a frozen dataclass's ``__init__``."""
    for name in nodes:
        object.__setattr__(edit, name, node_name(getattr(edit, name)))
    for name in atoms:
        object.__setattr__(edit, name, frozen_atoms(getattr(edit, name)))
    for name in pieces:
        object.__setattr__(edit, name, tuple(frozen_atoms(p) for p in getattr(edit, name)))
    for name in lists:
        object.__setattr__(edit, name, tuple(int(v) for v in getattr(edit, name)))


@dataclass(frozen=True, eq=False)
class SetAttrToKeptCount(Edit):
    """An integer attribute equal to a channel count, e.g. a depthwise Conv's ``group``."""

    node: str
    attr: str
    atoms: np.ndarray

    def __post_init__(self) -> None:
        _freeze(self, nodes=("node",), atoms=("atoms",))

    def apply(self, keep: KeepFn, graph: gs.Graph, nodes: dict[str, gs.Node]) -> None:
        nodes[self.node].attrs[self.attr] = int(keep(self.atoms).sum())


@dataclass(frozen=True, eq=False)
class SetSplitSizes(Edit):
    """Split sizes on the channel axis, rewritten as explicit sizes (equal splits may not stay equal)."""

    node: str
    pieces: tuple  # atoms of each output
    as_input: bool  # opset >= 13: sizes are input 1, else the ``split`` attribute

    def __post_init__(self) -> None:
        _freeze(self, nodes=("node",), pieces=("pieces",))

    def apply(self, keep: KeepFn, graph: gs.Graph, nodes: dict[str, gs.Node]) -> None:
        node = nodes[self.node]
        sizes = np.array([int(keep(p).sum()) for p in self.pieces], dtype=np.int64)
        node.attrs.pop("num_outputs", None)
        if self.as_input:
            if len(node.inputs) < 2:
                node.inputs.append(gs.Constant(f"{node.name}__input1", sizes))
            else:
                set_const_input(node, 1, sizes)
        else:
            node.attrs["split"] = [int(v) for v in sizes]


@dataclass(frozen=True, eq=False)
class SetSliceBounds(Edit):
    """A step-1 Slice on the channel axis: its bounds become counts of kept channels."""

    node: str
    position: int  # index into starts/ends
    atoms: np.ndarray  # atoms of the input's channel axis
    start: int  # resolved, non-negative
    stop: int
    as_input: bool

    def __post_init__(self) -> None:
        _freeze(self, nodes=("node",), atoms=("atoms",))

    def apply(self, keep: KeepFn, graph: gs.Graph, nodes: dict[str, gs.Node]) -> None:
        node = nodes[self.node]
        kept = keep(self.atoms)
        new_start = int(kept[: self.start].sum())
        new_stop = new_start + int(kept[self.start: self.stop].sum())
        if self.as_input:
            for index, value in ((1, new_start), (2, new_stop)):
                arr = np.array(node.inputs[index].values).copy()
                arr[self.position] = value
                set_const_input(node, index, arr)
        else:
            for attr, value in (("starts", new_start), ("ends", new_stop)):
                vals = list(node.attrs[attr])
                vals[self.position] = value
                node.attrs[attr] = vals


@dataclass(frozen=True, eq=False)
class SetVectorEntry(Edit):
    """One entry of a constant shape-like vector (Reshape shape, Resize sizes) equals a channel count."""

    node: str
    input_index: int
    entry: int
    atoms: np.ndarray  # the output's atoms on that axis (block expansion included)

    def __post_init__(self) -> None:
        _freeze(self, nodes=("node",), atoms=("atoms",))

    def apply(self, keep: KeepFn, graph: gs.Graph, nodes: dict[str, gs.Node]) -> None:
        node = nodes[self.node]
        arr = np.array(node.inputs[self.input_index].values).copy()
        arr[self.entry] = int(keep(self.atoms).sum())
        set_const_input(node, self.input_index, arr)


@dataclass(frozen=True, eq=False)
class SetExplicitAxes(Edit):
    """Make an implicit axes list explicit (Squeeze without axes), so pruning cannot change it."""

    node: str
    axes: tuple
    as_input: bool  # opset >= 13: axes are input 1, else the ``axes`` attribute

    def __post_init__(self) -> None:
        _freeze(self, nodes=("node",), lists=("axes",))

    def apply(self, keep: KeepFn, graph: gs.Graph, nodes: dict[str, gs.Node]) -> None:
        node = nodes[self.node]
        if self.as_input:
            node.inputs.append(gs.Constant(f"{node.name}__input1", np.array(self.axes, dtype=np.int64)))
        else:
            node.attrs["axes"] = [int(a) for a in self.axes]


@dataclass(frozen=True, eq=False)
class SetConcatVectorEntry(Edit):
    """An entry of a shape vector built by Concat (as exporters build ``view(b, t, h, d)``) that
    equals a channel count. A vector several nodes read (the dynamo exporter shares one per
    distinct shape, across layers) is first copied for ``consumer`` alone. (``graph``, the
    analysed graph, is accepted for the rules' sake and not kept: the plan holds no graph.)"""

    graph: InitVar[object]
    consumer: str
    input_index: int  # the consumer's input that reads the vector
    piece: int  # the Concat input holding the entry
    offset: int
    atoms: np.ndarray

    def __post_init__(self, graph) -> None:
        _freeze(self, nodes=("consumer",), atoms=("atoms",))

    def apply(self, keep: KeepFn, graph: gs.Graph, nodes: dict[str, gs.Node]) -> None:
        consumer = nodes[self.consumer]
        vector = consumer.inputs[self.input_index]
        concat = vector.inputs[0]
        if len(vector.outputs) > 1:
            copy = gs.Variable(f"{consumer.name}__shape{self.input_index}", dtype=vector.dtype, shape=vector.shape)
            concat = gs.Node("Concat", name=f"{consumer.name}__concat{self.input_index}",
                             attrs=dict(concat.attrs), inputs=list(concat.inputs), outputs=[copy])
            graph.nodes.append(concat)
            consumer.inputs[self.input_index] = copy
        arr = np.array(concat.inputs[self.piece].values).copy()
        arr[self.offset] = int(keep(self.atoms).sum())
        set_const_input(concat, self.piece, arr)


@dataclass(frozen=True, eq=False)
class SetAttrToKeptSizes(Edit):
    """An int-list attribute whose entries are channel counts (``qkv_hidden_sizes``)."""

    node: str
    attr: str
    pieces: tuple  # atoms counted by each entry

    def __post_init__(self) -> None:
        _freeze(self, nodes=("node",), pieces=("pieces",))

    def apply(self, keep: KeepFn, graph: gs.Graph, nodes: dict[str, gs.Node]) -> None:
        nodes[self.node].attrs[self.attr] = [int(keep(p).sum()) for p in self.pieces]


@dataclass(frozen=True, eq=False)
class SetIOShape(Edit):
    """A graph input's or output's dim on the channel axis becomes the kept count (KV-cache I/O,
    see ``State.cache_io``)."""

    tensor: str
    is_input: bool
    axis: int
    atoms: np.ndarray

    def __post_init__(self) -> None:
        _freeze(self, atoms=("atoms",))

    def apply(self, keep: KeepFn, graph: gs.Graph, nodes: dict[str, gs.Node]) -> None:
        for t in graph.inputs if self.is_input else graph.outputs:
            if t.name == self.tensor and t.shape is not None:
                dims = list(t.shape)
                dims[self.axis] = int(keep(self.atoms).sum())
                t.shape = dims
