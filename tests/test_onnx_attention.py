"""ai.onnx Attention (opset 23): 3-D and 4-D inputs, multi-head and grouped-query attention, a
mask, a KV cache as graph I/O, and BERT exported at opset 23 (``models/bert_opset23.onnx``,
``tools/export_bert_formats.py``), each checked against the zeroed-channel oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_cache_oracle, assert_oracle, session
from graphs import GraphBuilder
from onnx import TensorProto, helper

from onnxprune import Pipeline
from onnxprune.passes.builtin import Analyze, Normalize

MODELS = Path(__file__).resolve().parent.parent / "models"
B, T, C, D = 2, 5, 8, 3


def i64(*values):
    return np.array(values, np.int64)


def attention_layer(b: GraphBuilder, x: str, heads: int, kv_heads: int, layout: int, mask: str | None = None,
                    cache: tuple[str, str] | None = None) -> str:
    """Q/K/V projections, ai.onnx Attention in ``layout`` (3: (B, T, heads*D) with the head counts
    as attributes; 4: (B, heads, T, D) split by Reshape + Transpose), output projection, residual."""
    q, k, v = b.matmul(x, heads * D), b.matmul(x, kv_heads * D), b.matmul(x, kv_heads * D)
    attrs = {}
    if layout == 4:
        q, k, v = (b.transpose(b.reshape(t, [B, T, n, D]), [0, 2, 1, 3])
                   for t, n in ((q, heads), (k, kv_heads), (v, kv_heads)))
        out_shape = [B, heads, T, D]
    else:
        attrs = {"q_num_heads": heads, "kv_num_heads": kv_heads}
        out_shape = [B, T, heads * D]
    ins = [q, k, v, mask or ""] + (list(cache) if cache else [])
    n_out = 3 if cache else 1
    outs = b.node("Attention", ins, out_shape, n_out=n_out, **attrs)
    y = outs[0] if cache else outs
    if cache:
        for o, name in zip(outs[1:], ("present.0.key", "present.0.value")):
            b.nodes[-1].output[list(b.nodes[-1].output).index(o)] = name
            b.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [B, kv_heads, None, D]))
    if layout == 4:
        y = b.reshape(b.transpose(y, [0, 2, 1, 3]), [B, T, heads * D])
    return b.add(x, b.matmul(y, C))


def model(heads=4, kv_heads=4, layout=4, mask=False, layers=1, seed=0) -> onnx.ModelProto:
    b = GraphBuilder(seed=seed, opset=23)
    x = b.input([B, T, C])
    m = b.input([B, 1, T, T], name="mask") if mask else None
    for _ in range(layers):
        x = attention_layer(b, x, heads, kv_heads, layout, m)
        x = b.add(x, b.matmul(b.act(b.matmul(x, 2 * C), "Relu"), C))
    b.output(x)
    return b.model()


def head_groups(ctx):
    return [g for g in ctx.analysis.groups if g.kind == "heads"]


def attention_attrs(m: onnx.ModelProto) -> list[dict]:
    return [{a.name: a.i for a in n.attribute if a.name.endswith("num_heads")}
            for n in m.graph.node if n.op_type == "Attention"]


@pytest.mark.parametrize("layout", [3, 4])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_attention_heads_prune(layout, heads, kv_heads):
    m = model(heads, kv_heads, layout, mask=True, layers=2)
    ctx = assert_oracle(m, ratio=0.5)
    groups = head_groups(ctx)
    assert len(groups) == 2 and all(g.prunable for g in groups), [g.reasons for g in groups]
    # heads go in whole K/V groups: 4 query heads on 2 K/V heads are 2 removable units
    assert [g.channels for g in groups] == [kv_heads] * 2
    removed = [g for g in groups if any(r in ctx.selection.removed for r in g.classes)]
    assert len(removed) == 2
    q_kept, kv_kept = heads // 2, kv_heads // 2
    shapes = [tuple(i.dims) for i in ctx.pruned.graph.initializer if len(i.dims) == 2]
    assert shapes.count((C, q_kept * D)) == 2 * (3 if kv_heads == heads else 1)  # Q (and K, V)
    if kv_heads != heads:
        assert shapes.count((C, kv_kept * D)) == 4  # K and V
    assert shapes.count((q_kept * D, C)) == 2
    if layout == 3:
        assert attention_attrs(ctx.pruned) == [{"q_num_heads": q_kept, "kv_num_heads": kv_kept}] * 2
    else:
        assert attention_attrs(ctx.pruned) == [{}] * 2
    assert ctx.report["after"]["params"] < ctx.report["before"]["params"]


def test_a_mask_with_a_head_axis_that_is_computed_is_refused():
    b = GraphBuilder(seed=3, opset=23)
    x = b.input([B, T, C])
    m = b.input([B, 4, T, T], name="mask")
    b.output(attention_layer(b, x, 4, 4, 4, m))
    ctx = Pipeline([Normalize(), Analyze()]).run(b.model())
    groups = head_groups(ctx)
    assert groups and not any(g.prunable for g in groups)
    assert any("mask" in r for g in groups for r in g.reasons)


def test_a_constant_per_head_mask_is_sliced_with_the_heads():
    b = GraphBuilder(seed=4, opset=23)
    x = b.input([B, T, C])
    bias = b.const((np.random.default_rng(0).standard_normal((1, 4, T, T))).astype(np.float32), "bias")
    b.output(attention_layer(b, x, 4, 4, 4, bias))
    ctx = assert_oracle(b.model(), ratio=0.5)
    assert [i for i in ctx.pruned.graph.initializer if i.name.startswith("bias") or "input3" in i.name][0].dims[1] == 2


@pytest.mark.parametrize("layout", [3, 4])
def test_a_cache_as_graph_io_changes_shape_with_the_kv_heads(layout):
    """past_key/past_value in, present_key/present_value out: the K/V-head axis of each is tied
    to the heads and rewritten to the kept count (analysis.cache_io)."""
    b = GraphBuilder(seed=5, opset=23)
    x = b.input([B, T, C])
    past = (b.input([B, 2, 3, D], name="past_key_values.0.key"), b.input([B, 2, 3, D], name="past_key_values.0.value"))
    b.output(attention_layer(b, x, 4, 2, layout, cache=past))
    b.outputs.insert(0, b.outputs.pop())  # the hidden state first
    ctx = assert_cache_oracle(b.model(), ratio=0.5)
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in ctx.pruned.graph.input}
    assert dims["past_key_values.0.key"] == [B, 1, 3, D]


def test_a_cache_that_is_no_cache_by_name_is_refused():
    b = GraphBuilder(seed=6, opset=23)
    x = b.input([B, T, C])
    past = (b.input([B, 4, 3, D], name="pk"), b.input([B, 4, 3, D], name="pv"))
    b.output(attention_layer(b, x, 4, 4, 4, cache=past))
    ctx = Pipeline([Normalize(), Analyze()]).run(b.model())
    groups = head_groups(ctx)
    assert groups and not any(g.prunable for g in groups)
    assert any("'pk'" in r for g in groups for r in g.reasons)


def bert_feeds(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((2, 7), np.int64)
    mask[1, -2:] = 0
    return {"input_ids": rng.integers(0, 100, (2, 7)).astype(np.int64), "attention_mask": mask,
            "token_type_ids": np.zeros((2, 7), np.int64)}


def test_bert_exported_at_opset_23_prunes_heads_and_mlp():
    from conftest import prune_with_oracle

    original = onnx.load(MODELS / "bert_opset23.onnx")
    assert original.opset_import[0].version == 23
    assert sum(n.op_type == "Attention" for n in original.graph.node) == 2
    ctx, zeroed = prune_with_oracle(original, ratio=0.5)
    kinds = sorted(g.kind for g in ctx.analysis.prunable_groups)
    assert kinds == ["channels", "channels", "heads", "heads"], [g.reasons for g in ctx.analysis.groups]
    onnx.checker.check_model(ctx.pruned, full_check=True)
    zs, ps, os_ = session(zeroed), session(ctx.pruned), session(original)
    for seed in (0, 1):
        f = bert_feeds(seed)
        got, want, before = ps.run(None, f)[0], zs.run(None, f)[0], os_.run(None, f)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert not np.allclose(got, before, atol=1e-3), "pruning changed nothing"
    widths = {i.name: list(i.dims) for i in ctx.pruned.graph.initializer}
    assert widths["model.encoder.layer.0.attention.self.query.bias"] == [16]  # 2 of 4 heads of 8
    assert widths["model.encoder.layer.0.intermediate.dense.bias"] == [32]
