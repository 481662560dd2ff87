"""One rule per op type: how an op maps the channels of its inputs to its outputs.

A rule is called for every node, in topological order, with the :class:`State`. It reads the
tracks of its inputs, sets the tracks of its outputs, records the constants to slice (sites) and
the other updates (edits), and blocks what it does not understand — with a reason, never a guess.

``channel_inputs`` names the inputs a rule knows how to handle when they carry channels; a
channel-carrying tensor at any other input is blocked by the engine, so a rule cannot silently
ignore one. Ops without a rule block every channel they touch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from .dims import dim_of, value_of
from .edits import (
    SetAttrToKeptCount,
    SetAttrToKeptSizes,
    SetConcatVectorEntry,
    SetExplicitAxes,
    SetSliceBounds,
    SetSplitSizes,
    SetVectorEntry,
)
from .state import (
    State,
    UnsupportedPattern,
    const,
    has_input,
    rank,
    shape,
    static_shape,
    symbolic_shape,
)

RuleFn = Callable[[gs.Node, State], None]


@dataclass(frozen=True)
class Rule:
    fn: RuleFn
    #: input indices the rule handles when they carry channels; None means all of them.
    channel_inputs: tuple[int, ...] | None = None


RULES: dict[str, Rule] = {}


def rule(*op_types: str, channel_inputs: tuple[int, ...] | None = None):
    """Register ``fn`` for the given op types (``"domain:Op"`` for non-default domains)."""

    def register(fn: RuleFn) -> RuleFn:
        for op in op_types:
            RULES[op] = Rule(fn, channel_inputs)
        return fn

    return register


#: op types whose constant weight (input 1) creates channels and consumes them
WEIGHT_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Layers that compute on integer (quantized) weights; the analysis has no rules for them.
INTEGER_LAYERS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "com.microsoft:QGemm",
                  "com.microsoft:QAttention", "com.microsoft:DynamicQuantizeMatMul", "com.microsoft:MatMulNBits",
                  "com.microsoft:MatMulIntegerToFloat", "com.microsoft:QOrderedMatMul")
#: Inputs that hold a layer's parameters (weights, biases, normalization parameters): constant
#: folding materialises values for these even where that makes them larger than what computes them.
PARAMETER_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
                    "BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2),
                    "LayerNormalization": (1, 2), "GroupNormalization": (1, 2), "PRelu": (1,)}


def quantized_weight(node: gs.Node) -> bool:
    """A weight layer whose weight comes out of DequantizeLinear (QDQ): it is left as it is."""
    return node.op in WEIGHT_LAYERS and len(node.inputs) > 1 and \
        any(p.op == "DequantizeLinear" for p in node.inputs[1].inputs)


def rule_key(node: gs.Node) -> str:
    return node.op if node.domain in (None, "", "ai.onnx") else f"{node.domain}:{node.op}"


# --- small helpers -----------------------------------------------------------------------

def _norm_axis(axis: int, r: int) -> int:
    return axis + r if axis < 0 else axis


def _ints(node: gs.Node, attr: str, input_index: int, opset_switch: int, state: State) -> list[int] | None:
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


def _output_used(node: gs.Node, index: int) -> bool:
    return len(node.outputs) > index and bool(node.outputs[index].outputs)


def _pass_through(node: gs.Node, state: State, out_index: int = 0) -> None:
    tr = state.track(node.inputs[0])
    if tr is not None:
        state.set_track(node.outputs[out_index], tr.axis, tr.atoms, tr.rank)


# --- channel-wise ops: every output channel depends only on the same input channel ----------

@rule("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf",
      "Softplus", "Softsign", "Gelu", "Mish", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor",
      "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Shrink", "Sin", "Cos", "Identity",
      "Cast", "CastLike", "Clip", "Dropout", channel_inputs=(0,))
def unary(node: gs.Node, state: State) -> None:
    """Element-wise on one tensor (extra inputs are scalars: Clip bounds, Dropout ratio)."""
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    for out in node.outputs:  # Dropout's mask has the same shape
        state.set_track(out, tr.axis, tr.atoms, tr.rank)


@rule("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Equal", "Less",
      "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod")
def elementwise(node: gs.Node, state: State) -> None:
    """Broadcasting element-wise ops: channels of all inputs are tied index by index.

    Constant inputs with a per-channel axis are sliced with them; an activation that is not
    tracked but has the full channel dimension cannot lose channels, so the group is blocked.
    """
    inputs = [t for t in node.inputs]
    tracked = [(t, state.track(t)) for t in inputs if state.track(t) is not None]
    if not tracked:
        return
    ranks = [rank(state, t) for t in inputs]
    if any(r is None for r in ranks):
        raise UnsupportedPattern(f"{node.op} input of unknown rank")
    out_rank = max(ranks)
    out_axes = {tr.axis + out_rank - tr.rank for _, tr in tracked}
    if len(out_axes) != 1:
        raise UnsupportedPattern(f"{node.op} combines channels on different axes")
    axis = out_axes.pop()
    ref = tracked[0][1].atoms
    for _, tr in tracked[1:]:
        if len(tr.atoms) != len(ref):
            raise UnsupportedPattern(f"{node.op} broadcasts a channel axis")
        state.union(ref, tr.atoms)
    for index, t in enumerate(inputs):
        if state.track(t) is not None:
            continue
        in_axis = axis - (out_rank - ranks[index])
        if in_axis < 0:
            continue
        dim = dim_of(t, in_axis, state.dims_cache)
        if dim == 1:
            continue
        if dim != len(ref):
            raise UnsupportedPattern(f"{node.op} input '{t.name}' has unknown or mismatched size on the channel axis")
        if const(t) is None:
            raise UnsupportedPattern(f"{node.op} merges channels with non-prunable tensor '{t.name}'")
        state.site(node, index, in_axis, ref, "channel_const")
    for out in node.outputs:
        state.set_track(out, axis, ref, out_rank)


# --- weight layers: sources of channels at their output, sinks at their input -------------

@rule("Conv", channel_inputs=(0,))
def conv(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    weight = const(node.inputs[1])
    if weight is None:
        if tr is not None:
            state.block(tr.atoms, "Conv with weights computed at run time")
        return
    c_out, c_in_per_group = weight.shape[0], weight.shape[1]
    groups = int(node.attrs.get("group", 1))
    out_rank = weight.ndim
    if tr is not None and tr.axis != 1:
        raise UnsupportedPattern("Conv input carries channels on a non-channel axis")
    if tr is not None and len(tr.atoms) != c_in_per_group * groups:
        raise UnsupportedPattern("Conv weight does not match its input's channels")
    if groups == 1:
        if tr is not None:
            state.site(node, 1, 1, tr.atoms, "weight_in")
        out = state.fresh(c_out, node)
        state.site(node, 1, 0, out, "weight_out")
    elif tr is not None and len(tr.atoms) == groups * c_in_per_group and c_out % groups == 0:
        out = _whole_conv_groups(node, state, tr.atoms, groups, c_out // groups)
        state.site(node, 1, 0, out, "weight_out")
    else:
        out = state.fresh(c_out, node)
        state.block(out, f"grouped Conv (group={groups}) on a non-prunable input")
        state.site(node, 1, 0, out, "weight_out")
    _bias(node, 2, out, state)
    state.set_track(node.outputs[0], 1, out, out_rank)


@rule("ConvTranspose", channel_inputs=(0,))
def conv_transpose(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    weight = const(node.inputs[1])  # (C_in, C_out / group, k...)
    if weight is None:
        if tr is not None:
            state.block(tr.atoms, "ConvTranspose with weights computed at run time")
        return
    if tr is not None and tr.axis != 1:
        raise UnsupportedPattern("ConvTranspose input carries channels on a non-channel axis")
    groups = int(node.attrs.get("group", 1))
    if groups == 1:
        if tr is not None:
            state.site(node, 1, 0, tr.atoms, "weight_in")
        out = state.fresh(weight.shape[1], node)
        state.site(node, 1, 1, out, "weight_out")
    elif tr is not None and len(tr.atoms) == weight.shape[0] and weight.shape[0] % groups == 0:
        out = _whole_conv_groups(node, state, tr.atoms, groups, weight.shape[1])
        state.site(node, 1, 0, tr.atoms, "weight_out")
    else:
        out = state.fresh(weight.shape[1] * groups, node)
        state.block(out, f"grouped ConvTranspose (group={groups}) on a non-prunable input")
    _bias(node, 2, out, state)
    state.set_track(node.outputs[0], 1, out, weight.ndim)


def _whole_conv_groups(node: gs.Node, state: State, in_atoms: np.ndarray, groups: int, per_group_out: int
                       ) -> np.ndarray:
    """Grouped and depthwise convs: a conv group's inputs and outputs go together.

    Channels can only leave a grouped conv a whole conv group at a time (every group must keep
    the same width), so the input channels of each conv group are tied into one channel and the
    group's outputs repeat it. Depthwise is the case of one input channel per group. Returns
    the output atoms; the ``group`` attribute becomes the number of conv groups kept.
    """
    blocks = in_atoms.reshape(groups, -1)
    for j in range(1, blocks.shape[1]):
        state.union(blocks[:, 0], blocks[:, j])
    state.edit(SetAttrToKeptCount(node, "group", blocks[:, 0]))
    return np.repeat(blocks[:, 0], per_group_out)


def _bias(node: gs.Node, index: int, out: np.ndarray, state: State) -> None:
    if not has_input(node, index):
        return
    bias = const(node.inputs[index])
    if bias is None:
        state.block(out, f"{node.op} bias computed at run time")
    elif bias.ndim >= 1 and bias.shape[-1] == len(out) and len(out) > 1:
        state.site(node, index, bias.ndim - 1, out, "bias")
    elif bias.size != 1:
        state.block(out, f"{node.op} bias of unexpected shape {list(bias.shape)}")


@rule("Gemm", channel_inputs=(0,))
def gemm(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    weight = const(node.inputs[1])
    if weight is None or weight.ndim != 2:
        if tr is not None:
            state.block(tr.atoms, "Gemm with weights computed at run time")
        return
    trans_b = int(node.attrs.get("transB", 0))
    if tr is not None:
        if int(node.attrs.get("transA", 0)) or tr.axis != 1:
            raise UnsupportedPattern("Gemm with a transposed activation input")
        if len(tr.atoms) != weight.shape[1 if trans_b else 0]:
            raise UnsupportedPattern("Gemm weight does not match its input's features")
        state.site(node, 1, 1 if trans_b else 0, tr.atoms, "weight_in")
    out = state.fresh(weight.shape[0] if trans_b else weight.shape[1], node)
    state.site(node, 1, 0 if trans_b else 1, out, "weight_out")
    _bias(node, 2, out, state)
    state.set_track(node.outputs[0], 1, out, 2)


@rule("MatMul")
def matmul(node: gs.Node, state: State) -> None:
    """Activation @ constant 2-D weight: the last axis is contracted in and created out.

    Between two activations (attention), see :func:`_matmul_activations`.
    """
    a, b = node.inputs[0], node.inputs[1]
    tr = state.track(a)
    weight = const(b)
    if weight is None:
        _matmul_activations(node, state)
        return
    if weight.ndim != 2 or const(a) is not None:
        if tr is not None:
            reason = "MatMul between two activations" if weight is None else "MatMul with a batched constant"
            state.block(tr.atoms, reason)
        return
    r = rank(state, a)
    if r is None:
        if tr is not None:
            state.block(tr.atoms, "MatMul input of unknown rank")
        return
    if tr is not None:
        if tr.axis != r - 1:
            raise UnsupportedPattern("MatMul input carries channels on a non-feature axis")
        if len(tr.atoms) != weight.shape[0]:
            raise UnsupportedPattern("MatMul weight does not match its input's features")
        state.site(node, 1, 0, tr.atoms, "weight_in")
    out = state.fresh(weight.shape[1], node)
    state.site(node, 1, 1, out, "weight_out")
    state.set_track(node.outputs[0], r - 1, out, r)


def _matmul_activations(node: gs.Node, state: State) -> None:
    """``A @ B`` where B is computed: channels pass through where they do not meet each other.

    A's rows (axis -2) become the output's rows and B's columns (axis -1) its columns, each
    output row/column depending on that one input row/column only; a batch axis (attention
    heads, after a Reshape split the channels into heads) is computed independently per index,
    so the heads of A and B are tied like an element-wise op ties channels. Channels on the
    contracted axis (A's -1, B's -2) are refused: removing one would change every output.
    """
    a, b = node.inputs[0], node.inputs[1]
    ta, tb = state.track(a), state.track(b)
    if ta is None and tb is None:
        return
    ra, rb = rank(state, a), rank(state, b)
    if ra is None or rb is None:
        raise UnsupportedPattern("MatMul between two activations of unknown rank")
    if ra < 2 or rb < 2:
        raise UnsupportedPattern("MatMul between two activations with a 1-D operand")
    out_rank = max(ra, rb)
    mapped = []  # (kind, output axis, atoms)
    for tr, r, contracted, own in ((ta, ra, ra - 1, ra - 2), (tb, rb, rb - 2, rb - 1)):
        if tr is None:
            continue
        if tr.axis == contracted:
            raise UnsupportedPattern("MatMul between two activations contracts over the channel axis")
        if tr.axis == own:
            mapped.append(("matrix", out_rank - (2 if own == r - 2 else 1), tr.atoms))
        else:
            mapped.append(("batch", tr.axis + out_rank - r, tr.atoms))
    kinds = {m[0] for m in mapped}
    axes = {m[1] for m in mapped}
    if len(mapped) == 2 and (kinds != {"batch"} or len(axes) != 1):
        raise UnsupportedPattern("MatMul between two activations with channels on different axes")
    kind, axis, atoms = mapped[0]
    if kind == "batch":
        if len(mapped) == 2:
            if len(mapped[1][2]) != len(atoms):
                raise UnsupportedPattern("MatMul broadcasts a channel axis")
            state.union(atoms, mapped[1][2])
        else:  # the other operand must broadcast over the heads, or be tracked with them
            other, r = (b, rb) if ta is not None else (a, ra)
            in_axis = axis - (out_rank - r)
            if in_axis >= 0 and dim_of(other, in_axis, state.dims_cache) != 1:
                raise UnsupportedPattern(
                    f"MatMul combines channels with non-prunable tensor '{other.name}' on a batch axis")
    state.set_track(node.outputs[0], axis, atoms, out_rank)


# --- fused attention (ONNX Runtime's com.microsoft ops, as onnxruntime.transformers writes them)

def _no_extra_outputs(node: gs.Node) -> None:
    if any(_output_used(node, i) for i in range(1, len(node.outputs))):
        raise UnsupportedPattern(f"{node.op} with a key/value cache output")


@rule("com.microsoft:Attention", channel_inputs=(0,))
def ort_attention(node: gs.Node, state: State) -> None:
    """Packed QKV projection and attention in one op: ``num_heads`` heads of the weight's Q, K and
    V column blocks. A head is one unit (its Q, K, V columns and bias); the output carries it on
    its V columns, and ``num_heads`` (and ``qkv_hidden_sizes``) become the kept counts."""
    tr = state.track(node.inputs[0])
    weight, bias = const(node.inputs[1]), const(node.inputs[2]) if has_input(node, 2) else None
    heads = int(node.attrs.get("num_heads", 0))
    if weight is None or weight.ndim != 2 or heads < 1:
        if tr is not None:
            raise UnsupportedPattern("Attention with weights computed at run time")
        return
    if tr is not None:
        if tr.axis != tr.rank - 1 or len(tr.atoms) != weight.shape[0]:
            raise UnsupportedPattern("Attention input carries channels on a non-feature axis")
        state.site(node, 1, 0, tr.atoms, "weight_in")
    sizes = node.attrs.get("qkv_hidden_sizes")
    sizes = [int(v) for v in sizes] if sizes is not None else [weight.shape[1] // 3] * 3
    if sum(sizes) != weight.shape[1] or any(v % heads for v in sizes) or sizes[0] != sizes[1]:
        raise UnsupportedPattern("Attention weight does not split into its heads")
    if any(has_input(node, i) for i in range(4, len(node.inputs))) or \
            any(_output_used(node, i) for i in range(1, len(node.outputs))):
        raise UnsupportedPattern("Attention with a key/value cache or an attention bias")
    r = rank(state, node.inputs[0]) or 3  # (batch, length, hidden) by the op's definition
    if r != 3:
        raise UnsupportedPattern("Attention input is not (batch, length, hidden)")
    h = state.fresh(heads, node)
    pieces = [np.repeat(h, v // heads) for v in sizes]
    columns = np.concatenate(pieces)
    state.site(node, 1, 1, columns, "weight_out")
    if bias is not None:
        if bias.shape != (weight.shape[1],):
            raise UnsupportedPattern("Attention bias of unexpected shape")
        state.site(node, 2, 0, columns, "bias")
    elif has_input(node, 2):
        raise UnsupportedPattern("Attention bias computed at run time")
    state.edit(SetAttrToKeptCount(node, "num_heads", h))
    if "qkv_hidden_sizes" in node.attrs:
        state.edit(SetAttrToKeptSizes(node, "qkv_hidden_sizes", pieces))
    state.heads.append(h)
    state.set_track(node.outputs[0], r - 1, pieces[-1], r)


@rule("com.microsoft:MultiHeadAttention", channel_inputs=(0, 1, 2))
def ort_multi_head_attention(node: gs.Node, state: State) -> None:
    """Attention on projected query, key and value (B, S, heads x head size): the channels of
    each head are tied across Q, K and V, the output carries the heads on V's channels, and
    ``num_heads`` becomes the kept count."""
    heads = int(node.attrs.get("num_heads", 0))
    tracks = [state.track(node.inputs[i]) if has_input(node, i) else None for i in range(3)]
    if all(t is None for t in tracks):
        return
    if heads < 1 or any(t is None for t in tracks):
        raise UnsupportedPattern("MultiHeadAttention with packed or non-prunable query, key or value")
    extra = [i for i in range(4, len(node.inputs)) if has_input(node, i) and i != 4]
    if extra or any(_output_used(node, i) for i in range(1, len(node.outputs))):
        raise UnsupportedPattern("MultiHeadAttention with an attention bias or a key/value cache")
    per_head = []
    for tr in tracks:
        if tr.rank != 3 or tr.axis != 2 or len(tr.atoms) % heads:
            raise UnsupportedPattern("MultiHeadAttention input not shaped (batch, length, heads x size)")
        blocks = tr.atoms.reshape(heads, -1)
        for j in range(1, blocks.shape[1]):
            state.union(blocks[:, 0], blocks[:, j])
        per_head.append(blocks[:, 0])
    state.union(per_head[0], per_head[1])
    state.union(per_head[0], per_head[2])
    if has_input(node, 3):
        bias = const(node.inputs[3])
        if bias is None or bias.ndim != 1 or len(bias) != sum(len(t.atoms) for t in tracks):
            raise UnsupportedPattern("MultiHeadAttention bias computed at run time or of unexpected shape")
        state.site(node, 3, 0, np.concatenate([t.atoms for t in tracks]), "channel_const")
    state.edit(SetAttrToKeptCount(node, "num_heads", per_head[0]))
    state.heads.append(per_head[0])
    state.set_track(node.outputs[0], 2, tracks[2].atoms, 3)


# --- normalisation ----------------------------------------------------------------------

@rule("BatchNormalization", channel_inputs=(0,))
def batch_norm(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if tr.axis != 1:
        raise UnsupportedPattern("BatchNormalization over a non-channel axis")
    if any(_output_used(node, i) for i in range(1, len(node.outputs))):
        raise UnsupportedPattern("BatchNormalization in training mode")
    for index, role in ((1, "bn_scale"), (2, "bn_shift"), (3, "bn_stat"), (4, "bn_stat")):
        if const(node.inputs[index]) is None:
            raise UnsupportedPattern("BatchNormalization parameters computed at run time")
        state.site(node, index, 0, tr.atoms, role)
    _pass_through(node, state)


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
    _pass_through(node, state)


def _block_if_normalized(node: gs.Node, state: State, axes: list[int], what: str) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if tr.axis in [_norm_axis(a, tr.rank) for a in axes]:
        raise UnsupportedPattern(f"{node.op} {what} the channel axis")
    _pass_through(node, state)
    for i in range(1, len(node.outputs)):
        if _output_used(node, i):
            raise UnsupportedPattern(f"{node.op} statistics output is used")


@rule("LayerNormalization", channel_inputs=(0,))
def layer_norm(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    start = _norm_axis(int(node.attrs.get("axis", -1)), tr.rank)
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
        start = _norm_axis(int(node.attrs.get("axis", 1)), tr.rank)
        axes = list(range(start, tr.rank))
    else:
        axes = [int(node.attrs.get("axis", -1))]
    _block_if_normalized(node, state, axes, "normalizes over")


# --- pooling, resizing, padding -----------------------------------------------------------

@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool",
      channel_inputs=(0,))
def pool(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if tr.axis != 1:
        raise UnsupportedPattern(f"{node.op} over the channel axis")
    if _output_used(node, 1):  # MaxPool indices are flat offsets that include the channel
        raise UnsupportedPattern("MaxPool indices output is used")
    _pass_through(node, state)


@rule("Resize", "Upsample", channel_inputs=(0,))
def resize(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    axes = node.attrs.get("axes")
    axes = [_norm_axis(int(a), tr.rank) for a in axes] if axes is not None else list(range(tr.rank))
    if tr.axis not in axes:
        _pass_through(node, state)
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
        _pass_through(node, state)
        return
    sizes = const(node.inputs[3]) if has_input(node, 3) else None
    if sizes is None:
        raise UnsupportedPattern("Resize output size computed at run time")
    if int(sizes[pos]) != len(tr.atoms):
        raise UnsupportedPattern("Resize changes the channel count")
    state.edit(SetVectorEntry(node, 3, pos, tr.atoms))
    _pass_through(node, state)


@rule("Pad", channel_inputs=(0,))
def pad(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    pads = _ints(node, "pads", 1, 11, state)
    if pads is None:
        raise UnsupportedPattern("Pad without pads")
    axes = _ints(node, "axes", 3, 18, state) if state.opset >= 18 else None
    axes = [_norm_axis(a, tr.rank) for a in axes] if axes else list(range(tr.rank))
    if tr.axis in axes:
        pos = axes.index(tr.axis)
        if pads[pos] != 0 or pads[pos + len(axes)] != 0:
            raise UnsupportedPattern("Pad pads the channel axis")
    _pass_through(node, state)


# --- axis bookkeeping: concat, split, slice, transpose, squeeze, gather -------------------

@rule("Concat")
def concat(node: gs.Node, state: State) -> None:
    tracks = [state.track(t) for t in node.inputs]
    first = next((t for t in tracks if t is not None), None)
    if first is None:
        return
    r = first.rank
    axis = _norm_axis(int(node.attrs["axis"]), r)
    if any(t is not None and t.axis == axis for t in tracks):
        if any(t is not None and t.axis != axis for t in tracks):
            raise UnsupportedPattern("Concat of inputs with channels on different axes")
        pieces = []
        for t, tr in zip(node.inputs, tracks):
            if tr is not None:
                pieces.append(tr.atoms)
                continue
            dims = shape(t)
            if dims is None or dims[axis] is None:
                raise UnsupportedPattern(f"Concat input '{t.name}' of unknown size")
            fixed = state.fresh(dims[axis], node)
            state.block(fixed, f"concatenated with non-prunable tensor '{t.name}'")
            pieces.append(fixed)
        state.set_track(node.outputs[0], axis, np.concatenate(pieces), r)
        return
    for t, tr in zip(node.inputs, tracks):
        if tr is None:
            raise UnsupportedPattern(f"Concat merges channels with non-prunable tensor '{t.name}'")
        if tr.axis != first.axis or len(tr.atoms) != len(first.atoms):
            raise UnsupportedPattern("Concat of inputs with channels on different axes")
        state.union(first.atoms, tr.atoms)
    state.set_track(node.outputs[0], first.axis, first.atoms, r)


@rule("Split", channel_inputs=(0,))
def split(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    axis = _norm_axis(int(node.attrs.get("axis", 0)), tr.rank)
    if axis != tr.axis:
        for out in node.outputs:
            state.set_track(out, tr.axis, tr.atoms, tr.rank)
        return
    sizes = _ints(node, "split", 1, 13, state)
    n_out, total = len(node.outputs), len(tr.atoms)
    if sizes is None:
        if "num_outputs" in node.attrs:
            n_out = int(node.attrs["num_outputs"])
        chunk = -(-total // n_out)
        sizes = [min(chunk, total - i * chunk) for i in range(n_out)]
    if sum(sizes) != total or len(sizes) != len(node.outputs):
        raise UnsupportedPattern("Split sizes do not match the channel count")
    offsets = np.cumsum([0] + sizes)
    pieces = [tr.atoms[offsets[i]:offsets[i + 1]] for i in range(len(sizes))]
    for out, piece in zip(node.outputs, pieces):
        state.set_track(out, axis, piece, tr.rank)
    state.edit(SetSplitSizes(node, pieces, as_input=state.opset >= 13))


@rule("Slice", channel_inputs=(0,))
def slice_(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    as_input = state.opset >= 10
    axes = _ints(node, "axes", 3, 10, state)
    if axes is not None and tr.axis not in [_norm_axis(a, tr.rank) for a in axes]:
        _pass_through(node, state)  # bounds on other axes may be computed (x[..., : x.shape[-1] // 2])
        return
    starts = _ints(node, "starts", 1, 10, state)
    ends = _ints(node, "ends", 2, 10, state)
    steps = _ints(node, "steps", 4, 10, state) if as_input else None
    if starts is None or ends is None:
        raise UnsupportedPattern("Slice without bounds")
    axes = [_norm_axis(a, tr.rank) for a in (axes if axes is not None else range(len(starts)))]
    if tr.axis not in axes:
        _pass_through(node, state)
        return
    pos = axes.index(tr.axis)
    if steps is not None and steps[pos] != 1:
        raise UnsupportedPattern("Slice with a step on the channel axis")
    start, stop, _ = slice(starts[pos], ends[pos]).indices(len(tr.atoms))
    stop = max(start, stop)
    state.set_track(node.outputs[0], tr.axis, tr.atoms[start:stop], tr.rank)
    state.edit(SetSliceBounds(node, pos, tr.atoms, start, stop, as_input))


@rule("Transpose", channel_inputs=(0,))
def transpose(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    perm = list(node.attrs.get("perm", range(tr.rank - 1, -1, -1)))
    state.set_track(node.outputs[0], perm.index(tr.axis), tr.atoms, tr.rank)


@rule("Squeeze", channel_inputs=(0,))
def squeeze(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    axes = _ints(node, "axes", 1, 13, state)
    if axes is None:
        dims = shape(node.inputs[0])
        if dims is None or any(d is None for d in dims):
            raise UnsupportedPattern("Squeeze without axes on a tensor of unknown shape")
        axes = [i for i, d in enumerate(dims) if d == 1]
        # Without axes, Squeeze drops every size-1 dim: a group pruned to one channel would lose
        # its axis too. Write today's axes down explicitly.
        state.edit(SetExplicitAxes(node, axes, as_input=state.opset >= 13))
    axes = [_norm_axis(a, tr.rank) for a in axes]
    if tr.axis in axes:
        raise UnsupportedPattern("Squeeze removes the channel axis")
    new_axis = tr.axis - sum(a < tr.axis for a in axes)
    state.set_track(node.outputs[0], new_axis, tr.atoms, tr.rank - len(axes))


@rule("Unsqueeze", channel_inputs=(0,))
def unsqueeze(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    axes = _ints(node, "axes", 1, 13, state)
    if axes is None:
        raise UnsupportedPattern("Unsqueeze without axes")
    out_rank = tr.rank + len(axes)
    inserted = sorted(_norm_axis(a, out_rank) for a in axes)
    kept_positions = [i for i in range(out_rank) if i not in inserted]
    state.set_track(node.outputs[0], kept_positions[tr.axis], tr.atoms, out_rank)


@rule("Expand", channel_inputs=(0,))
def expand(node: gs.Node, state: State) -> None:
    """Broadcast to a shape: the channel axis must keep its size (entry 1, or the channel count,
    which then follows the pruning), as when grouped-query attention repeats each K/V head
    along a new axis (Unsqueeze, Expand, Reshape)."""
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    entries = value_of(node.inputs[1], state.dims_cache)
    if entries is None:
        raise UnsupportedPattern("Expand to a shape computed at run time")
    out_rank = max(tr.rank, len(entries))
    out_axis = tr.axis + out_rank - tr.rank
    j = out_axis - (out_rank - len(entries))
    if j >= 0 and _count_use(node, state, j, tr.atoms):
        pass  # the count is read from these channels at run time: it follows by itself
    elif j >= 0:
        entry = entries[j]
        if entry is None or isinstance(entry, str):
            raise UnsupportedPattern("Expand to a size computed at run time on the channel axis")
        if entry == len(tr.atoms) and len(tr.atoms) != 1:
            _count_entry(node, 1, j, tr.atoms, state)
        elif entry != 1:
            raise UnsupportedPattern("Expand broadcasts the channel axis or reads its size at run time")
    state.set_track(node.outputs[0], out_axis, tr.atoms, out_rank)


@rule("Gather", channel_inputs=(0,))
def gather(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    axis = _norm_axis(int(node.attrs.get("axis", 0)), tr.rank)
    if axis == tr.axis:
        raise UnsupportedPattern("Gather along the channel axis")
    idx_rank = rank(state, node.inputs[1])
    if idx_rank is None:
        raise UnsupportedPattern("Gather indices of unknown rank")
    new_axis = tr.axis if tr.axis < axis else tr.axis + idx_rank - 1
    state.set_track(node.outputs[0], new_axis, tr.atoms, tr.rank + idx_rank - 1)


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
        axes = _ints(node, "axes", 1, switch, state)
        if not axes:
            if int(node.attrs.get("noop_with_empty_axes", 0)):
                _pass_through(node, state)
                return
            axes = list(range(tr.rank))
    axes = [_norm_axis(a, tr.rank) for a in axes]
    if tr.axis in axes:
        raise UnsupportedPattern(f"{node.op} reduces over the channel axis")
    if int(node.attrs.get("keepdims", 1)):
        state.set_track(node.outputs[0], tr.axis, tr.atoms, tr.rank)
    else:
        new_axis = tr.axis - sum(a < tr.axis for a in axes)
        state.set_track(node.outputs[0], new_axis, tr.atoms, tr.rank - len(axes))


# --- reshaping: Flatten and Reshape map channels to blocks of features -------------------

def _map_reshape(in_dims: list, axis: int, out_dims: list) -> tuple[int, int] | None:
    """Where does channel axis ``axis`` of ``in_dims`` land in ``out_dims``?

    Returns ``(out_axis, m)``: channel ``c`` becomes indices ``c*m .. c*m+m-1`` of ``out_axis``
    (m = 1: the axis is kept; m > 1: the channel is merged with the axes after it, as a Flatten
    before a Gemm does). None when the channel axis is split or merged with earlier axes.
    Dims before the channel axis may be dynamic (named) if the output repeats them unchanged;
    the channel axis and everything after it must be static.
    """
    # Trailing dims repeated unchanged (even dynamic ones) are contiguous blocks on both sides.
    k = 0
    while k < len(in_dims) - axis - 1 and k < len(out_dims) - 1 and in_dims[-1 - k] == out_dims[-1 - k]:
        k += 1
    if k:
        in_dims, out_dims = in_dims[:len(in_dims) - k], out_dims[:len(out_dims) - k]
    tail = in_dims[axis:]
    if not all(isinstance(d, int) for d in tail):
        return None
    if all(isinstance(d, int) for d in in_dims) and all(isinstance(d, int) for d in out_dims):
        return _map_static(in_dims, axis, out_dims)
    # Dynamic leading dims: they may be kept, merged or split (x.view(-1, C), (N, C) -> (B, T, C)),
    # since the static suffix of the output that holds as many elements as the channel axis and
    # everything after it is where the channels land (both sides hold the same element count).
    total = int(np.prod(tail, dtype=np.int64))
    for b in range(len(out_dims) - 1, -1, -1):
        suffix = out_dims[b:]
        if not isinstance(suffix[0], int):
            return None
        p = int(np.prod(suffix, dtype=np.int64))
        if p == total and suffix[0] != 1:
            mapped = _map_static([1] + tail, 1, [1] + suffix)
            return None if mapped is None else (mapped[0] - 1 + b, mapped[1])
        if p > total:
            return None
    return None


def _map_static(in_dims: list[int], axis: int, out_dims: list[int]) -> tuple[int, int] | None:
    outer = int(np.prod(in_dims[:axis], dtype=np.int64))
    inner = int(np.prod(in_dims[axis + 1:], dtype=np.int64))
    channels = in_dims[axis]
    if channels <= 1 or 0 in in_dims:
        return None
    prefix = 1
    for b, d in enumerate(out_dims):
        if prefix == outer and d != 1 and d % channels == 0:
            m = d // channels
            if m == 1 or inner % m == 0:
                return b, m
            return None
        prefix *= d
        if prefix > outer:
            return None
    return None


@rule("Flatten", channel_inputs=(0,))
def flatten(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    dims = symbolic_shape(node.inputs[0])
    k = _norm_axis(int(node.attrs.get("axis", 1)), tr.rank)
    if dims is None or not all(isinstance(d, int) for d in dims[k:]):
        raise UnsupportedPattern("Flatten of a tensor with unknown shape")
    inner = int(np.prod(dims[k:], dtype=np.int64))
    if all(isinstance(d, int) for d in dims[:k]):
        out_dims = [int(np.prod(dims[:k], dtype=np.int64)), inner]
    elif k == 1:  # (batch, C, ...) -> (batch, C*...): a dynamic batch passes through
        out_dims = [dims[0], inner]
    else:
        raise UnsupportedPattern("Flatten of a tensor with unknown shape")
    mapped = _map_reshape(dims, tr.axis, out_dims)
    if mapped is None:
        raise UnsupportedPattern("Flatten merges the channel axis with earlier axes")
    out_axis, m = mapped
    state.set_track(node.outputs[0], out_axis, np.repeat(tr.atoms, m), 2)


@rule("Reshape", channel_inputs=(0,))
def reshape(node: gs.Node, state: State) -> None:
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    in_dims = symbolic_shape(node.inputs[0])
    out_dims = symbolic_shape(node.outputs[0])
    if in_dims is None or out_dims is None:
        raise UnsupportedPattern("Reshape with unknown input or output shape")
    # Dims shape inference lost (e.g. after attention's MatMuls) are followed back to their source.
    in_dims = [d if isinstance(d, int) else (dim_of(node.inputs[0], i, state.dims_cache) or d)
               for i, d in enumerate(in_dims)]
    if not isinstance(in_dims[tr.axis], int):
        in_dims[tr.axis] = len(tr.atoms)
    elif in_dims[tr.axis] != len(tr.atoms):
        raise UnsupportedPattern("Reshape input does not match its channels")
    entries = value_of(node.inputs[1], state.dims_cache)
    if entries is not None:  # counts read at run time hold today's count
        for use in state.count_uses:
            if use.node is node and use.entry < len(entries):
                entries[use.entry] = len(use.atoms) * use.factor
    if entries is not None and len(entries) == len(out_dims):
        out_dims = _resolve_target(in_dims, tr.axis, out_dims, entries, node)
        last = len(out_dims) - 1
        if entries[last] == -1 and entries.count(-1) == 1 and not isinstance(out_dims[last], int) \
                and all(isinstance(d, int) for d in in_dims[tr.axis:]):
            features = int(np.prod(in_dims[tr.axis:], dtype=np.int64))
            if _weight_layers_fix(node.outputs[0], features):
                out_dims[last] = features
    mapped = _map_reshape(in_dims, tr.axis, out_dims)
    if mapped is None:
        _split_into_heads(node, state, in_dims, out_dims, entries)
        return
    out_axis, m = mapped
    out_atoms = np.repeat(tr.atoms, m)
    entry = entries[out_axis] if entries is not None and len(entries) == len(out_dims) else None
    if _count_use(node, state, out_axis, out_atoms):
        entry = -1  # read from these channels at run time: follows by itself
    if entry == 0 and not int(node.attrs.get("allowzero", 0)):
        if not (out_axis == tr.axis and m == 1):
            raise UnsupportedPattern("Reshape copies a dimension that does not follow the channels")
    elif entry != -1:  # an inferred -1 follows the pruning, even where the vector is shared
        _count_entry(node, 1, out_axis, out_atoms, state, expect=len(out_atoms))
    state.set_track(node.outputs[0], out_axis, out_atoms, len(out_dims))


def _weight_layers_fix(tensor, features: int) -> bool:
    """Every consumer of ``tensor`` contracts its last axis with a constant weight of ``features``
    rows. Then, in any run of the original model, a -1 that ends the Reshape making ``tensor``
    is ``features`` (the channels and everything after them): the other entries hold as many
    elements as the input's leading dims. Pruning changes neither those entries nor those dims,
    so the -1 keeps being the channels' share (``reshape(b, t, -1)`` into an output projection,
    where the batch and length are read from tensors whose dims cannot be matched by name)."""
    if not tensor.outputs:
        return False
    for user in tensor.outputs:
        weight = const(user.inputs[1]) if len(user.inputs) > 1 else None
        if user.inputs[0] is not tensor or weight is None or weight.ndim != 2:
            return False
        if user.op == "MatMul" and weight.shape[0] == features:
            continue
        r = len(tensor.shape) if tensor.shape is not None else None
        if user.op == "Gemm" and r == 2 and not int(user.attrs.get("transA", 0)) \
                and weight.shape[1 if int(user.attrs.get("transB", 0)) else 0] == features:
            continue
        return False
    return True


def _map_split(in_dims: list, axis: int, out_dims: list) -> tuple[int, int, int] | None:
    """Does the Reshape split channel axis ``axis`` into (heads, per-head dims...)?

    Returns ``(out_axis, heads, stop)``: channel ``c`` lands at index ``c // (C / heads)`` of
    ``out_axis``, and output axes ``out_axis + 1 .. stop - 1`` hold its place inside the head.
    The dims after the channel axis must come out unchanged, and the dims before it must either
    be repeated unchanged or (all static) multiply to the same count.
    """
    channels, inner = in_dims[axis], in_dims[axis + 1:]
    if not isinstance(channels, int):
        return None
    stop = len(out_dims) - len(inner)
    if out_dims[stop:] != inner:
        return None
    # The static dims just before the inner ones that multiply to C are the split channel axis
    # (the leading dims then hold the same element count on both sides, however arranged).
    for start in range(stop - 2, -1, -1):
        body = out_dims[start:stop]
        if not all(isinstance(d, int) and d > 0 for d in body):
            return None
        p = int(np.prod(body, dtype=np.int64))
        if p == channels:
            return start, body[0], stop
        if p > channels:
            return None
    return None


def _split_into_heads(node: gs.Node, state: State, in_dims: list, out_dims: list, entries: list | None) -> None:
    """A Reshape that splits channels C into (H, D...): attention heads.

    The D channels of each head are tied into one removable unit, and the output carries one
    atom per head on the H axis; the H entry of the shape vector becomes the kept head count
    (an inferred -1 follows by itself). The per-head entries must be constants, so that every
    kept head keeps its size.
    """
    tr = state.track(node.inputs[0])
    split = _map_split(in_dims, tr.axis, out_dims)
    if split is None:
        raise UnsupportedPattern("Reshape splits the channel axis or merges it with earlier axes")
    out_axis, heads, stop = split
    if entries is None or len(entries) != len(out_dims):
        raise UnsupportedPattern("Reshape splits the channel axis into heads with a shape computed at run time")
    allow_zero = int(node.attrs.get("allowzero", 0))
    for j in range(out_axis + 1, stop):
        if not isinstance(entries[j], int) or entries[j] == 0 or (entries[j] == -1 and entries[out_axis] == -1):
            raise UnsupportedPattern("Reshape splits the channel axis into heads of a size computed at run time")
    head_entry = entries[out_axis]
    _count_use(node, state, out_axis, np.zeros(0, np.int64))  # a count read as the head count: refused
    if not isinstance(head_entry, int) or head_entry == 0 and not allow_zero:
        raise UnsupportedPattern("Reshape reads its head count at run time")
    blocks = tr.atoms.reshape(heads, -1)
    for j in range(1, blocks.shape[1]):
        state.union(blocks[:, 0], blocks[:, j])
    atoms = blocks[:, 0]
    if head_entry != -1:
        _count_entry(node, 1, out_axis, atoms, state, expect=heads)
    state.heads.append(atoms)
    state.set_track(node.outputs[0], out_axis, atoms, len(out_dims))


def _resolve_target(in_dims: list, axis: int, out_dims: list, entries: list, node: gs.Node) -> list:
    """Fill output dims that shape inference left unknown, from what the target vector says
    (:func:`value_of`: ints, dims read at run time by name): 0 copies the input's dim, and a
    single -1 is what is left once the leading (batch-like) dims are matched."""
    allow_zero = int(node.attrs.get("allowzero", 0))
    out = list(out_dims)
    for j, e in enumerate(entries):
        if isinstance(e, str) and not isinstance(out[j], int) or isinstance(e, int) and e > 0:
            out[j] = e
        elif e == 0 and not allow_zero and j < len(in_dims):
            out[j] = in_dims[j]
    free = [j for j, e in enumerate(entries) if e == -1]
    if len(free) == 1 and free[0] >= axis and out[:axis] == in_dims[:axis] \
            and all(isinstance(d, int) for d in in_dims[axis:]):
        rest = [d for j, d in enumerate(out) if j >= axis and j != free[0]]
        if all(isinstance(d, int) and d > 0 for d in rest):
            total = int(np.prod(in_dims[axis:], dtype=np.int64))
            known = int(np.prod(rest, dtype=np.int64))
            if total % known == 0:
                out[free[0]] = total // known
    return out


def _count_entry(node: gs.Node, input_index: int, entry: int, atoms: np.ndarray, state: State,
                 expect: int | None = None) -> None:
    """Record the edit that makes ``entry`` of a shape vector the kept count of ``atoms``.

    The vector is either a constant (un-shared when rewritten), or a Concat of pieces (as the
    TorchScript and dynamo exporters build ``x.view(b, t, h, d)``) where that entry comes from a
    constant piece; a vector several nodes read is copied first. An entry computed at run time is
    refused, since we could not tell whether it follows the pruned channels.
    """
    vector = node.inputs[input_index]
    values = const(vector)
    if values is not None:
        found = int(np.atleast_1d(values)[entry])
        if expect is not None and found != expect:
            raise UnsupportedPattern(f"{node.op} shape entry {found} does not match the channels ({expect})")
        state.edit(SetVectorEntry(node, input_index, entry, atoms))
        return
    producer = vector.inputs[0] if vector.inputs else None
    if producer is not None and producer.op == "Concat" and int(producer.attrs.get("axis", 0)) == 0:
        offset = 0
        for i, piece in enumerate(producer.inputs):
            dims = static_shape(piece)
            if dims is None or len(dims) != 1:
                break
            if offset <= entry < offset + dims[0]:
                if const(piece) is None:
                    break
                found = int(const(piece)[entry - offset])
                if found == -1 and node.op == "Reshape":
                    return  # inferred: follows the pruning
                if expect is not None and found != expect:
                    raise UnsupportedPattern(f"{node.op} shape entry {found} does not match the channels ({expect})")
                if len(vector.outputs) == 1:
                    state.edit(SetVectorEntry(producer, i, entry - offset, atoms))
                elif state.graph is not None:
                    state.edit(SetConcatVectorEntry(state.graph, node, input_index, i, entry - offset, atoms))
                else:
                    break
                return
            offset += dims[0]
    raise UnsupportedPattern(f"{node.op} target shape computed at run time")


@rule("Shape", channel_inputs=(0,))
def shape_op(node: gs.Node, state: State) -> None:
    """A shape read at run time follows pruning by itself, unless the channel count is read.

    We allow it when every consumer gathers or slices dimensions other than the channel axis, or
    reads the channel count into the shape of those same channels (see :func:`_count_read`).
    """
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    start = _norm_axis(int(node.attrs.get("start", 0)), tr.rank)
    end = node.attrs.get("end")
    end = tr.rank if end is None else min(_norm_axis(int(end), tr.rank), tr.rank)
    if not start <= tr.axis < end:
        return
    position = tr.axis - start
    for consumer in node.outputs[0].outputs:
        if consumer.op == "Slice":
            kept = _slice_of_shape(consumer, end - start)
            if kept is not None and position not in kept:
                continue
            if kept is not None and list(kept) == [position] and _count_read(consumer.outputs[0], tr.atoms, state):
                continue  # x.shape[-1:] as a one-entry vector
            raise UnsupportedPattern("the channel count is read by Shape")
        indices = const(consumer.inputs[1]) if consumer.op == "Gather" and len(consumer.inputs) > 1 else None
        if indices is None or int(consumer.attrs.get("axis", 0)) != 0:
            raise UnsupportedPattern("the channel count is read by Shape")
        read = position in [_norm_axis(int(i), end - start) for i in np.atleast_1d(indices)]
        if read and (np.size(indices) != 1 or not _count_read(consumer.outputs[0], tr.atoms, state)):
            raise UnsupportedPattern("the channel count is read by Shape")


@dataclass
class CountUse:
    """A channel count read at run time that lands in entry ``entry`` of a shape vector read by
    ``node`` (a Reshape or Expand), times ``factor``. It follows the pruning by itself if that
    entry is where ``node`` puts ``factor`` copies of the same channels; the node's rule checks
    that, and the engine refuses the channels of every use left unchecked."""

    atoms: np.ndarray
    node: gs.Node
    entry: int
    factor: int
    checked: bool = False


def _count_read(value, atoms: np.ndarray, state: State) -> bool:
    """Follow a channel count read at run time (a scalar or one-entry vector) to the shape
    vectors it lands in, through the ops exporters write around it: Unsqueeze, Cast, Mul by a
    constant, Concat into a vector, a -1 Reshape of that vector, and the Equal/Where pair that
    swaps -1 entries for 1 (a count is never -1). Anything else: False (refused)."""
    uses: list[CountUse] = []

    def walk(tensor, entry: int, factor: int, depth: int) -> bool:
        if depth > 16 or any(t is tensor for t in state.graph.outputs if state.graph is not None):
            return False
        for user in tensor.outputs:
            index = next(i for i, t in enumerate(user.inputs) if t is tensor)
            op = user.op
            if op in ("Reshape", "Expand") and index == 1:
                uses.append(CountUse(atoms, user, entry, factor))
            elif op in ("Unsqueeze", "Squeeze", "Cast", "Identity") and index == 0 or \
                    op == "Reshape" and index == 0 and value_of(user.inputs[1], state.dims_cache) == [-1]:
                if not walk(user.outputs[0], entry, factor, depth + 1):
                    return False
            elif op == "Mul":
                other = const(user.inputs[1 - index])
                if other is None or other.size != 1 or other.dtype.kind not in "iu" or int(other.ravel()[0]) < 1:
                    return False
                if not walk(user.outputs[0], entry, factor * int(other.ravel()[0]), depth + 1):
                    return False
            elif op == "Concat" and int(user.attrs.get("axis", 0)) in (0, -1):
                offset = 0
                for piece in user.inputs[:index]:
                    dims = static_shape(piece)
                    if dims is None or len(dims) != 1:
                        return False
                    offset += dims[0]
                if not walk(user.outputs[0], entry + offset, factor, depth + 1):
                    return False
            elif op == "Shape" or op == "Equal" and _never_equal(user, index, entry):
                continue  # the vector's length, or a comparison that is false at this entry
            elif op == "Where" and index == 2 and _condition_false(user.inputs[0], entry):
                if not walk(user.outputs[0], entry, factor, depth + 1):
                    return False
            else:
                return False
        return True

    if not walk(value, 0, 1, 0):
        return False
    state.count_uses.extend(uses)
    return True


def _never_equal(node: gs.Node, index: int, entry: int) -> bool:
    """Equal(count vector, other) where ``other`` is negative at ``entry``: false there."""
    other = value_of(node.inputs[1 - index])
    if other is None:
        return False
    v = other[0] if len(other) == 1 else (other[entry] if entry < len(other) else None)
    return isinstance(v, int) and v < 0


def _condition_false(cond, entry: int) -> bool:
    producer = cond.inputs[0] if cond.inputs else None
    if producer is None or producer.op != "Equal":
        return False
    for index in (0, 1):
        if _never_equal(producer, index, entry) and not isinstance(producer.inputs[index], gs.Constant):
            return True
    return False


def _count_use(node: gs.Node, state: State, entry: int, atoms: np.ndarray) -> bool | None:
    """Whether ``entry`` of ``node``'s shape vector is a count read at run time (see CountUse):
    True when it follows ``atoms`` by itself, None when no count is read there. Reads at other
    entries of the same vector are refused (a channel count as a non-channel dim)."""
    found = None
    for use in state.count_uses:
        if use.node is not node:
            continue
        if use.entry != entry:
            raise UnsupportedPattern(f"{node.op} uses a channel count read at run time as another dim")
        expected = np.repeat(use.atoms, use.factor)
        if len(expected) != len(atoms) or not np.array_equal(state.roots(expected), state.roots(atoms)):
            raise UnsupportedPattern(f"{node.op} uses a channel count read at run time that does not follow "
                                     "its channels")
        use.checked = True
        found = True
    return found


def _slice_of_shape(node: gs.Node, length: int) -> range | None:
    """The entries a Slice (opset >= 10, constant bounds, step 1) keeps of a shape vector."""
    if len(node.inputs) < 3:
        return None
    starts, ends, axes, steps = [const(node.inputs[i]) if has_input(node, i) else None for i in range(1, 5)]
    if starts is None or ends is None or np.size(starts) != 1 or np.size(ends) != 1:
        return None
    if has_input(node, 3) and (axes is None or list(np.atleast_1d(axes)) != [0]):
        return None
    if has_input(node, 4) and (steps is None or list(np.atleast_1d(steps)) != [1]):
        return None
    return range(length)[slice(int(np.ravel(starts)[0]), int(np.ravel(ends)[0]))]


@rule("Size", channel_inputs=(0,))
def size_op(node: gs.Node, state: State) -> None:
    if state.track(node.inputs[0]) is not None:
        raise UnsupportedPattern("the element count is read by Size")
