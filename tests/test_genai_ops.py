"""The ops the ONNX Runtime GenAI builder writes, on handmade graphs, against the zeroed-channel
oracle: MatMulNBits (output units along N; input units in whole quantization blocks, packed
asymmetric zero points repacked; g_idx refused), RotaryEmbedding (ONNX Runtime's and ONNX's
opset-23 op, per head) and GroupQueryAttention with separate Q/K/V and a past cache."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.context import PruneOptions
from onnxprune.ops.nbits import NBits, dequantized, pack
from onnxprune.passes.builtin import Analyze, Normalize
from onnxprune.pipeline import Pipeline

from conftest import assert_cache_oracle, assert_oracle, prune_with_oracle, random_feeds, session

F = TensorProto.FLOAT


class Graph:
    """A tiny graph under construction: nodes, initializers, one float input ``x``."""

    def __init__(self, x_shape, seed=0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.inputs = [helper.make_tensor_value_info("x", F, x_shape)]
        self.outputs = []

    def const(self, name, values):
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def w(self, name, *shape):
        return self.const(name, (self.rng.standard_normal(shape) * 0.5).astype(np.float32))

    def node(self, op, inputs, outputs, domain="", **attrs):
        outputs = [outputs] if isinstance(outputs, str) else outputs
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"n_{outputs[0]}", domain=domain, **attrs))
        return outputs[0]

    def model(self, out_shapes, opset=21, ir=10):
        outputs = [helper.make_tensor_value_info(n, F, s) for n, s in out_shapes.items()]
        graph = helper.make_graph(self.nodes, "g", self.inputs, outputs, initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
        m.ir_version = ir
        return m


def quantize(w: np.ndarray, block: int, bits: int = 4):
    """Asymmetric block-wise quantization of a (K, N) weight as ONNX Runtime's MatMulNBits holds
    it: B (N, blocks, block bytes), scales (N, blocks), zero points packed (N, bytes)."""
    k, n = w.shape
    blocks = -(-k // block)
    wt = np.zeros((n, blocks * block), np.float32)
    wt[:, :k] = w.T
    wt = wt.reshape(n, blocks, block)
    top = (1 << bits) - 1
    lo, hi = np.minimum(wt.min(axis=2), 0), np.maximum(wt.max(axis=2), 0)
    scale = np.where(hi > lo, (hi - lo) / top, 1.0).astype(np.float32)
    zp = np.clip(np.round(-lo / scale), 0, top).astype(np.uint8)
    q = np.clip(np.round(wt / scale[..., None]) + zp[..., None], 0, top).astype(np.uint8)
    return pack(q, bits), scale, pack(zp, bits)


def nbits(g: Graph, x: str, name: str, k: int, n: int, block: int, bias=True, g_idx=False, out=None):
    b, scales, zp = quantize(g.rng.standard_normal((k, n)).astype(np.float32) * 0.5, block)
    inputs = [x, g.const(f"{name}_B", b), g.const(f"{name}_s", scales), g.const(f"{name}_zp", zp)]
    inputs.append(g.const(f"{name}_g", (np.arange(k) // block).astype(np.int32)) if g_idx else "")
    if bias:
        inputs.append(g.const(f"{name}_bias", g.rng.standard_normal(n).astype(np.float32)))
    return g.node("MatMulNBits", inputs, out or name, domain="com.microsoft", K=k, N=n, bits=4, block_size=block)


def test_dequantized_weights_are_what_onnx_runtime_computes():
    """Scores read the dequantized weight: A = I gives ORT's dequantized weight, transposed."""
    k, n, block = 40, 6, 16  # a partial last block
    g = Graph([k, k])
    nbits(g, "x", "y", k, n, block, bias=False)
    model = g.model({"y": [k, n]})
    got = session(model).run(None, {"x": np.eye(k, dtype=np.float32)})[0]
    ctx = Pipeline([Normalize(), Analyze()]).run(model, PruneOptions())
    node = next(n for n in ctx.graph.nodes if n.op == "MatMulNBits")
    assert NBits.of(node).blocks == 3
    mine = dequantized(node).reshape(n, -1)[:, :k].T
    np.testing.assert_allclose(mine, got, rtol=1e-6, atol=1e-6)


def test_matmulnbits_output_units_slice_along_n():
    g = Graph([1, 4, 16])
    h = g.node("Relu", [nbits(g, "x", "h", 16, 24, 16)], "hr")
    g.node("MatMul", [h, g.w("w2", 24, 8)], "y")
    ctx = assert_oracle(g.model({"y": [1, 4, 8]}), ratio=0.5)
    node = next(n for n in ctx.pruned.graph.node if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in node.attribute}["N"] == 12
    shapes = {t.name: list(t.dims) for t in ctx.pruned.graph.initializer}
    assert [shapes[i][0] for i in node.input[1:4]] + [shapes[node.input[5]][0]] == [12, 12, 12, 12]


def test_matmulnbits_input_units_go_in_whole_blocks():
    """80 inputs in 5 blocks of 16 (zero points packed two blocks a byte, odd count): removing
    blocks slices B and scales and repacks the zero points; the units are whole blocks."""
    g = Graph([1, 4, 8])
    h = g.node("Relu", [g.node("MatMul", ["x", g.w("w1", 8, 80)], "h")], "hr")
    nbits(g, h, "y", 80, 6, 16)
    ctx = assert_oracle(g.model({"y": [1, 4, 6]}), ratio=0.4)
    group = next(gr for gr in ctx.analysis.groups if "n_h" in gr.sources)
    assert group.prunable and group.channels == 5
    node = next(n for n in ctx.pruned.graph.node if n.op_type == "MatMulNBits")
    assert {a.name: a.i for a in node.attribute}["K"] == 48
    shapes = {t.name: list(t.dims) for t in ctx.pruned.graph.initializer}
    assert shapes[node.input[1]] == [6, 3, 8] and shapes[node.input[2]] == [6, 3] and shapes[node.input[3]] == [6, 2]


def test_matmulnbits_with_g_idx_keeps_its_inputs():
    g = Graph([1, 4, 8])
    h = g.node("Relu", [g.node("MatMul", ["x", g.w("w1", 8, 32)], "h")], "hr")
    nbits(g, h, "y", 32, 6, 16, g_idx=True)
    ctx = Pipeline([Normalize(), Analyze()]).run(g.model({"y": [1, 4, 6]}), PruneOptions())
    group = next(gr for gr in ctx.analysis.groups if "n_h" in gr.sources)
    assert not group.prunable and any("g_idx" in r for r in group.reasons)


@pytest.mark.parametrize("domain", ["com.microsoft", ""])
def test_rotary_embedding_prunes_whole_heads(domain):
    """Rotary pairs lie inside a head: heads of a 3-D rotary input go whole, num_heads follows."""
    heads, d, seq = 4, 8, 4
    g = Graph([1, seq, 16])
    q = g.node("MatMul", ["x", g.w("wq", 16, heads * d)], "q")
    angles = np.arange(8)[:, None] * (1.0 / 100 ** (np.arange(d // 2) / (d // 2)))[None]
    cos, sin = g.const("cos", np.cos(angles).astype(np.float32)), g.const("sin", np.sin(angles).astype(np.float32))
    pos = g.const("pos", np.arange(seq, dtype=np.int64)[None])
    inputs = [q, pos, cos, sin] if domain else [q, cos, sin, pos]
    r = g.node("RotaryEmbedding", inputs, "r", domain=domain, num_heads=heads)
    g.node("MatMul", [r, g.w("wo", heads * d, 16)], "y")
    ctx = assert_oracle(g.model({"y": [1, seq, 16]}, opset=23, ir=11), ratio=0.5)
    node = next(n for n in ctx.pruned.graph.node if n.op_type == "RotaryEmbedding")
    assert {a.name: a.i for a in node.attribute}["num_heads"] == 2
    assert any(gr.kind == "heads" and gr.prunable for gr in ctx.analysis.groups)


def test_group_query_attention_separate_qkv_with_past():
    """Separate Q/K/V projections into GroupQueryAttention (8 query heads on 4 K/V heads, head
    size 8) with a past cache: whole K/V groups go, past and present shrink with them."""
    hidden, heads, kv, d, seq, past = 32, 8, 4, 8, 3, 5
    g = Graph([1, seq, hidden])
    g.inputs += [helper.make_tensor_value_info(f"past_key_values.0.{k}", F, [1, kv, past, d]) for k in ("key", "value")]
    q = g.node("MatMul", ["x", g.w("wq", hidden, heads * d)], "q")
    k = g.node("MatMul", ["x", g.w("wk", hidden, kv * d)], "k")
    v = g.node("MatMul", ["x", g.w("wv", hidden, kv * d)], "v")
    seqlens = g.const("seqlens", np.array([past + seq - 1], np.int32))
    total = g.const("total", np.array(past + seq, np.int32))
    g.node("GroupQueryAttention", [q, k, v, "past_key_values.0.key", "past_key_values.0.value", seqlens, total],
           ["o", "present.0.key", "present.0.value"], domain="com.microsoft", num_heads=heads, kv_num_heads=kv)
    g.node("MatMul", ["o", g.w("wo", heads * d, hidden)], "y")
    model = g.model({"y": [1, seq, hidden], "present.0.key": [1, kv, past + seq, d],
                     "present.0.value": [1, kv, past + seq, d]})
    ctx = assert_cache_oracle(model, ratio=0.5)
    node = next(n for n in ctx.pruned.graph.node if n.op_type == "GroupQueryAttention")
    assert {a.name: a.i for a in node.attribute if a.name.endswith("heads")} == {"num_heads": 4, "kv_num_heads": 2}


def test_group_query_attention_with_attention_bias_is_refused():
    hidden, heads, kv, d, seq = 32, 4, 2, 8, 3
    g = Graph([1, seq, hidden])
    qkv = g.node("MatMul", ["x", g.w("wqkv", hidden, (heads + 2 * kv) * d)], "qkv")
    seqlens = g.const("seqlens", np.array([seq - 1], np.int32))
    total = g.const("total", np.array(seq, np.int32))
    bias = g.const("bias", np.zeros((1, heads, seq, seq), np.float32))
    g.node("GroupQueryAttention", [qkv, "", "", "", "", seqlens, total, "", "", "", bias], "o",
           domain="com.microsoft", num_heads=heads, kv_num_heads=kv)
    g.node("MatMul", ["o", g.w("wo", heads * d, hidden)], "y")
    ctx = Pipeline([Normalize(), Analyze()]).run(g.model({"y": [1, seq, hidden]}), PruneOptions())
    group = next(gr for gr in ctx.analysis.groups if "n_qkv" in gr.sources)
    assert not group.prunable and any("attention bias" in r for r in group.reasons)


def test_rms_norms_keep_the_residual_stream_whole():
    """SimplifiedLayerNormalization (default domain) and SkipSimplifiedLayerNormalization
    normalise over the channel axis: the channels reaching them stay; those after them prune."""
    g = Graph([1, 4, 16])
    a = g.node("MatMul", ["x", g.w("w1", 16, 16)], "a")
    n = g.node("SimplifiedLayerNormalization", [a, g.const("g1", np.ones(16, np.float32))], "n", axis=-1)
    h = g.node("Relu", [g.node("MatMul", [n, g.w("w2", 16, 32)], "h")], "hr")
    b = g.node("MatMul", [h, g.w("w3", 32, 16)], "b")
    g.node("SkipSimplifiedLayerNormalization", ["x", b, g.const("g2", np.ones(16, np.float32))], "y",
           domain="com.microsoft")
    ctx, zeroed = prune_with_oracle(g.model({"y": [1, 4, 16]}), 0.5)  # (ONNX's checker refuses ORT's op)
    feeds = random_feeds(session(ctx.model))
    np.testing.assert_allclose(session(ctx.pruned).run(None, feeds)[0], session(zeroed).run(None, feeds)[0],
                               rtol=1e-4, atol=1e-5)
    assert ctx.selection.removed
    by_source = {gr.sources[0]: gr for gr in ctx.analysis.groups}
    assert "normalizes over the channel axis" in " ".join(by_source["n_a"].reasons)
    assert "residual stream stays whole" in " ".join(by_source["n_b"].reasons)
    assert by_source["n_h"].prunable
