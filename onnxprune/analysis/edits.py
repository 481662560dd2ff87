"""Edits: updates other than weight slicing that depend on which channels are kept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .state import Edit, KeepFn, set_const_input


@dataclass
class SetAttrToKeptCount(Edit):
    """An integer attribute equal to a channel count, e.g. a depthwise Conv's ``group``."""

    node: gs.Node
    attr: str
    atoms: np.ndarray

    def apply(self, keep: KeepFn) -> None:
        self.node.attrs[self.attr] = int(keep(self.atoms).sum())


@dataclass
class SetSplitSizes(Edit):
    """Split sizes on the channel axis, rewritten as explicit sizes (equal splits may not stay equal)."""

    node: gs.Node
    pieces: list  # atoms of each output
    as_input: bool  # opset >= 13: sizes are input 1, else the ``split`` attribute

    def apply(self, keep: KeepFn) -> None:
        sizes = np.array([int(keep(p).sum()) for p in self.pieces], dtype=np.int64)
        self.node.attrs.pop("num_outputs", None)
        if self.as_input:
            if len(self.node.inputs) < 2:
                self.node.inputs.append(gs.Constant(f"{self.node.name}__input1", sizes))
            else:
                set_const_input(self.node, 1, sizes)
        else:
            self.node.attrs["split"] = [int(v) for v in sizes]


@dataclass
class SetSliceBounds(Edit):
    """A step-1 Slice on the channel axis: its bounds become counts of kept channels."""

    node: gs.Node
    position: int  # index into starts/ends
    atoms: np.ndarray  # atoms of the input's channel axis
    start: int  # resolved, non-negative
    stop: int
    as_input: bool

    def apply(self, keep: KeepFn) -> None:
        kept = keep(self.atoms)
        new_start = int(kept[: self.start].sum())
        new_stop = new_start + int(kept[self.start: self.stop].sum())
        if self.as_input:
            for index, value in ((1, new_start), (2, new_stop)):
                arr = np.array(self.node.inputs[index].values).copy()
                arr[self.position] = value
                set_const_input(self.node, index, arr)
        else:
            for attr, value in (("starts", new_start), ("ends", new_stop)):
                vals = list(self.node.attrs[attr])
                vals[self.position] = value
                self.node.attrs[attr] = vals


@dataclass
class SetVectorEntry(Edit):
    """One entry of a constant shape-like vector (Reshape shape, Resize sizes) equals a channel count."""

    node: gs.Node
    input_index: int
    entry: int
    atoms: np.ndarray  # the output's atoms on that axis (block expansion included)

    def apply(self, keep: KeepFn) -> None:
        arr = np.array(self.node.inputs[self.input_index].values).copy()
        arr[self.entry] = int(keep(self.atoms).sum())
        set_const_input(self.node, self.input_index, arr)


@dataclass
class SetExplicitAxes(Edit):
    """Make an implicit axes list explicit (Squeeze without axes), so pruning cannot change it."""

    node: gs.Node
    axes: list
    as_input: bool  # opset >= 13: axes are input 1, else the ``axes`` attribute

    def apply(self, keep: KeepFn) -> None:
        if self.as_input:
            self.node.inputs.append(gs.Constant(f"{self.node.name}__input1", np.array(self.axes, dtype=np.int64)))
        else:
            self.node.attrs["axes"] = [int(a) for a in self.axes]


@dataclass
class SetConcatVectorEntry(Edit):
    """An entry of a shape vector built by Concat (as exporters build ``view(b, t, h, d)``) that
    equals a channel count. A vector several nodes read (the dynamo exporter shares one per
    distinct shape, across layers) is first copied for ``consumer`` alone."""

    graph: gs.Graph
    consumer: gs.Node
    input_index: int  # the consumer's input that reads the vector
    piece: int  # the Concat input holding the entry
    offset: int
    atoms: np.ndarray

    def apply(self, keep: KeepFn) -> None:
        vector = self.consumer.inputs[self.input_index]
        concat = vector.inputs[0]
        if len(vector.outputs) > 1:
            copy = gs.Variable(f"{self.consumer.name}__shape{self.input_index}", dtype=vector.dtype,
                               shape=vector.shape)
            concat = gs.Node("Concat", name=f"{self.consumer.name}__concat{self.input_index}",
                             attrs=dict(concat.attrs), inputs=list(concat.inputs), outputs=[copy])
            self.graph.nodes.append(concat)
            self.consumer.inputs[self.input_index] = copy
        arr = np.array(concat.inputs[self.piece].values).copy()
        arr[self.offset] = int(keep(self.atoms).sum())
        set_const_input(concat, self.piece, arr)


@dataclass
class SetAttrToKeptSizes(Edit):
    """An int-list attribute whose entries are channel counts (``qkv_hidden_sizes``)."""

    node: gs.Node
    attr: str
    pieces: list  # atoms counted by each entry

    def apply(self, keep: KeepFn) -> None:
        self.node.attrs[self.attr] = [int(keep(p).sum()) for p in self.pieces]
