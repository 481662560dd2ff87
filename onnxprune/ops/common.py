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


def is_constant(node: gs.Node, index: int) -> bool:
    return index < len(node.inputs) and isinstance(node.inputs[index], gs.Constant)


def present(node: gs.Node, indices) -> tuple[int, ...]:
    """The inputs of ``indices`` the node has (optional ones may be left out, or named "")."""
    return tuple(i for i in indices if i < len(node.inputs) and node.inputs[i].name)


def zero_through_data(node: gs.Node):
    """The ZeroPath of an op that maps zeros to zeros on its data input 0 (shape ops, ReLU...)."""
    from .registry import ZeroPath

    return ZeroPath(through=(0,)) if not is_constant(node, 0) else None


def zero_by_parameters(*indices: int):
    """A ZeroPath function for an op whose listed constant inputs, zeroed, zero its output
    whatever its input (a weight layer's weight and bias; a normalisation's scale and shift)."""
    from .registry import ZeroPath

    def zero_out(node: gs.Node):
        wanted = present(node, indices)
        if not wanted or not all(is_constant(node, i) for i in wanted):
            return None
        return ZeroPath(zeroed=wanted)

    return zero_out
