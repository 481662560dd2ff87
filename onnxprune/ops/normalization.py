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


@rule("SimplifiedLayerNormalization", channel_inputs=(0,))
def simplified_layer_norm(node: gs.Node, state: State) -> None:
    """RMS normalisation (ONNX Runtime's default-domain op, as the GenAI builder writes it): over
    the axes from ``axis`` on, like LayerNormalization; the residual stream it reads stays whole,
    the layers after it prune."""
    layer_norm(node, state)


@rule("com.microsoft:SkipSimplifiedLayerNormalization", channel_inputs=(0, 1))
def skip_simplified_layer_norm(node: gs.Node, state: State) -> None:
    """``input + skip`` (+ bias), RMS-normalised over the last axis; output 3 is the sum (the
    residual stream). Channels reaching it on the last axis are refused (the stream stays whole);
    the layers that read its output create channels of their own."""
    for tr in (state.track(node.inputs[i]) for i in (0, 1)):
        if tr is not None and tr.axis == tr.rank - 1:
            raise UnsupportedPattern(f"{node.op} normalizes over the channel axis (the residual stream stays whole)")
        if tr is not None:
            raise UnsupportedPattern(f"{node.op} with channels on an axis it does not normalize (not supported)")


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



dims("LayerNormalization", "SimplifiedLayerNormalization", "com.microsoft:SkipSimplifiedLayerNormalization", "Softmax",
     "LogSoftmax", "BatchNormalization", "InstanceNormalization")(same_dim)


register("BatchNormalization", parameter_inputs=(1, 2, 3, 4))
# ONNX Runtime's own default-domain schemas: RMS normalisation (written by its GenAI model builder)
# and the LayerNormalization it defined before ONNX did (opset 17).
register("SimplifiedLayerNormalization", "LayerNormalization", runtime_extension=True, infer=shape_of_input(0))
register("com.microsoft:SkipSimplifiedLayerNormalization", infer=shape_of_input(0, outputs=(0, 3)))
register("InstanceNormalization", "LayerNormalization", "GroupNormalization", parameter_inputs=(1, 2))
