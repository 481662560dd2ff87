"""Reductions (Reduce*, ArgMax, ArgMin): channels pass unless the channel axis is reduced."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..analysis.provenance import axes_of
from ..analysis.state import State, UnsupportedPattern
from .common import ints, norm_axis, pass_through
from .registry import dims, rule


@rule("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
      "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", channel_inputs=(0,))


def reduce(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if node.op in ("ArgMax", "ArgMin"):
        axes = [int(node.attrs.get("axis", 0))]
    else:
        switch = 13 if node.op == "ReduceSum" else 18
        axes = ints(node, "axes", 1, switch, state)
        if not axes:
            if int(node.attrs.get("noop_with_empty_axes", 0)):
                pass_through(node, state)
                return
            axes = list(range(tr.rank))
    axes = [norm_axis(a, tr.rank) for a in axes]
    if tr.axis in axes:
        raise UnsupportedPattern(f"{node.op} reduces over the channel axis")
    if int(node.attrs.get("keepdims", 1)):
        state.set_track(node.outputs[0], tr.axis, tr.atoms, tr.rank)
    else:
        new_axis = tr.axis - sum(a < tr.axis for a in axes)
        state.set_track(node.outputs[0], new_axis, tr.atoms, tr.rank - len(axes))



REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


@dims(*REDUCTIONS)
def reduce_dim(w, node: gs.Node, axis: int, r: int, d: int):
    """1 on a reduced axis that is kept; the input's dim elsewhere."""
    if not int(node.attrs.get("keepdims", 1)):
        return None
    axes = axes_of(node) if node.op == "ReduceSum" or "axes" not in node.attrs else [int(a) for a in node.attrs["axes"]]
    if axes is None:
        return None
    return 1 if axis in [a + r if a < 0 else a for a in axes] else w.dim(node.inputs[0], axis, d)
