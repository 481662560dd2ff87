"""Normalisation: per-channel parameters (BatchNormalization, InstanceNormalization) are sliced;
ops that normalise over the channel axis (LayerNormalization, Softmax, ONNX Runtime's
SkipLayerNormalization...) refuse it."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ..analysis.state import State, UnsupportedPattern, const, has_input
from .common import norm_axis, output_used, pass_through, same_dim, shape_of_input, zero_by_parameters
from .registry import Join, Typed, dims, register, rule


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
    softmax_of(node, state, state.opset)


def softmax_of(node: gs.Node, state: State, opset: int) -> None:
    """Softmax over ``axis`` as ONNX ``opset`` defines it (input 0); channels on other axes pass."""
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if opset < 13:  # the input is coerced to 2-D from `axis`: every later axis is mixed
        start = norm_axis(int(node.attrs.get("axis", 1)), tr.rank)
        axes = list(range(start, tr.rank))
    else:
        axes = [int(node.attrs.get("axis", -1))]
    _block_if_normalized(node, state, axes, "normalizes over")



dims("LayerNormalization", "SimplifiedLayerNormalization", "com.microsoft:SkipSimplifiedLayerNormalization", "Softmax",
     "LogSoftmax", "BatchNormalization", "InstanceNormalization")(same_dim)


register("BatchNormalization", parameter_inputs=(1, 2, 3, 4))
#: a normalisation with zero scale and shift outputs zeros: the end of a residual branch (ResNet's last BN)
register("BatchNormalization", "LayerNormalization", zero_out=zero_by_parameters(1, 2))
# --- the residual join fused into ONNX Runtime's Skip(Simplified)LayerNormalization ---------------
# Skip(Simplified)LayerNormalization(input, skip, gamma[, beta], bias) computes s = input + skip +
# bias, then (RMS) LayerNorm(s) * gamma (+ beta) over the last axis; outputs: the normalised
# tensor, mean and inv_std_var (training only), and s itself (input_skip_bias_sum). Without the
# branch s is the stream: the node becomes the plain normalisation of the stream, its fused bias
# (the branch's output projection's) goes with the branch, and what read s reads the stream.

#: the fused op -> (its plain normalisation, the bias input, the normalisation parameter inputs)
_SKIP_NORMS = {"SkipLayerNormalization": ("LayerNormalization", 4, (2, 3)),
               "SkipSimplifiedLayerNormalization": ("SimplifiedLayerNormalization", 3, (2,))}


def _skip_norm_check(node: gs.Node, graph_outputs: set[str]) -> str | None:
    """The removal keeps the normalised output and the sum; mean and inv_std_var (training
    outputs) it does not, nor a default epsilon it would have to guess."""
    if any(output_used(node, i) or (len(node.outputs) > i and node.outputs[i].name in graph_outputs) for i in (1, 2)):
        return f"{node.op} '{node.name}': its mean or inv_std_var output is read"
    if "epsilon" not in node.attrs:
        return f"{node.op} '{node.name}' has no epsilon attribute (the plain normalisation's default differs)"
    bias = _SKIP_NORMS[node.op][1]
    if has_input(node, bias) and not isinstance(node.inputs[bias], gs.Constant):
        return f"{node.op} '{node.name}': its bias is computed at run time"
    return None


def _skip_norm_remove(graph: gs.Graph, node: gs.Node, stream_input: int) -> None:
    """The node without the branch: the plain normalisation of the stream (normalised output
    only); the sum's readers read the stream (an Identity where it is a graph output)."""
    plain, _, params = _SKIP_NORMS[node.op]
    stream = node.inputs[stream_input]
    total = node.outputs[3] if len(node.outputs) > 3 and node.outputs[3].name else None
    inputs = [stream] + [node.inputs[i] for i in params if has_input(node, i)]
    node.op, node.domain = plain, None
    node.attrs = {"axis": -1, "epsilon": float(node.attrs["epsilon"])}
    node.inputs.clear()
    node.inputs.extend(inputs)
    out = node.outputs[0]
    node.outputs.clear()
    node.outputs.append(out)
    if total is None:
        return
    readers = list(total.outputs)
    if any(total is t for t in graph.outputs) or any(all(t is not total for t in r.inputs) for r in readers):
        graph.nodes.append(gs.Node("Identity", f"{node.name}__sum", inputs=[stream], outputs=[total]))
        return
    for reader in readers:
        for i, t in enumerate(reader.inputs):
            if t is total:
                reader.inputs[i] = stream


for _op, (_plain, _bias, _params) in _SKIP_NORMS.items():
    register(f"com.microsoft:{_op}", join=Join((0, 1), bias=(_bias,), stream_output=3, check=_skip_norm_check,
                                                remove=_skip_norm_remove))
# ONNX Runtime's own default-domain schemas: RMS normalisation (written by its GenAI model builder)
# and the LayerNormalization it defined before ONNX did (opset 17).
register("SimplifiedLayerNormalization", "LayerNormalization", runtime_extension=True, infer=shape_of_input(0))
register("com.microsoft:SkipSimplifiedLayerNormalization", infer=shape_of_input(0, outputs=(0, 3)))
register("InstanceNormalization", "LayerNormalization", "GroupNormalization", parameter_inputs=(1, 2))


# --- ONNX Runtime's fused normalisations (com.microsoft), as onnxruntime.transformers writes them --

@rule("com.microsoft:SkipLayerNormalization", channel_inputs=(0, 1))
def skip_layer_norm(node: gs.Node, state: State) -> None:
    """LayerNorm(input + skip + bias) over the last axis: the residual stream it normalises stays
    whole (its channels are refused here), and the layers writing into it and reading from it
    (an MLP's output projection, the next block's Q/K/V) prune on their other side."""
    for i in (0, 1):
        tr = state.track(node.inputs[i]) if has_input(node, i) else None
        if tr is None:
            continue
        if tr.axis == tr.rank - 1:
            raise UnsupportedPattern("SkipLayerNormalization normalizes over the channel axis (the residual stream)")
        raise UnsupportedPattern("SkipLayerNormalization input carries channels on an axis it does not normalize")


@rule("com.microsoft:EmbedLayerNormalization")
def embed_layer_norm(node: gs.Node, state: State) -> None:
    """Embedding lookups summed and normalised: it starts the residual stream (no prunable
    channels come out); its inputs are token ids, segment ids and a mask, never channels."""
    if any(state.track(t) is not None for t in node.inputs):
        raise UnsupportedPattern("EmbedLayerNormalization input carries channels")


def _skip_layer_norm_shapes(attrs: dict, shapes: list, n_outputs: int) -> list:
    """output and input_skip_bias_sum have the input's shape (mean and inv_std_var: not needed)."""
    x = shapes[0] if shapes else None
    return [x if i in (0, 3) else None for i in range(n_outputs)]


def _embed_layer_norm_shapes(attrs: dict, shapes: list, n_outputs: int) -> list:
    """(batch, length) ids -> output and embedding_sum (batch, length, hidden) in the word
    embedding's type; mask_index (batch,), int32."""
    ids, words = shapes[0], shapes[2] if len(shapes) > 2 else None
    if ids is None or len(ids) != 2 or words is None or len(words) != 2:
        return [None] * n_outputs
    out = Typed(list(ids) + [words[1]], like=2)
    return [out, Typed([ids[0]], elem=onnx.TensorProto.INT32), out][:n_outputs]


register("com.microsoft:SkipLayerNormalization", infer=_skip_layer_norm_shapes, parameter_inputs=(2, 3, 4))
register("com.microsoft:EmbedLayerNormalization", infer=_embed_layer_norm_shapes, parameter_inputs=(2, 3, 4, 5, 6))
