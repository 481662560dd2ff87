"""torch's SDPA decomposition as the dynamo exporter writes it (transformers' default attention):
K's last two axes are transposed through 3-D tensors, the heads merged into the batch and split
back with dims read by Shape. Heads prune through it, checked against the zeroed-channel oracle on
a handmade layer and on BERT (``models/bert_sdpa_dynamo.onnx``, ``tools/export_bert_formats.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import prune_with_oracle, session
from graphs import GraphBuilder

from onnxprune import Pipeline
from onnxprune.passes.builtin import Analyze, Normalize

MODELS = Path(__file__).resolve().parent.parent / "models"
B, T, C, H, D = 2, 5, 8, 4, 3
BIG = 2 ** 63 - 1


def i64(*v):
    return np.array(v, np.int64)


def sdpa_layer(b: GraphBuilder, x: str, heads_entry=None, extra_reader=False, back_heads=None, swap=False) -> str:
    """q/k/v projections, heads split (B, T, H, D) -> (B, H, T, D); kᵀ as the SDPA decomposition
    writes it: Reshape(-1, T, D), Transpose(0, 2, 1), Reshape(Shape(k)[:2] + (D, T)); attention,
    heads merged, output projection, residual. ``back_heads``: a constant head count in the last
    Reshape instead of the one read by Shape; ``extra_reader``: the merged tensor is read twice;
    ``swap``: split back as (H, B, D, T), another order of the merged rows."""
    lead = ["batch", "seq"]
    s0 = b.node("Shape", [x], [1], start=0, end=1)
    s1 = b.node("Shape", [x], [1], start=1, end=2)
    split = b.node("Concat", [s0, s1, b.const(i64(heads_entry or -1, D))], [4], axis=0)
    q, k, v = (b.transpose(b.node("Reshape", [b.matmul(x, H * D), split], lead + [H, D]), [0, 2, 1, 3])
               for _ in range(3))
    shape = b.node("Shape", [k], [4])
    last = b.node("Slice", [shape, b.const(i64(-1)), b.const(i64(BIG))], [1])
    second = b.node("Slice", [shape, b.const(i64(-2)), b.const(i64(-1))], [1])
    front = b.node("Slice", [shape, b.const(i64(-BIG)), b.const(i64(-2))], [2])
    merged = b.node("Reshape", [k, b.node("Concat", [b.const(i64(-1)), second, last], [3], axis=0)],
                    ["bh", "seq", D])
    flipped = b.node("Transpose", [merged], ["bh", D, "seq"], perm=[0, 2, 1])
    if swap:
        pair = [b.node("Slice", [front, b.const(i64(i)), b.const(i64(i + 1))], [1]) for i in (1, 0)]
        back = b.node("Concat", pair + [last, second], [4], axis=0)
    elif back_heads is None:
        back = b.node("Concat", [front, last, second], [4], axis=0)
    else:
        back = b.node("Concat", [s0, b.const(i64(back_heads)), last, second], [4], axis=0)
    kt = b.node("Reshape", [flipped, back], ["batch", H, D, "seq"])
    scale = b.const(np.array([D ** -0.25], np.float32))
    scores = b.node("MatMul", [b.node("Mul", [q, scale], lead[:1] + [H, "seq", D]),
                               b.node("Mul", [kt, scale], ["batch", H, D, "seq"])], ["batch", H, "seq", "seq"])
    if extra_reader:
        scores = b.add(scores, b.node("ReduceSum", [merged, b.const(i64(0, 1, 2))], [1, 1, 1], keepdims=1))
    probs = b.node("Softmax", [scores], ["batch", H, "seq", "seq"], axis=-1)
    o = b.transpose(b.node("MatMul", [probs, v], ["batch", H, "seq", D]), [0, 2, 1, 3])
    out = b.node("Reshape", [o, b.node("Concat", [s0, s1, b.const(i64(H * D))], [3], axis=0)], lead + [H * D])
    return b.add(x, b.matmul(out, C))


def model(**kw) -> onnx.ModelProto:
    b = GraphBuilder(seed=7, opset=18)
    x = b.input(["batch", "seq", C])
    x = sdpa_layer(b, x, **kw)
    b.output(b.add(x, b.matmul(b.act(b.matmul(x, 2 * C), "Relu"), C)))
    return b.model()


def check(m: onnx.ModelProto, feeds, ratio=0.5):
    ctx, zeroed = prune_with_oracle(m, ratio=ratio)
    onnx.checker.check_model(ctx.pruned, full_check=True)
    zs, ps, os_ = session(zeroed), session(ctx.pruned), session(m)
    for seed in (0, 1):
        f = feeds(seed)
        got, want = ps.run(None, f)[0], zs.run(None, f)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert not np.allclose(got, os_.run(None, f)[0], atol=1e-3), "pruning changed nothing"
    return ctx


def x_feeds(seed):
    return {"x": np.random.default_rng(seed).standard_normal((B, T, C)).astype(np.float32)}


@pytest.mark.parametrize("back_heads", [None, H])
def test_heads_merged_into_the_batch_for_the_key_transpose_prune(back_heads):
    ctx = check(model(back_heads=back_heads), x_feeds)
    heads = [g for g in ctx.analysis.prunable_groups if g.kind == "heads"]
    assert len(heads) == 1 and heads[0].channels == H, [g.reasons for g in ctx.analysis.groups]
    assert ctx.selection.kept[heads[0].id][0] == H // 2


def _head_reasons(m):
    analysis = Pipeline([Normalize(), Analyze()]).run(m).analysis
    assert not [g for g in analysis.prunable_groups if g.kind == "heads" or g.channels == H * D]
    return [r for g in analysis.groups for r in g.reasons]


def test_heads_merged_into_the_batch_and_read_there_are_refused():
    reasons = _head_reasons(model(extra_reader=True))
    assert any("merges it with earlier axes" in r for r in reasons), reasons


def test_a_split_back_in_another_order_is_refused():
    """(B*H, D, T) split back as (H, B, D, T) is not a transpose of K: the heads stay whole."""
    reasons = _head_reasons(model(swap=True))
    assert any("merges it with earlier axes" in r for r in reasons), reasons


def bert_feeds(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.ones((2, 7), np.int64)
    mask[1, -2:] = 0
    return {"input_ids": rng.integers(0, 100, (2, 7)).astype(np.int64), "attention_mask": mask,
            "token_type_ids": np.zeros((2, 7), np.int64)}


def test_bert_with_sdpa_attention_prunes_heads_and_mlp():
    original = onnx.load(MODELS / "bert_sdpa_dynamo.onnx")
    assert not [n for n in original.graph.node if n.op_type == "Attention"]
    ctx = check(original, bert_feeds)
    groups = ctx.analysis.prunable_groups
    assert sorted(g.kind for g in groups) == ["channels", "channels", "heads", "heads"], \
        [g.reasons for g in ctx.analysis.groups]
    widths = {i.name: list(i.dims) for i in ctx.pruned.graph.initializer}
    assert widths["model.encoder.layer.1.attention.self.key.bias"] == [16]  # 2 of 4 heads of 8


def test_a_head_count_read_with_the_batch_into_another_tensors_shape_is_refused():
    """Shape(k)[:2] (batch and heads) used to reshape a tensor that does not carry the heads."""
    b = GraphBuilder(seed=8, opset=18)
    x = b.input(["batch", "seq", C])
    s0 = b.node("Shape", [x], [1], start=0, end=1)
    s1 = b.node("Shape", [x], [1], start=1, end=2)
    split = b.node("Concat", [s0, s1, b.const(i64(H, D))], [4], axis=0)
    k = b.transpose(b.node("Reshape", [b.matmul(x, H * D), split], ["batch", "seq", H, D]), [0, 2, 1, 3])
    front = b.node("Slice", [b.node("Shape", [k], [4]), b.const(i64(0)), b.const(i64(2))], [2])
    other = b.node("Reshape", [x, b.node("Concat", [front, b.const(i64(-1))], [3], axis=0)], ["batch", H, "n"])
    b.output(b.node("ReduceSum", [k, b.const(i64(1, 3))], ["batch", 1, "seq", 1], keepdims=1))
    b.output(other)
    analysis = Pipeline([Normalize(), Analyze()]).run(b.model()).analysis
    reasons = [r for g in analysis.groups for r in g.reasons]
    assert any("read by Shape into the shape of Reshape" in r for r in reasons), reasons
