"""ONNX Runtime's transformer optimizer still fuses the attention of a pruned BERT.

``onnxruntime.transformers.optimizer`` recognises BERT attention by its subgraph and reads each
layer's head count from the constant in the Q Reshape's shape vector. A pruned model in which a
head count stayed stale anywhere (that Concat constant, the merge Reshape, the Q/K/V widths)
either does not fuse or fuses with the wrong ``num_heads`` and computes something else.

``models/bert_classic_torchscript.onnx`` (``tools/export_bert_classic.py``) is a tiny BERT in
the classic attention pattern (the one the optimizer matches with ``num_heads=0``), exported with
the TorchScript exporter: 2 layers of 4 heads of 16 channels. Also: the fused model prunes its
heads, and BERT as current ``transformers`` exports it fuses once pruned when the optimizer is
given the pruned head count.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import session

from onnxprune.context import PruneOptions
from onnxprune.oracle import zeroed_model
from onnxprune.passes.builtin import Analyze, Normalize, Rewrite, Score, Select
from onnxprune.pipeline import Pipeline
from onnxprune.selection import select_by_counts

optimizer = pytest.importorskip("onnxruntime.transformers.optimizer",
                                reason="onnxruntime.transformers (ONNX Runtime's transformer optimizer) is not installed")
fusion_options = pytest.importorskip("onnxruntime.transformers.fusion_options")

MODEL = Path(__file__).resolve().parent.parent / "models" / "bert_classic_torchscript.onnx"
HEADS, HEAD_DIM, LAYERS = 4, 16, 2


def feeds(seed: int) -> dict:
    """Token ids in the vocabulary, two segments, and a right-padded second sequence."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 100, (2, 16)).astype(np.int64)
    mask = np.ones((2, 16), np.int64)
    mask[1, -5:] = 0
    types = np.zeros((2, 16), np.int64)
    types[:, 8:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def fuse(model: onnx.ModelProto, op: str) -> onnx.ModelProto:
    """The optimizer as users run it on BERT: head count and width detected from the graph."""
    options = fusion_options.FusionOptions("bert")
    options.use_multi_head_attention = op == "MultiHeadAttention"
    fused = optimizer.optimize_model(onnx.ModelProto.FromString(model.SerializeToString()), model_type="bert",
                                     num_heads=0, hidden_size=0, opt_level=0, optimization_options=options)
    return fused.model


def fused_heads(fused: onnx.ModelProto, op: str) -> list[int]:
    """``num_heads`` of each fused attention node, by layer (read from its output's name)."""
    heads = {}
    for node in fused.graph.node:
        if node.op_type == op and node.domain == "com.microsoft":
            layer = int(re.match(r"/layers\.(\d+)/", node.output[0]).group(1))
            heads[layer] = next(a.i for a in node.attribute if a.name == "num_heads")
    return [heads.get(layer) for layer in range(LAYERS)]


def run(model: onnx.ModelProto, inputs: dict) -> np.ndarray:
    """Run on ONNX Runtime's CPU provider; the fused model takes int32 ids and masks."""
    sess = session(model)
    types = {i.name: i.type for i in sess.get_inputs()}
    cast = {k: v.astype(np.int32) if types[k] == "tensor(int32)" else v for k, v in inputs.items() if k in types}
    return sess.run(None, cast)[0]


def prune_heads(model: onnx.ModelProto, kept: tuple[int, ...]):
    """Keep ``kept[i]`` heads of layer i (lowest l1 scores go); return (pruned, zeroed original)."""
    ctx = Pipeline([Normalize(), Analyze(), Score()]).run(model, PruneOptions(prune=("heads",)))
    groups = [g for g in ctx.analysis.prunable_groups if g.kind == "heads"]
    assert len(groups) == LAYERS, [g.reasons for g in ctx.analysis.groups]
    layer_of = {g.id: int(re.search(r"/layers\.(\d+)/", " ".join(g.sources)).group(1)) for g in groups}
    assert sorted(layer_of.values()) == list(range(LAYERS))
    assert all(g.channels == HEADS for g in groups)
    ctx.selection = select_by_counts(ctx.analysis, ctx.scores, {g.id: kept[layer_of[g.id]] for g in groups})
    zeroed = zeroed_model(ctx.analysis, ctx.selection.removed)
    Rewrite().run(ctx)
    return ctx.pruned, zeroed


@pytest.fixture(scope="module")
def original():
    return onnx.load(MODEL)


@pytest.mark.parametrize("op", ["Attention", "MultiHeadAttention"])
def test_the_export_fuses_before_pruning(original, op):
    fused = fuse(original, op)
    assert fused_heads(fused, op) == [HEADS] * LAYERS
    assert not [n for n in fused.graph.node if n.op_type == "Softmax"], "attention left unfused"
    for seed in (0, 1):
        x = feeds(seed)
        np.testing.assert_allclose(run(fused, x), run(original, x), rtol=1e-4, atol=1e-4)
    # the padding mask reaches the fused attention
    x = feeds(0)
    unmasked = dict(x, attention_mask=np.ones_like(x["attention_mask"]))
    assert not np.allclose(run(fused, x)[1], run(fused, unmasked)[1], atol=1e-3)


@pytest.mark.parametrize("op", ["Attention", "MultiHeadAttention"])
@pytest.mark.parametrize("kept", [(2, 2), (3, 1)])
def test_pruned_bert_still_fuses_with_its_head_counts(original, op, kept):
    pruned, zeroed = prune_heads(original, kept)
    onnx.checker.check_model(pruned, full_check=True)
    params = {i.name: onnx.numpy_helper.to_array(i) for i in pruned.graph.initializer}
    for layer, k in enumerate(kept):
        assert params[f"layers.{layer}.attention.query.bias"].shape == (k * HEAD_DIM,)
    # the oracle: pruning == zeroing the removed heads in the original
    for seed in (0, 1):
        x = feeds(seed)
        got, expected = run(pruned, x), run(zeroed, x)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        assert not np.allclose(got, run(original, x), atol=1e-3), "pruning changed nothing"

    fused = fuse(pruned, op)
    assert fused_heads(fused, op) == list(kept)
    assert not [n for n in fused.graph.node if n.op_type == "Softmax"], "attention left unfused"
    for seed in (0, 1):
        x = feeds(seed)
        np.testing.assert_allclose(run(fused, x), run(pruned, x), rtol=1e-4, atol=1e-4)


def test_the_fused_model_prunes_its_heads(original):
    """The other way round: fuse first, then prune the com.microsoft Attention nodes' heads."""
    fused = fuse(original, "Attention")
    ctx = Pipeline([Normalize(), Analyze(), Score()]).run(fused, PruneOptions(prune=("heads",)))
    groups = [g for g in ctx.analysis.prunable_groups if g.kind == "heads"]
    assert len(groups) == LAYERS, [g.reasons for g in ctx.analysis.groups]
    ctx.selection = select_by_counts(ctx.analysis, ctx.scores, {g.id: 2 for g in groups})
    zeroed = zeroed_model(ctx.analysis, ctx.selection.removed)
    Rewrite().run(ctx)
    assert fused_heads(ctx.pruned, "Attention") == [2] * LAYERS
    for seed in (0, 1):
        x = feeds(seed)
        got = run(ctx.pruned, x)
        np.testing.assert_allclose(got, run(zeroed, x), rtol=1e-4, atol=1e-4)
        assert not np.allclose(got, run(fused, x), atol=1e-3), "pruning changed nothing"


def test_transformers_bert_fuses_when_given_the_pruned_head_count():
    """BERT as current ``transformers`` exports it writes -1 for the head count in its shape
    vectors, so the optimizer has to be told the head count and width; told the pruned ones
    (every layer pruned alike), it fuses the pruned model."""
    original = onnx.load(MODEL.parent / "bert_torchscript.onnx")  # 2 layers of 4 heads of 8
    ctx = Pipeline([Normalize(), Analyze(), Score(), Select()]).run(
        original, PruneOptions(ratio=0.5, prune=("heads",)))
    assert [ctx.selection.kept[g.id] for g in ctx.analysis.prunable_groups] == [(2, 4)] * 2
    Rewrite().run(ctx)
    pruned = ctx.pruned
    options = fusion_options.FusionOptions("bert")
    fused = optimizer.optimize_model(onnx.ModelProto.FromString(pruned.SerializeToString()), model_type="bert",
                                     num_heads=2, hidden_size=16, opt_level=0, optimization_options=options).model
    heads = [a.i for n in fused.graph.node if n.op_type == "Attention" for a in n.attribute if a.name == "num_heads"]
    assert heads == [2, 2]
    assert not [n for n in fused.graph.node if n.op_type == "Softmax"], "attention left unfused"
    rng = np.random.default_rng(0)
    mask = np.ones((2, 6), np.int64)
    mask[1, -2:] = 0
    x = {"input_ids": rng.integers(0, 100, (2, 6)).astype(np.int64), "attention_mask": mask}
    np.testing.assert_allclose(run(fused, x), run(pruned, x), rtol=1e-4, atol=1e-4)
