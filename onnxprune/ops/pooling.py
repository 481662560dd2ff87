"""Pooling, resizing and padding: spatial ops that keep the channel axis as it is."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.edits import SetVectorEntry
from ..analysis.state import State, UnsupportedPattern, const, has_input
from .common import ints, norm_axis, output_used, pass_through
from .registry import rule


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool",
      channel_inputs=(0,))


def pool(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if tr.axis != 1:
        raise UnsupportedPattern(f"{node.op} over the channel axis")
    if output_used(node, 1):  # MaxPool indices are flat offsets that include the channel
        raise UnsupportedPattern("MaxPool indices output is used")
    pass_through(node, state)


@rule("Resize", "Upsample", channel_inputs=(0,))
def resize(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    axes = node.attrs.get("axes")
    axes = [norm_axis(int(a), tr.rank) for a in axes] if axes is not None else list(range(tr.rank))
    if tr.axis not in axes:
        pass_through(node, state)
        return
    pos = axes.index(tr.axis)
    if node.op == "Upsample" and "scales" in node.attrs:
        scales = list(node.attrs["scales"])
    else:
        scale_index = 1 if node.op == "Upsample" or state.opset < 11 else 2
        scales = const(node.inputs[scale_index]) if has_input(node, scale_index) else None
        if has_input(node, scale_index) and scales is None:
            raise UnsupportedPattern("Resize scales computed at run time")
    if scales is not None and np.size(scales) > 0:
        if float(np.asarray(scales).reshape(-1)[pos]) != 1.0:
            raise UnsupportedPattern("Resize scales the channel axis")
        pass_through(node, state)
        return
    sizes = const(node.inputs[3]) if has_input(node, 3) else None
    if sizes is None:
        raise UnsupportedPattern("Resize output size computed at run time")
    if int(sizes[pos]) != len(tr.atoms):
        raise UnsupportedPattern("Resize changes the channel count")
    state.edit(SetVectorEntry(node, 3, pos, tr.atoms))
    pass_through(node, state)


@rule("Pad", channel_inputs=(0,))
def pad(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    pads = ints(node, "pads", 1, 11, state)
    if pads is None:
        raise UnsupportedPattern("Pad without pads")
    axes = ints(node, "axes", 3, 18, state) if state.opset >= 18 else None
    axes = [norm_axis(a, tr.rank) for a in axes] if axes else list(range(tr.rank))
    if tr.axis in axes:
        pos = axes.index(tr.axis)
        if pads[pos] != 0 or pads[pos + len(axes)] != 0:
            raise UnsupportedPattern("Pad pads the channel axis")
    pass_through(node, state)

