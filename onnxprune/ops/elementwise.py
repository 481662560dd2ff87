"""Element-wise ops: unary ones keep each channel, broadcasting ones tie their inputs' channels."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..analysis.provenance import aligned, broadcast, dim_of
from ..analysis.state import State, UnsupportedPattern, const, rank
from .common import is_constant, present, same_dim, shape_of_input, zero_through_data
from .registry import Join, Rule, ZeroPath, dims, register, rule, values

#: element-wise on one tensor; extra inputs are scalars (Clip bounds, Dropout ratio)
UNARY = ("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf",
         "Softplus", "Softsign", "Gelu", "Mish", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor",
         "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "ThresholdedRelu", "Shrink", "Sin", "Cos", "Identity",
         "Cast", "CastLike", "Clip", "Dropout",
         "com.microsoft:QuickGelu")
#: element-wise with broadcasting over all inputs
BROADCASTING = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "Equal", "Less",
                "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod")


@rule(*UNARY, channel_inputs=(0,))
def unary(node: gs.Node, state: State) -> None:
    """Element-wise on one tensor (extra inputs are scalars: Clip bounds, Dropout ratio)."""
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    for out in node.outputs:  # Dropout's mask has the same shape
        state.set_track(out, tr.axis, tr.atoms, tr.rank)


dims(*UNARY)(same_dim)


@rule(*BROADCASTING)
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


@dims(*BROADCASTING, "BitShift")
def broadcast_dim(w, node: gs.Node, axis: int, r: int, d: int):
    return broadcast([aligned(w, t, axis, r, d) for t in node.inputs if t is not None and t.name])


_ARITHMETIC = {"Equal": lambda a, b: int(a == b), "Mul": lambda a, b: a * b, "Add": lambda a, b: a + b,
               "Sub": lambda a, b: a - b, "Max": max, "Min": min}


@values("Equal", "Where", "Mul", "Add", "Sub", "Max", "Min")
def arithmetic_value(w, node: gs.Node, tensor, d: int) -> list | None:
    """Shape arithmetic entry by entry (a -1 swapped for 1 with Equal/Where, sizes multiplied)."""
    args = [w.value(t, d) for t in node.inputs]
    if any(a is None for a in args):
        return None
    n = max(len(a) for a in args)
    if any(len(a) not in (1, n) for a in args):
        return None
    args = [a * n if len(a) == 1 else a for a in args]
    out = []
    for vals in zip(*args):
        if node.op == "Where":
            c, x, y = vals
            out.append(None if not isinstance(c, int) else (x if c else y))
        elif any(not isinstance(v, int) for v in vals):
            out.append(None)
        else:
            out.append(_ARITHMETIC[node.op](*vals))
    return out


register("PRelu", parameter_inputs=(1,))  # its slope


# --- ONNX Runtime's fused activations (com.microsoft) ---------------------------------------------

@rule("com.microsoft:BiasGelu", "com.microsoft:FastGelu", channel_inputs=(0,))
def bias_activation(node: gs.Node, state: State) -> None:
    """Gelu(x + bias), bias (optional for FastGelu) over the last axis: element-wise per channel;
    the bias is sliced with channels on that axis."""
    tr = state.track(node.inputs[0])
    if tr is None:
        return
    if len(node.inputs) > 1 and node.inputs[1].name:
        bias = const(node.inputs[1])
        if bias is None or bias.ndim != 1:
            raise UnsupportedPattern(f"{node.op} bias computed at run time or not a vector")
        if tr.axis == tr.rank - 1:
            if len(bias) != len(tr.atoms):
                raise UnsupportedPattern(f"{node.op} bias does not match the channels")
            state.site(node, 1, 0, tr.atoms, "channel_const")
    state.set_track(node.outputs[0], tr.axis, tr.atoms, tr.rank)


register("com.microsoft:Gelu", rule=Rule(unary, (0,)))
register("com.microsoft:BiasGelu", "com.microsoft:FastGelu", "com.microsoft:Gelu", dim=same_dim,
         infer=shape_of_input(0))
register("com.microsoft:BiasGelu", "com.microsoft:FastGelu", parameter_inputs=(1,))


# --- zeros (block removal's oracle) and the residual join -------------------------------------

#: f(0) = 0: a residual branch's output after its projection stays zero through these
ZERO_KEEPING = ("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Tanh", "Erf", "Gelu", "Mish", "Abs", "Neg",
                "Identity", "Cast", "Dropout", "com.microsoft:QuickGelu", "com.microsoft:Gelu")
register(*ZERO_KEEPING, zero_out=zero_through_data)


def _zero_sum(node: gs.Node) -> ZeroPath | None:
    """x + b (or x - b) is zero when x is and the constant b is zeroed (a bias); a sum of two
    activations when both are."""
    if len(node.inputs) != 2:
        return None
    through = tuple(i for i in (0, 1) if not is_constant(node, i))
    return ZeroPath(through=through, zeroed=tuple(i for i in (0, 1) if i not in through)) if through else None


def _zero_product(node: gs.Node) -> ZeroPath | None:
    """0 * y = 0 (y finite, as the original computes it); 0 / c = 0 for a constant c."""
    if node.op == "Div":
        return ZeroPath(through=(0,)) if not is_constant(node, 0) and is_constant(node, 1) else None
    through = [i for i in (0, 1) if not is_constant(node, i)]
    return ZeroPath(through=(through[0],)) if through else None


def _zero_bias_activation(node: gs.Node) -> ZeroPath | None:
    """Gelu(x + bias): zero with x zero and the bias zeroed."""
    bias = present(node, (1,))
    if is_constant(node, 0) or not all(is_constant(node, i) for i in bias):
        return None
    return ZeroPath(through=(0,), zeroed=bias)


register("Add", "Sub", zero_out=_zero_sum)
register("Mul", "Div", zero_out=_zero_product)
register("com.microsoft:BiasGelu", "com.microsoft:FastGelu", zero_out=_zero_bias_activation)
register("Add", join=Join((0, 1)))
