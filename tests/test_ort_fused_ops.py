"""ONNX Runtime's fused transformer ops (com.microsoft), as its transformer optimizer writes them:
SkipLayerNormalization (the residual stream stays whole, the MLPs and heads on either side prune),
BiasGelu, FastGelu, Gelu, EmbedLayerNormalization, MultiHeadAttention with a KV cache, and a BERT
after the optimizer (``models/bert_ort_optimized*.onnx``, ``tools/export_bert_formats.py``); each
checked against the zeroed-channel oracle in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_cache_oracle, assert_oracle, prune_with_oracle, session
from graphs import GraphBuilder
from onnx import TensorProto, helper

from onnxprune import Pipeline
from onnxprune.passes.builtin import Analyze, Normalize

MODELS = Path(__file__).resolve().parent.parent / "models"
B, T, C, V = 2, 5, 8, 20
MS = {"com.microsoft": 1}


def ms(b: GraphBuilder, op: str, inputs: list, shape: list, n_out: int = 1, **attrs):
    return b.node(op, inputs, shape, n_out=n_out, domain="com.microsoft", **attrs)


def skip_ln(b: GraphBuilder, h: str, skip: str, bias: bool = True) -> str:
    ins = [h, skip, b.const(1 + 0.1 * b.rng.standard_normal(C).astype(np.float32)), b.weight(C)]
    return ms(b, "SkipLayerNormalization", ins + ([b.weight(C)] if bias else []), [B, T, C], epsilon=1e-5)


def mlp(b: GraphBuilder, x: str, act: str, width: int = 16) -> str:
    h = b.matmul(x, width, bias=act != "BiasGelu")
    if act == "BiasGelu":
        h = ms(b, "BiasGelu", [h, b.weight(width)], [B, T, width])
    elif act == "FastGelu":
        h = ms(b, "FastGelu", [h, b.weight(width)], [B, T, width])
    else:
        h = ms(b, "Gelu", [h], [B, T, width])
    return b.matmul(h, C, bias=False)


def test_skip_layer_norm_and_fused_gelus_between_mlps():
    """Three MLPs (BiasGelu, FastGelu with its bias, Gelu) joined by SkipLayerNormalization: every
    MLP's hidden units prune, the normalised stream stays whole; shapes are known after each
    fused op (their specs' shape functions), or the MLPs after the first would stay whole."""
    b = GraphBuilder(seed=1)
    x = b.input([B, T, C])
    s1 = skip_ln(b, mlp(b, x, "BiasGelu"), x)
    s2 = skip_ln(b, mlp(b, s1, "FastGelu"), s1, bias=False)
    b.output(b.add(s2, mlp(b, s2, "Gelu")))
    ctx = assert_oracle(b.model(MS), ratio=0.5, atol=1e-4)
    groups = ctx.analysis.prunable_groups
    assert sorted(g.channels for g in groups) == [16, 16, 16], [g.reasons for g in ctx.analysis.groups]
    assert all(ctx.selection.kept[g.id][0] == 8 for g in groups)
    stream = [g for g in ctx.analysis.groups if not g.prunable and g.channels == C]
    # the two MLP outputs written into the normalised stream (the last one meets a plain Add)
    assert sum("SkipLayerNormalization normalizes over the channel axis" in g.reasons[0] for g in stream) == 2
    biases = [list(i.dims) for n in ctx.pruned.graph.node if n.op_type in ("BiasGelu", "FastGelu")
              for i in ctx.pruned.graph.initializer if i.name == n.input[1]]
    assert biases == [[8], [8]]


def embed_bert(b: GraphBuilder, attention: str) -> tuple[str, str]:
    """EmbedLayerNormalization, one fused attention block and an MLP (as the optimizer fuses BERT)."""
    ids = "ids"
    b.inputs.append(helper.make_tensor_value_info(ids, TensorProto.INT32, [B, T]))
    b.inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, [B, T]))
    emb, mask_index = ms(b, "EmbedLayerNormalization",
                         [ids, "", b.weight(V, C), b.weight(T, C), "", b.const(np.ones(C, np.float32)), b.weight(C),
                          "mask"], [B, T, C], n_out=2, epsilon=1e-5)
    b.shapes[mask_index] = [B]
    heads, d = 4, 3
    if attention == "Attention":
        att = ms(b, "Attention", [emb, b.weight(C, 3 * heads * d), b.weight(3 * heads * d), mask_index],
                 [B, T, heads * d], num_heads=heads)
    else:
        q, k, v = (b.matmul(emb, heads * d, bias=False) for _ in range(3))
        att = ms(b, "MultiHeadAttention", [q, k, v, b.weight(3 * heads * d), "mask"], [B, T, heads * d],
                 num_heads=heads)
    s1 = skip_ln(b, b.matmul(att, C, bias=False), emb)
    return skip_ln(b, mlp(b, s1, "BiasGelu"), s1), emb


def token_feeds(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((B, T), np.int32)
    mask[1, -2:] = 0
    return {"ids": rng.integers(0, V, (B, T)).astype(np.int32), "mask": mask}


@pytest.mark.parametrize("attention", ["Attention", "MultiHeadAttention"])
def test_embed_layer_norm_feeds_fused_attention_that_prunes_heads(attention):
    b = GraphBuilder(seed=2)
    out, _ = embed_bert(b, attention)
    b.output(out)
    model = b.model(MS)
    ctx, zeroed = prune_with_oracle(model, ratio=0.5)
    kinds = sorted(g.kind for g in ctx.analysis.prunable_groups)
    assert kinds == ["channels", "heads"], [g.reasons for g in ctx.analysis.groups]
    onnx.checker.check_model(ctx.pruned, full_check=True)
    zs, ps, os_ = session(zeroed), session(ctx.pruned), session(model)
    for seed in (0, 1):
        f = token_feeds(seed)
        got, want = ps.run(None, f)[0], zs.run(None, f)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert not np.allclose(got, os_.run(None, f)[0], atol=1e-3), "pruning changed nothing"
    heads = [a.i for n in ctx.pruned.graph.node if n.op_type == attention for a in n.attribute if a.name == "num_heads"]
    assert heads == [2]


def mha_with_cache(names=("past_key_values.0.key", "past_key_values.0.value", "present.0.key", "present.0.value"),
                   heads=4, d=2, past=3):
    b = GraphBuilder(seed=3)
    x = b.input([B, T, C])
    pk, pv = (b.input([B, heads, past, d], name=n) for n in names[:2])
    q, k, v = (b.matmul(x, heads * d, bias=False) for _ in range(3))
    y, present_k, present_v = ms(b, "MultiHeadAttention", [q, k, v, b.weight(3 * heads * d), "", "", pk, pv],
                                 [B, T, heads * d], n_out=3, num_heads=heads)
    node = b.nodes[-1]
    node.output[1], node.output[2] = names[2], names[3]
    b.output(b.add(x, b.matmul(y, C)))
    for n in names[2:]:
        b.outputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, heads, past + T, d]))
    return b.model(MS)


def test_multi_head_attention_with_a_cache_prunes_heads_and_the_cache_io():
    """past_key/past_value graph inputs and present_key/present_value outputs named as a KV
    cache lose the pruned heads with the projections (analysis.cache_io)."""
    ctx = assert_cache_oracle(mha_with_cache(), ratio=0.5)
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in ctx.pruned.graph.input}
    assert dims["past_key_values.0.key"] == [B, 2, 3, 2]
    outs = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in ctx.pruned.graph.output}
    assert outs["present.0.value"][1] == 2


def test_multi_head_attention_with_a_cache_not_named_as_one_keeps_its_heads():
    model = mha_with_cache(names=("pk", "pv", "out_k", "out_v"))
    analysis = Pipeline([Normalize(), Analyze()]).run(model).analysis
    assert not analysis.prunable_groups, [g.nodes for g in analysis.prunable_groups]
    assert any("'pk'" in r for g in analysis.groups for r in g.reasons), [g.reasons for g in analysis.groups]


def bert_feeds(seed: int, sess) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((2, 7), np.int64)
    mask[1, -2:] = 0
    x = {"input_ids": rng.integers(0, 100, (2, 7)), "attention_mask": mask, "token_type_ids": np.zeros((2, 7))}
    types = {i.name: i.type for i in sess.get_inputs()}
    return {k: v.astype(np.int32 if types[k] == "tensor(int32)" else np.int64) for k, v in x.items() if k in types}


@pytest.mark.parametrize("name,op", [("bert_ort_optimized", "Attention"), ("bert_ort_optimized_mha", "MultiHeadAttention")])
def test_bert_after_the_transformer_optimizer_prunes_heads_and_mlp(name, op):
    original = onnx.load(MODELS / f"{name}.onnx")
    fused = {n.op_type for n in original.graph.node if n.domain == "com.microsoft"}
    assert {op, "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu"} <= fused
    ctx, zeroed = prune_with_oracle(original, ratio=0.5)
    groups = ctx.analysis.prunable_groups
    assert sorted(g.kind for g in groups) == ["channels", "channels", "heads", "heads"], \
        [g.reasons for g in ctx.analysis.groups]
    ffn = [g for g in groups if g.kind == "channels"]
    assert all(any("intermediate/dense/MatMul" in n for n in g.nodes) for g in ffn)
    onnx.checker.check_model(ctx.pruned, full_check=True)
    zs, ps, os_ = session(zeroed), session(ctx.pruned), session(original)
    for seed in (0, 1):
        f = bert_feeds(seed, os_)
        got, want = ps.run(None, f)[0], zs.run(None, f)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert not np.allclose(got, os_.run(None, f)[0], atol=1e-3), "pruning changed nothing"
    heads = [a.i for n in ctx.pruned.graph.node if n.op_type == op for a in n.attribute if a.name == "num_heads"]
    assert heads == [2, 2]
    biases = {n.input[1]: n for n in ctx.pruned.graph.node if n.op_type == "BiasGelu"}
    widths = [list(i.dims) for i in ctx.pruned.graph.initializer if i.name in biases]
    assert widths == [[32], [32]]
