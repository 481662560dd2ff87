"""Quantized graphs: QDQ (QuantizeLinear/DequantizeLinear) and QOperator layers.

The oracle compares in float after dequantization: the zeroed original (QDQ weights read as
their float values, QOperator weights zeroed to their zero point) against the pruned model,
which stays quantized. With static quantization (fixed activation scales) both compute the same
integers, so the match is exact up to float rounding. DynamicQuantizeLinear computes its scale
from the whole tensor, ``range / 255``: the pruned tensor has fewer channels, its range can only
shrink, so each kept activation is rounded on a grid at most the original's step ``s`` apart and
differs by at most ``s`` between the two models; a layer's output then differs by at most
``s * sum_k |W[k, n]|`` (the bound those tests compute from the data, not a fixed tolerance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from conftest import assert_oracle, prune_with_oracle, random_feeds, session

MODELS = Path(__file__).resolve().parent.parent / "models"


class Q:
    """A tiny builder of quantized test graphs."""

    def __init__(self, opset: int = 13, seed: int = 0):
        self.opset, self.rng = opset, np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, tag: str) -> str:
        self.n += 1
        return f"{tag}{self.n}"

    def const(self, values, tag: str = "c") -> str:
        name = self.name(tag)
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), domain=domain or None, **attrs))
        return outs[0] if n_out == 1 else outs

    def quantized(self, w: np.ndarray, axis: int | None = None, block: int = 0, dtype=np.int8):
        """(q, scale, zero point) of ``w``, symmetric, per tensor / per ``axis`` / in blocks."""
        info = np.iinfo(dtype)
        if axis is None:
            scale = np.array(np.abs(w).max() / info.max, np.float32)
        elif block:
            moved = np.moveaxis(w, axis, 0)
            blocks = moved.reshape(moved.shape[0] // block, block, *moved.shape[1:])
            scale = np.moveaxis(np.abs(blocks).max(axis=1) / info.max, 0, axis).astype(np.float32)
        else:
            scale = (np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(axis=1) / info.max).astype(np.float32)
        expanded = scale if axis is None else (np.repeat(scale, block, axis=axis) if block else
                                               scale.reshape([-1 if i == axis else 1 for i in range(w.ndim)]))
        zero = np.zeros(scale.shape, dtype)
        return np.clip(np.rint(w / expanded), info.min, info.max).astype(dtype), scale, zero

    def dq_weight(self, w: np.ndarray, axis: int | None = None, block: int = 0, dtype=np.int8) -> str:
        q, scale, zero = self.quantized(w, axis, block, dtype)
        attrs = {} if axis is None else {"axis": axis}
        if block:
            attrs["block_size"] = block
        return self.node("DequantizeLinear", [self.const(q, "wq"), self.const(scale, "ws"), self.const(zero, "wz")],
                         **attrs)

    def qdq(self, x: str, scale, axis: int | None = None) -> str:
        s, z = self.const(np.asarray(scale, np.float32), "s"), self.const(np.zeros(np.shape(scale), np.int8), "z")
        attrs = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", [self.node("QuantizeLinear", [x, s, z], **attrs), s, z], **attrs)

    def w(self, *shape) -> np.ndarray:
        return (self.rng.standard_normal(shape) * 0.5).astype(np.float32)

    def model(self, inputs, outputs, domains=()) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "q", inputs, outputs, self.inits)
        opsets = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, 1) for d in domains]
        m = helper.make_model(graph, opset_imports=opsets)
        m.ir_version = 7 if self.opset < 15 else 9 if self.opset < 21 else 10 if self.opset < 23 else 11
        onnx.checker.check_model(m)
        return m


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _still_quantized(model: onnx.ModelProto) -> None:
    """No weight was written back as floats: every float initializer is a vector or a scalar."""
    floats = [(n, a.shape) for n, a in _inits(model).items() if a.dtype.kind == "f" and a.ndim >= 2]
    assert not floats, f"float weights in a quantized model: {floats}"


def _x(shape):
    return helper.make_tensor_value_info("x", T.FLOAT, shape)


def _y(name, shape=None):
    return helper.make_tensor_value_info(name, T.FLOAT, shape)


# --- QDQ -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [13, 21])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_conv_chain_slices_integer_weights_and_their_scales(opset: int, per_channel: bool):
    b = Q(opset)
    axis = 0 if per_channel else None
    x = b.qdq("x", 0.02)
    w1, bias = b.w(8, 3, 3, 3), b.w(8)
    bs = np.full(8 if per_channel else (), 1e-4, np.float32)
    bias_dq = b.node("DequantizeLinear", [b.const(np.rint(bias / 1e-4).astype(np.int32), "bq"), b.const(bs, "bs"),
                                          b.const(np.zeros(bs.shape, np.int32), "bz")],
                     **({"axis": 0} if per_channel else {}))
    h = b.node("Relu", [b.node("Conv", [x, b.dq_weight(w1, axis), bias_dq], pads=[1, 1, 1, 1])])
    h = b.qdq(h, 0.05)
    y = b.node("Conv", [h, b.dq_weight(b.w(4, 8, 1, 1), axis)])
    ctx = assert_oracle(b.model([_x([1, 3, 6, 6])], [_y(y, [1, 4, 6, 6])]), ratio=0.5)
    pruned = ctx.pruned
    _still_quantized(pruned)
    shapes = {n: a.shape for n, a in _inits(pruned).items()}
    kept = [s for s in shapes.values() if len(s) == 4 and s[1:] == (3, 3, 3)]
    assert kept == [(4, 3, 3, 3)]  # the first conv's integer weight lost half its filters
    assert (4,) in shapes.values() if per_channel else () in shapes.values()
    assert sum(n.op_type == "DequantizeLinear" for n in pruned.graph.node) == 5  # 3 parameters, 2 activations


def test_qdq_per_channel_activation_scales_are_sliced():
    b = Q(13)
    h = b.node("Relu", [b.node("Conv", ["x", b.dq_weight(b.w(6, 3, 3, 3), 0)], pads=[1, 1, 1, 1])])
    h = b.qdq(h, np.linspace(0.01, 0.06, 6), axis=1)
    y = b.node("Conv", [h, b.dq_weight(b.w(2, 6, 1, 1))])
    ctx = assert_oracle(b.model([_x([1, 3, 5, 5])], [_y(y, [1, 2, 5, 5])]), ratio=0.5)
    q = next(n for n in ctx.pruned.graph.node if n.op_type == "QuantizeLinear")
    assert _inits(ctx.pruned)[q.input[1]].shape == (3,)


def test_qdq_matmul_loses_whole_quantization_blocks():
    """The second weight is quantized in blocks of 4 along K: channels go 4 at a time."""
    b = Q(21)
    h = b.node("Relu", [b.node("MatMul", ["x", b.dq_weight(b.w(16, 8), 1)])])
    y = b.node("MatMul", [h, b.dq_weight(b.w(8, 4), 0, block=4)])
    ctx = assert_oracle(b.model([_x([2, 16])], [_y(y, [2, 4])]), ratio=0.5)
    group = next(g for g in ctx.analysis.prunable_groups if "MatMul" in g.sources[0])
    assert group.channels == 2  # eight channels in two blocks of four
    shapes = sorted(a.shape for a in _inits(ctx.pruned).values() if a.dtype == np.int8 and a.ndim == 2)
    assert shapes == [(1, 4), (4, 4), (16, 4)], shapes  # one block of four removed, its zero points with it
    assert (1, 4) in [a.shape for a in _inits(ctx.pruned).values() if a.dtype == np.float32]


def test_qdq_blocks_that_do_not_divide_refuse_the_channels():
    b = Q(21)
    h = b.node("Relu", [b.node("MatMul", ["x", b.dq_weight(b.w(16, 6), 1)])])
    q, scale, zero = b.quantized(np.pad(b.w(6, 4), ((0, 2), (0, 0))), 0, block=4)
    w2 = b.node("DequantizeLinear", [b.const(q[:6], "wq"), b.const(scale, "ws"), b.const(zero, "wz")],
                axis=0, block_size=4)
    y = b.node("MatMul", [h, w2])
    ctx, _ = prune_with_oracle(b.model([_x([2, 16])], [_y(y, [2, 4])]), 0.5)
    reasons = [r for g in ctx.analysis.groups for r in g.reasons]
    assert any("quantized in blocks of 4" in r and "do not divide its 6 entries" in r for r in reasons), reasons
    assert not ctx.selection.removed


def test_qdq_gemm_trans_b_per_channel():
    b = Q(13)
    h = b.node("Relu", [b.node("Gemm", ["x", b.dq_weight(b.w(12, 10), 0)], transB=1)])
    h = b.qdq(h, 0.03)
    y = b.node("Gemm", [h, b.dq_weight(b.w(3, 12), 0)], transB=1)
    ctx = assert_oracle(b.model([_x([2, 10])], [_y(y, [2, 3])]), ratio=0.5)
    _still_quantized(ctx.pruned)


@pytest.mark.parametrize("quantized_in_graph", ["bias", "weight and bias"])
def test_constants_quantized_in_the_graph_prune_as_stored_integers(quantized_in_graph: str):
    """ONNX Runtime's quantizer writes some constant inputs of quantized ops as a float constant
    through QuantizeLinear -> DequantizeLinear (a BERT's MatMul + Add biases, when they are all
    zero, get that form): the pair is evaluated into the integer constant and pruned as a stored
    one; left as a computation, the Add met a tensor of unknown channels and blocked the group."""
    b = Q(13)

    def in_graph(values, scale, axis=None, dtype=np.int8):
        s = b.const(np.asarray(scale, np.float32), "s")
        z = b.const(np.zeros(np.shape(scale), dtype), "z")
        attrs = {} if axis is None else {"axis": axis}
        return b.node("DequantizeLinear", [b.node("QuantizeLinear", [b.const(values, "f"), s, z], **attrs), s, z],
                      **attrs)

    w1 = b.w(10, 12)
    weight = in_graph(w1, np.abs(w1).max(0) / 127, axis=1, dtype=np.int8) if "weight" in quantized_in_graph \
        else b.dq_weight(w1, 1)
    h = b.node("Add", [in_graph(b.w(12), 0.01), b.node("MatMul", [b.qdq("x", 0.02), weight])])
    h = b.qdq(b.node("Relu", [h]), 0.03)
    y = b.node("MatMul", [h, b.dq_weight(b.w(12, 3), 1)])
    ctx = assert_oracle(b.model([_x([2, 10])], [_y(y, [2, 3])]), ratio=0.5)
    _still_quantized(ctx.pruned)
    shapes = sorted(a.shape for a in _inits(ctx.pruned).values() if a.dtype.kind in "iu" and a.size > 1)
    assert (6,) in shapes and (10, 6) in shapes and (6, 3) in shapes, shapes
    assert not [n for n in ctx.pruned.graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith("f")]


def test_quantized_weight_requantizes_a_refit_and_its_bias_follows():
    """A refit beyond a weight's range widens that channel's scale; the int32 bias's scale is
    multiplied by the same factor (ONNX Runtime fuses QDQ on bias scale = input x weight scale)."""
    from onnxprune.ops.quantized import decode_dequantize
    import onnx_graphsurgeon as gs

    b = Q(13)
    w = b.w(4, 3)
    q, s, z = (gs.Constant(n, a) for a, n in zip(b.quantized(w, 0), ("q", "s", "z")))
    node = gs.Node("DequantizeLinear", "dq", {"axis": 0}, [q, s, z], [gs.Variable("w")])
    values, codec = decode_dequantize(node)
    np.testing.assert_allclose(values, w, atol=np.abs(w).max() / 127)
    refit = values.copy()
    refit[1] *= 3.0  # channel 1 grows past its range
    snapped, new, why = codec.snap(refit, widen_axis=0)
    assert why is None and new.factor[1] > 2.9 and np.allclose(np.delete(new.factor, 1), 1)
    np.testing.assert_allclose(snapped, refit, atol=new.scale.max())
    assert codec.snap(refit)[2] is not None  # not allowed to widen: refused with the reason
    assert "cannot be widened" in codec.snap(refit, widen_axis=1)[2]


# --- QOperator -----------------------------------------------------------------------------------

def _qlinear_conv(b: Q, x: str, xs: str, xz: str, w: np.ndarray, ys: float, per_channel: bool):
    q, scale, zero = b.quantized(w, 0 if per_channel else None)
    bias = np.rint(b.rng.standard_normal(w.shape[0]) * 20).astype(np.int32)
    s, z = b.const(np.float32(ys), "ys"), b.const(np.int8(0), "yz")
    y = b.node("QLinearConv", [x, xs, xz, b.const(q, "wq"), b.const(scale, "ws"), b.const(zero, "wz"), s, z,
                               b.const(bias, "b")], pads=[1, 1, 1, 1])
    return y, s, z


@pytest.mark.parametrize("per_channel", [False, True])
def test_qlinear_conv_chain(per_channel: bool):
    b = Q(13)
    xs, xz = b.const(np.float32(0.02), "xs"), b.const(np.int8(0), "xz")
    x = b.node("QuantizeLinear", ["x", xs, xz])
    h, hs, hz = _qlinear_conv(b, x, xs, xz, b.w(8, 3, 3, 3), 0.05, per_channel)
    y, ys, yz = _qlinear_conv(b, h, hs, hz, b.w(4, 8, 3, 3), 0.1, per_channel)
    out = b.node("DequantizeLinear", [y, ys, yz])
    ctx = assert_oracle(b.model([_x([1, 3, 6, 6])], [_y(out, [1, 4, 6, 6])]), ratio=0.5, atol=1e-6)
    shapes = sorted(a.shape for a in _inits(ctx.pruned).values())
    assert (4, 3, 3, 3) in shapes and (4, 4, 3, 3) in shapes and ((4,) in shapes)


def test_qlinear_matmul_and_qgemm():
    b = Q(13)
    xs, xz = b.const(np.float32(0.02), "xs"), b.const(np.int8(0), "xz")
    x = b.node("QuantizeLinear", ["x", xs, xz])
    q1, s1, z1 = b.quantized(b.w(10, 12), 1)
    hs, hz = b.const(np.float32(0.05), "hs"), b.const(np.int8(0), "hz")
    h = b.node("QLinearMatMul", [x, xs, xz, b.const(q1, "wq"), b.const(s1, "ws"), b.const(z1, "wz"), hs, hz])
    q2, s2, z2 = b.quantized(b.w(3, 12), 0)
    ys, yz = b.const(np.float32(0.1), "ys"), b.const(np.int8(0), "yz")
    y = b.node("QGemm", [h, hs, hz, b.const(q2, "wq"), b.const(s2, "ws"), b.const(z2, "wz"),
                         b.const(np.zeros(3, np.int32), "b"), ys, yz], domain="com.microsoft", transB=1)
    out = b.node("DequantizeLinear", [y, ys, yz])
    ctx = assert_oracle(b.model([_x([2, 10])], [_y(out, [2, 3])], domains=("com.microsoft",)), ratio=0.5, atol=1e-6)
    assert (10, 6) in [a.shape for a in _inits(ctx.pruned).values()]


def _dynamic_bound(ctx, zeroed: onnx.ModelProto, feeds: dict, quantized_input: str, weight: np.ndarray) -> float:
    """``s * max_n sum_k |W[k, n]|``: how far a layer after DynamicQuantizeLinear may move
    when the pruned tensor's grid differs from the original's (step ``s``, see the module's doc)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(zeroed)
    probe.graph.output.append(helper.make_tensor_value_info(quantized_input, T.FLOAT, None))
    x = session(probe).run([quantized_input], feeds)[0]
    step = (max(x.max(), 0) - min(x.min(), 0)) / 255
    return float(step * np.abs(weight).sum(axis=0).max())


def test_dynamic_matmul_integer_with_per_column_rescale():
    """quantize_dynamic's pattern: DynamicQuantizeLinear, MatMulInteger (uint8, per-column zero
    point), Cast, Mul by Mul(activation scale, per-column weight scale). The float layer before it
    loses outputs (its input rows go), and it loses outputs (its weight's columns, their scales
    and zero points go, and the next layer's rows)."""
    b = Q(13)
    h = b.node("Relu", [b.node("MatMul", ["x", b.const(b.w(10, 12), "w")])])
    hq, hs, hz = b.node("DynamicQuantizeLinear", [h], n_out=3)
    w2 = b.w(12, 6)
    lo, hi = np.minimum(w2.min(axis=0), 0), np.maximum(w2.max(axis=0), 0)
    scale = ((hi - lo) / 255).astype(np.float32)
    zero = np.rint(-lo / scale).astype(np.uint8)
    q2 = np.clip(np.rint(w2 / scale) + zero, 0, 255).astype(np.uint8)
    scales = b.node("Mul", [hs, b.const(scale, "ws")])
    acc = b.node("MatMulInteger", [hq, b.const(q2, "wq"), hz, b.const(zero, "wz")])
    h2 = b.node("Relu", [b.node("Mul", [b.node("Cast", [acc], to=T.FLOAT), scales])])
    w3 = b.w(6, 3)
    y = b.node("MatMul", [h2, b.const(w3, "w")])
    model = b.model([_x([3, 10])], [_y(y, [3, 3])])
    ctx, zeroed = prune_with_oracle(model, 0.5)
    assert len(ctx.analysis.prunable_groups) == 2 and ctx.selection.removed
    pruned = ctx.pruned
    onnx.checker.check_model(pruned, full_check=True)
    shapes = sorted((a.dtype.name, a.shape) for a in _inits(pruned).values() if a.dtype != np.int64)
    assert ("uint8", (6, 3)) in shapes and ("uint8", (3,)) in shapes and ("float32", (3,)) in shapes, shapes
    dequantized = (q2.astype(np.float64) - zero) * scale
    for seed in (0, 1):
        feeds = random_feeds(session(model), seed)
        got, expected = session(pruned).run(None, feeds)[0], session(zeroed).run(None, feeds)[0]
        bound = _dynamic_bound(ctx, zeroed, feeds, h, dequantized) * np.abs(w3).sum(axis=0).max()
        assert np.abs(got - expected).max() <= bound + 1e-5


def test_conv_integer_chain():
    """DynamicQuantizeLinear + ConvInteger, rescaled by Cast and Mul and biased by Add, as
    quantize_dynamic writes convolutions: the first conv loses filters, its bias with them, and
    the second its input channels."""
    b = Q(13)
    xq, xs, xz = b.node("DynamicQuantizeLinear", ["x"], n_out=3)
    layers = []
    for i, (c_out, c_in) in enumerate(((8, 3), (4, 8))):
        q, scale, zero = b.quantized(b.w(c_out, c_in, 3, 3), None, dtype=np.int8)
        acc = b.node("ConvInteger", [xq, b.const(q, "wq"), xz, b.const(zero, "wz")], pads=[1, 1, 1, 1])
        h = b.node("Mul", [b.node("Cast", [acc], to=T.FLOAT), b.node("Mul", [xs, b.const(scale, "ws")])])
        h = b.node("Add", [h, b.const(b.w(1, c_out, 1, 1), "b")])
        layers.append((h, q.astype(np.float64) * scale))
        if i == 0:
            h = b.node("Relu", [h])
            xq, xs, xz = b.node("DynamicQuantizeLinear", [h], n_out=3)
    model = b.model([_x([1, 3, 6, 6])], [_y(layers[-1][0], [1, 4, 6, 6])])
    ctx, zeroed = prune_with_oracle(model, 0.5)
    assert ctx.selection.removed
    shapes = sorted(a.shape for a in _inits(ctx.pruned).values() if a.dtype == np.int8 and a.ndim == 4)
    assert shapes == [(4, 3, 3, 3), (4, 4, 3, 3)]
    relu = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    w2 = layers[1][1].transpose(1, 2, 3, 0).reshape(-1, 4)  # rows: the inputs one output sums over
    for seed in (0, 1):
        feeds = random_feeds(session(model), seed)
        got, expected = session(ctx.pruned).run(None, feeds)[0], session(zeroed).run(None, feeds)[0]
        assert np.abs(got - expected).max() <= _dynamic_bound(ctx, zeroed, feeds, relu, w2) + 1e-5


def test_contrib_matmul_integer_to_float_and_dynamic_quantize_matmul():
    b = Q(13)
    h = b.node("Relu", [b.node("MatMul", ["x", b.const(b.w(10, 12), "w")])])
    w2 = b.w(12, 6)
    q2, s2, z2 = b.quantized(w2, 1)
    h2 = b.node("DynamicQuantizeMatMul", [h, b.const(q2, "wq"), b.const(s2, "ws"), b.const(z2, "wz"),
                                          b.const(b.w(6), "b")], domain="com.microsoft")
    hq, hs, hz = b.node("DynamicQuantizeLinear", [b.node("Relu", [h2])], n_out=3)
    q3, s3, z3 = b.quantized(b.w(6, 4), 1, dtype=np.int8)
    y = b.node("MatMulIntegerToFloat", [hq, b.const(q3, "wq"), hs, b.const(s3, "ws"), hz, b.const(z3, "wz"),
                                        b.const(b.w(4), "b")], domain="com.microsoft")
    model = b.model([_x([3, 10])], [_y(y, [3, 4])], domains=("com.microsoft",))
    ctx, zeroed = prune_with_oracle(model, 0.5)
    sizes = {g.sources[0]: g.channels for g in ctx.analysis.prunable_groups}
    assert len(sizes) == 2 and ctx.selection.removed
    pruned = ctx.pruned
    for seed in (0, 1):
        feeds = random_feeds(session(model), seed)
        got, expected = session(pruned).run(None, feeds)[0], session(zeroed).run(None, feeds)[0]
        bound = _dynamic_bound(ctx, zeroed, feeds, b.nodes[-2].input[0], (q3.astype(np.float64) - z3) * s3)
        # DynamicQuantizeMatMul quantizes its float input internally, per tensor, the same way
        bound += _dynamic_bound(ctx, zeroed, feeds, h, (q2.astype(np.float64) - z2) * s2) * \
            np.abs((q3.astype(np.float64) - z3) * s3).sum(axis=0).max()
        assert np.abs(got - expected).max() <= bound + 1e-5


# --- real quantizer output -----------------------------------------------------------------------

def _weights(model: onnx.ModelProto) -> int:
    """Float-equivalent weights: elements of every initializer of two or more dimensions that is
    a float or 8-bit integer tensor (a QDQ or QOperator weight counts once per element)."""
    return sum(a.size for a in _inits(model).values() if a.ndim >= 2 and (a.dtype.kind == "f" or a.itemsize == 1))


def _quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each quantization op type (the output has the input's, none written as floats).
    A QuantizeLinear of a stored float constant is not counted: the pruned model stores the
    integer constant it computes instead, read by the same DequantizeLinear."""
    from collections import Counter

    stored = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                          for o in n.output}
    return dict(Counter(n.op_type for n in model.graph.node
                        if ("quant" in n.op_type.lower() or "Integer" in n.op_type or n.op_type.startswith("QLinear")
                            or n.op_type == "QGemm") and not (n.op_type == "QuantizeLinear" and n.input[0] in stored)))


class _Reader:
    def __init__(self, feeds):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def _digits_feeds(n: int = 32) -> list[dict]:
    data = np.load(MODELS / "digits_calib.npz")
    return [{"input": data["input"][i:i + 1]} for i in range(n)]


def _bert_feeds(n: int = 8) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"input_ids": rng.integers(0, 100, (1, 8)).astype(np.int64),
             "attention_mask": np.ones((1, 8), np.int64)} for _ in range(n)]


def _vit_feeds(n: int = 8) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"pixel_values": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def _feeds(source: str, n: int) -> list[dict]:
    return (_digits_feeds if source.startswith("digits") else _vit_feeds if source.startswith("vit")
            else _bert_feeds)(n)


def _quantize(tmp_path: Path, source: str, kind: str, per_channel: bool) -> onnx.ModelProto:
    q = pytest.importorskip("onnxruntime.quantization")
    out = tmp_path / f"{kind}.onnx"
    if kind == "dynamic":
        # 7-bit weights, as ONNX Runtime's guide advises for CPUs without VNNI: full-range ones
        # saturate its u8s8 kernels there (AVX2), and the outputs of the zeroed and the pruned model
        # then differ by where the saturating pairs of products fall, not by the pruning
        q.quantize_dynamic(str(MODELS / source), str(out), per_channel=per_channel, reduce_range=True)
    else:
        feeds = _feeds(source, 32 if source.startswith("digits") else 8)
        fmt = q.QuantFormat.QDQ if kind == "qdq" else q.QuantFormat.QOperator
        q.quantize_static(str(MODELS / source), str(out), _Reader(feeds), quant_format=fmt, per_channel=per_channel)
    return onnx.load(out)


@pytest.mark.parametrize("source,kind,per_channel", [
    ("digits_cnn.onnx", "qdq", True), ("digits_cnn.onnx", "qdq", False), ("digits_cnn.onnx", "qoperator", True),
    ("digits_cnn.onnx", "dynamic", False), ("bert_torchscript.onnx", "qdq", True),
    ("bert_torchscript.onnx", "qoperator", True), ("vit_torchscript.onnx", "qoperator", True),
    ("bert_torchscript.onnx", "dynamic", True), ("bert_torchscript.onnx", "dynamic", False)])
def test_onnxruntime_quantizer_output_prunes(tmp_path: Path, source: str, kind: str, per_channel: bool):
    """ONNX Runtime's quantizer on a committed float model: --ratio 0.3 removes at least 20% of
    the float-equivalent weights, the output stays quantized, loads and runs (optimised, as
    deployed), and matches the zeroed original (exactly for static quantization; within the
    dynamic-quantization bound's order, checked as a relative error, for dynamic)."""
    import onnxruntime as ort

    model = _quantize(tmp_path, source, kind, per_channel)
    ctx, zeroed = prune_with_oracle(model, 0.3)
    pruned = ctx.pruned
    assert _weights(pruned) <= 0.8 * _weights(model), (_weights(model), _weights(pruned))
    assert _quantized_ops(pruned) == _quantized_ops(model)
    ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"])  # default: fused
    for seed in (0, 1):
        feeds = _feeds(source, 4)[seed]
        got, expected = session(pruned).run(None, feeds)[0], session(zeroed).run(None, feeds)[0]
        if kind == "dynamic":
            assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_qdq_digits_with_calibration_keeps_its_accuracy(tmp_path: Path):
    """quantize_static (QDQ, per channel) of the digits CNN, pruned with calibration data and
    least-squares refits: still quantized, and the refit layers (requantized) hold the accuracy
    within a few points of the quantized model's."""
    import onnxprune

    model = _quantize(tmp_path, "digits_cnn.onnx", "qdq", True)
    result = onnxprune.prune(model, ratio=0.3, calibration=str(MODELS / "digits_calib.npz"))
    refit = [layer for layer in result.report["reconstruction"]["layers"] if layer["choice"] not in (None, "current")]
    assert refit, result.report["reconstruction"]
    _still_quantized(result.model)
    data = np.load(MODELS / "digits_eval.npz")
    accuracy = {}
    for name, m in (("quantized", model), ("pruned", result.model)):
        logits = session(m).run(None, {"input": data["input"]})[0]
        accuracy[name] = float((logits.argmax(axis=1) == data["label"]).mean())
    assert accuracy["pruned"] >= accuracy["quantized"] - 0.05, accuracy


def _ort_qdq_conv(b: Q, x: str, x_scale: float, w: np.ndarray, y_scale: float, relu: bool) -> str:
    """A conv as ONNX Runtime's QDQ quantizer writes it: per-channel int8 weight, int32 bias on
    scale input x weight, and the output quantized again."""
    q, scale, zero = b.quantized(w, 0)
    bias_scale = (np.float32(x_scale) * scale).astype(np.float32)
    bias = np.rint(b.rng.standard_normal(w.shape[0]) / bias_scale).astype(np.int32)
    bias_dq = b.node("DequantizeLinear", [b.const(bias, "bq"), b.const(bias_scale, "bs"),
                                          b.const(np.zeros(w.shape[0], np.int32), "bz")], axis=0)
    y = b.node("Conv", [x, b.dq_weight(w, 0), bias_dq], pads=[1, 1, 1, 1])
    return b.qdq(b.node("Relu", [y]) if relu else y, y_scale)


def test_reconstruction_requantizes_and_fused_kernels_agree():
    """Least-squares refits of QDQ convs are stored quantized (scales widened where the refit
    needs it, the int32 bias's scales following them, so bias scale = input scale x weight scale
    still holds, as ONNX Runtime's quantizer writes it); ONNX Runtime's fused QLinearConv then
    computes what the unfused graph does, to within one step of the output's quantization."""
    import onnxruntime as ort
    import onnxprune

    b = Q(13, seed=3)
    x = b.qdq("x", 0.02)
    h = _ort_qdq_conv(b, x, 0.02, b.w(8, 3, 3, 3), 0.05, relu=True)
    y = _ort_qdq_conv(b, h, 0.05, b.w(4, 8, 3, 3) * 0.3, 0.04, relu=False)
    model = b.model([_x([1, 3, 6, 6])], [_y(y, [1, 4, 6, 6])])
    rng = np.random.default_rng(0)
    calib = [{"x": (rng.standard_normal((1, 3, 6, 6)) * 0.5).astype(np.float32)} for _ in range(32)]
    result = onnxprune.prune(model, ratio=0.5, calibration=calib, reconstruct="lstsq")
    layers = result.report["reconstruction"]["layers"]
    assert [r["choice"] for r in layers if r["choice"] not in (None, "current")], layers
    pruned = result.model
    _still_quantized(pruned)
    scales = {n: a for n, a in _inits(pruned).items() if a.dtype == np.float32 and a.shape == (4,)}
    original = {n: a for n, a in _inits(model).items() if a.dtype == np.float32 and a.shape == (4,)}
    assert any(not any(np.array_equal(a, o) for o in original.values()) for a in scales.values())
    inits, producer = _inits(pruned), {o: n for n in pruned.graph.node for o in n.output}
    for conv in (n for n in pruned.graph.node if n.op_type == "Conv"):
        x_scale, w_scale, b_scale = (inits[producer[t].input[1]] for t in conv.input)
        np.testing.assert_allclose(b_scale, x_scale * w_scale, rtol=1e-5)
    outs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        sess = ort.InferenceSession(pruned.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        outs.append(np.concatenate([sess.run(None, c)[0] for c in calib]))
    assert np.abs(outs[0] - outs[1]).max() <= 0.04 + 1e-6


@pytest.mark.parametrize("kind", ["qdq", "dynamic"])
def test_residual_blocks_of_quantized_bert(tmp_path: Path, kind: str):
    """Every residual block of ONNX Runtime's quantizer output goes, alone and all together, as
    the oracle says. Three things had refused them: the quantizer's value_info names dimensions
    from its own shape inference (``unk__<n>``, no data propagation), so the stream and a join's
    output looked different; Q -> DQ after the output projection was not known to keep zeros; and
    a branch of integer layers (MatMulInteger) was not seen as having weights."""
    from conftest import assert_block_oracle
    from onnxprune.passes.builtin import Analyze, Normalize
    from onnxprune.pipeline import Pipeline

    model = _quantize(tmp_path, "bert_torchscript.onnx", kind, True)
    analysis = Pipeline([Normalize(), Analyze()]).run(model).analysis
    blocks = analysis.removable_blocks
    assert len(blocks) == 4 and analysis.blocks == blocks  # 2 layers: attention and MLP each
    feeds = _bert_feeds(2)
    for block in blocks:
        ctx = assert_block_oracle(model, {block.id}, feeds=lambda seed: feeds[seed])
        removed = ctx.report["before"]["params"] - ctx.report["after"]["params"]
        assert removed == block.params > 1000  # the integer weights count, one parameter each
    ctx = assert_block_oracle(model, feeds=lambda seed: feeds[seed])
    _still_quantized(ctx.pruned)
