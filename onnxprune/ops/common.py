"""Small helpers the op families' rules share."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.state import State, UnsupportedPattern, const, has_input


def norm_axis(axis: int, r: int) -> int:
    return axis + r if axis < 0 else axis


def ints(node: gs.Node, attr: str, input_index: int, opset_switch: int, state: State) -> list[int] | None:
    """Read an int list that moved from an attribute to an input at ``opset_switch``."""
    if state.opset < opset_switch:
        v = node.attrs.get(attr)
        return None if v is None else [int(x) for x in np.atleast_1d(v)]
    if not has_input(node, input_index):
        return None
    v = const(node.inputs[input_index])
    if v is None:
        raise UnsupportedPattern(f"{node.op} '{attr}' is computed at run time")
    return [int(x) for x in np.atleast_1d(v)]


def output_used(node: gs.Node, index: int) -> bool:
    return len(node.outputs) > index and bool(node.outputs[index].outputs)


def pass_through(node: gs.Node, state: State, out_index: int = 0) -> None:
    tr = state.track(node.inputs[0])
    if tr is not None:
        state.set_track(node.outputs[out_index], tr.axis, tr.atoms, tr.rank)


def same_dim(w, node: gs.Node, axis: int, r: int, d: int):
    """Dims of ops whose output has their input 0's shape."""
    return w.dim(node.inputs[0], axis, d)


def shape_of_input(index: int = 0, outputs: tuple[int, ...] = (0,)) -> Callable:
    """A shape function (:attr:`OpSpec.infer`): the listed outputs have input ``index``'s shape."""

    def infer(attrs: dict, shapes: list, n_outputs: int) -> list:
        return [shapes[index] if i in outputs and index < len(shapes) else None for i in range(n_outputs)]

    return infer
