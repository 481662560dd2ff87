"""Normalisation: per-channel parameters (BatchNormalization, InstanceNormalization) are sliced;
ops that normalise over the channel axis (LayerNormalization, Softmax...) refuse it."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..analysis.state import State, UnsupportedPattern, const
from .common import norm_axis, output_used, pass_through, same_dim, shape_of_input
from .registry import dims, register, rule


@rule("BatchNormalization", channel_inputs=(0,))
def batch_norm(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if tr.axis != 1:
        raise UnsupportedPattern("BatchNormalization over a non-channel axis")
    if any(output_used(node, i) for i in range(1, len(node.outputs))):
        raise UnsupportedPattern("BatchNormalization in training mode")
    for index, role in ((1, "bn_scale"), (2, "bn_shift"), (3, "bn_stat"), (4, "bn_stat")):
        if const(node.inputs[index]) is None:
            raise UnsupportedPattern("BatchNormalization parameters computed at run time")
        state.site(node, index, 0, tr.atoms, role)
    pass_through(node, state)


@rule("InstanceNormalization", channel_inputs=(0,))
def instance_norm(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if tr.axis != 1:
        raise UnsupportedPattern("InstanceNormalization over a non-channel axis")
    for index, role in ((1, "bn_scale"), (2, "bn_shift")):
        if const(node.inputs[index]) is None:
            raise UnsupportedPattern("InstanceNormalization parameters computed at run time")
        state.site(node, index, 0, tr.atoms, role)
    pass_through(node, state)


def _block_if_normalized(node: gs.Node, state: State, axes: list[int], what: str) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if tr.axis in [norm_axis(a, tr.rank) for a in axes]:
        raise UnsupportedPattern(f"{node.op} {what} the channel axis")
    pass_through(node, state)
    for i in range(1, len(node.outputs)):
        if output_used(node, i):
            raise UnsupportedPattern(f"{node.op} statistics output is used")


@rule("LayerNormalization", channel_inputs=(0,))
def layer_norm(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    start = norm_axis(int(node.attrs.get("axis", -1)), tr.rank)
    _block_if_normalized(node, state, list(range(start, tr.rank)), "normalizes over")


@rule("GroupNormalization", "LRN", channel_inputs=(0,))
def normalize_over_channels(node: gs.Node, state: State) -> None:
    _block_if_normalized(node, state, [1], "normalizes over")


@rule("MeanVarianceNormalization", channel_inputs=(0,))
def mvn(node: gs.Node, state: State) -> None:
    _block_if_normalized(node, state, list(node.attrs.get("axes", [0, 2, 3])), "normalizes over")


@rule("Softmax", "LogSoftmax", "Hardmax", channel_inputs=(0,))
def softmax(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if state.opset < 13:  # the input is coerced to 2-D from `axis`: every later axis is mixed
        start = norm_axis(int(node.attrs.get("axis", 1)), tr.rank)
        axes = list(range(start, tr.rank))
    else:
        axes = [int(node.attrs.get("axis", -1))]
    _block_if_normalized(node, state, axes, "normalizes over")



dims("LayerNormalization", "Softmax", "LogSoftmax", "BatchNormalization", "InstanceNormalization")(same_dim)


register("BatchNormalization", parameter_inputs=(1, 2, 3, 4))
# ONNX Runtime's own default-domain schemas: RMS normalisation (written by its GenAI model builder)
# and the LayerNormalization it defined before ONNX did (opset 17). No channel rule yet: they block.
register("SimplifiedLayerNormalization", "LayerNormalization", runtime_extension=True, infer=shape_of_input(0))
register("InstanceNormalization", "LayerNormalization", "GroupNormalization", parameter_inputs=(1, 2))
