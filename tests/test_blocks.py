"""Residual blocks removed whole: the oracle (output projection zeroed == branch removed) on
ResNet, MobileNetV2, BERT and LLaMA exports, refusals with their reasons, the fused graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import assert_block_oracle
from graphs import GraphBuilder
from onnxprune.passes.builtin import Analyze, Normalize
from onnxprune.pipeline import Pipeline, prune

MODELS = Path(__file__).resolve().parent.parent / "models"

#: model -> removable residual blocks (attention and MLP sub-blocks count apart)
EXPECTED = {"resnet_small.onnx": 5, "mobilenetv2_small.onnx": 4, "bert_dynamo.onnx": 4,
            "bert_torchscript.onnx": 4, "llama_dynamo.onnx": 4, "llama_torchscript.onnx": 4,
            "gpt2_dynamo.onnx": 4, "vit_torchscript.onnx": 4}


def analysis_of(model):
    return Pipeline([Normalize(), Analyze()]).run(model).analysis


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_block_alone_and_all_together(name):
    model = onnx.load(MODELS / name)
    analysis = analysis_of(model)
    blocks = analysis.removable_blocks
    assert len(blocks) == EXPECTED[name]
    assert analysis.blocks == blocks  # nothing refused: a mask added to later scores spans blocks, is none
    for block in blocks:
        ctx = assert_block_oracle(model, {block.id})
        removed = ctx.report["before"]["params"] - ctx.report["after"]["params"]
        assert removed == block.params
    ctx = assert_block_oracle(model)
    names = {n.name for n in ctx.pruned.graph.node}
    assert not names & {n for b in blocks for n in b.nodes}


@pytest.mark.parametrize("name", ["bert_torchscript.onnx", "llama_dynamo.onnx"])
def test_consecutive_blocks_chain(name):
    """Attention and MLP of one layer together: the second's stream is the first's output."""
    model = onnx.load(MODELS / name)
    first, second = analysis_of(model).removable_blocks[:2]
    assert_block_oracle(model, {first.id, second.id})


def test_decoder_with_a_kv_cache_keeps_what_the_cache_reads():
    """A LLaMA step with past keys and values: removing an attention sub-block leaves its K/V
    projections (the present outputs read them); the outputs equal the zeroed original's."""
    from test_kv_cache import decoder_feeds

    model = onnx.load(MODELS / "llama_cache_dynamo.onnx")
    analysis = analysis_of(model)
    assert len(analysis.removable_blocks) == 4
    ctx = assert_block_oracle(model, feeds=lambda seed: decoder_feeds(model, seed), atol=1e-4)
    before, after = ctx.report["before"]["params"], ctx.report["after"]["params"]
    # each block counts what only it reads; together they also free constants they share (scalars)
    assert 0 <= before - after - sum(b.params for b in analysis.removable_blocks) < 100
    # the weight layers the first layer's present outputs are computed from are all still there
    producer = {o: n for n in model.graph.node for o in n.output}
    weights = {t.name for t in model.graph.initializer}
    todo, cache_layers = [o.name for o in model.graph.output if o.name.startswith("present.0.")], set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in cache_layers:
            continue
        cache_layers.add(node.name)
        todo.extend(node.input)
    cache_layers = {n.name for n in model.graph.node if n.name in cache_layers and n.op_type == "MatMul"
                    and any(i in weights for i in n.input)}
    assert cache_layers and cache_layers <= {n.name for n in ctx.pruned.graph.node}


@pytest.mark.parametrize("name", ["bert_ort_optimized.onnx", "bert_ort_optimized_mha.onnx"])
def test_fused_skip_layer_norm_blocks(name):
    """ONNX Runtime's SkipLayerNormalization fuses the residual Add, the branch's bias and the
    LayerNorm after them: a removed branch leaves a LayerNormalization of the stream, the bias
    going with the branch; every block alone and all together equal the zeroed original."""
    model = onnx.load(MODELS / name)
    analysis = analysis_of(model)
    assert len(analysis.removable_blocks) == 4 and analysis.blocks == analysis.removable_blocks
    for block in analysis.removable_blocks:
        ctx = assert_block_oracle(model, {block.id})
        assert ctx.report["before"]["params"] - ctx.report["after"]["params"] == block.params
        ops = {n.name: n.op_type for n in ctx.pruned.graph.node}
        assert ops[block.join] == "LayerNormalization"
    ctx = assert_block_oracle(model)
    assert not any(n.op_type == "SkipLayerNormalization" for n in ctx.pruned.graph.node)


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "int4"])
def test_genai_skip_simplified_layer_norm_blocks(fmt):
    """The GenAI builder's LLaMA (fp32, fp16, int4 with MatMulNBits projections, zeroed by their
    scales): SkipSimplifiedLayerNormalization joins each sub-block and also
    outputs the sum, the stream the next block reads (its normalised output feeds the next
    branch). Removing a branch makes the sum the stream itself and the node an RMS norm of it;
    the zeroed original's outputs (logits and the present cache, a past cache fed) are matched."""
    from test_genai import TOLERANCES, feeds, folder

    model = onnx.load(folder(fmt) / "model.onnx")
    analysis = analysis_of(model)
    blocks = analysis.removable_blocks
    assert len(blocks) == 4 and analysis.blocks == blocks  # 2 layers' attention and MLP
    rtol, atol = TOLERANCES[fmt]
    for block in blocks:
        ctx = assert_block_oracle(model, {block.id}, feeds=feeds(fmt), rtol=rtol, atol=atol)
        assert ctx.report["before"]["params"] - ctx.report["after"]["params"] == block.params
        ops = {n.name: n.op_type for n in ctx.pruned.graph.node}
        assert ops[block.join] == "SimplifiedLayerNormalization"
    for pair in ({0, 1}, {1, 2}, {0, 1, 2, 3}):  # consecutive ones chain through the sum output
        assert_block_oracle(model, pair, feeds=feeds(fmt), rtol=rtol, atol=atol)


def test_fused_join_refuses_what_it_cannot_keep():
    """A Skip*LayerNorm whose mean output is read, or without epsilon, keeps its branch."""
    model = onnx.load(MODELS / "bert_ort_optimized.onnx")
    skip = next(n for n in model.graph.node if n.op_type == "SkipLayerNormalization")
    del skip.output[1:]
    skip.output.extend(["skip_mean"])
    model.graph.output.append(onnx.helper.make_tensor_value_info("skip_mean", onnx.TensorProto.FLOAT, None))
    (first, *_rest) = analysis_of(model).blocks
    assert not first.removable and "mean or inv_std_var" in first.reasons[0]
    model = onnx.load(MODELS / "bert_ort_optimized.onnx")
    skip = next(n for n in model.graph.node if n.op_type == "SkipLayerNormalization")
    del skip.attribute[:]
    (first, *_rest) = analysis_of(model).blocks
    assert not first.removable and "epsilon" in first.reasons[0]


def residual(b: GraphBuilder, x: str, tail: str | None = None, read_twice: bool = False) -> str:
    h = b.conv(b.act(b.conv(x, 8)), 8)
    if tail:
        h = b.act(h, tail)
    y = b.add(x, h)
    if read_twice:
        b.output(h)
    return y


def handmade(tail=None, read_twice=False, output_join=False):
    b = GraphBuilder()
    x = b.conv(b.input([1, 3, 8, 8]), 8)
    y = residual(b, x, tail, read_twice)
    if output_join:
        b.output(y)
    else:
        b.output(b.conv(y, 4))
    return b.model()


def test_handmade_block_and_a_join_that_is_a_graph_output():
    assert_block_oracle(handmade())
    ctx = assert_block_oracle(handmade(output_join=True))
    assert any(n.op_type == "Identity" for n in ctx.pruned.graph.node)


def test_refusals_say_why():
    (block,) = analysis_of(handmade(tail="Sigmoid")).blocks
    assert not block.removable and "does not keep zeros" in block.reasons[0]
    (block,) = analysis_of(handmade(read_twice=True)).blocks
    assert not block.removable and "also read by" in block.reasons[0]


def test_broadcast_add_is_no_block():
    """x + f(x) where f widens x (a mask added to scores): not a residual branch."""
    b = GraphBuilder()
    x = b.input([1, 1, 4, 4])
    wide = b.conv(x, 4)
    b.output(b.add(wide, x))
    assert analysis_of(b.model()).blocks == []


def test_prune_blocks_with_calibration_and_reconstruction(tmp_path):
    """End to end: blocks scored on data, the lowest removed, the next kept block refit."""
    model = onnx.load(MODELS / "resnet_small.onnx")
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, **{model.graph.input[0].name: rng.standard_normal((32, 3, 32, 32)).astype(np.float32)})
    result = prune(model, prune="blocks", blocks=2, calibration=str(calib))
    assert len(result.context.selection.blocks) == 2
    scores = result.context.block_scores
    assert set(scores) == {b.id for b in result.context.analysis.removable_blocks}
    chosen = sorted(scores, key=scores.get)[:2]
    assert result.context.selection.blocks == set(chosen)
    assert result.report["after"]["params"] < result.report["before"]["params"]
    refit = [layer["node"] for layer in result.report["reconstruction"]["layers"]]
    assert refit, "the projection after a removed block is refit"


def test_blocks_flag_needs_the_kind():
    from onnxprune.errors import BadInputError
    with pytest.raises(BadInputError, match="--prune blocks"):
        prune(MODELS / "resnet_small.onnx", blocks=1)


@pytest.mark.parametrize("name", ["resnet_small.onnx", "bert_torchscript.onnx", "llama_dynamo.onnx"])
def test_blocks_and_channels_together(name):
    """Channels and heads cut everywhere and blocks removed in one rewrite equal the original
    with both zeroed (channels at their consumers, blocks at their output projections)."""
    from conftest import random_feeds, session
    from onnxprune.context import PruneOptions
    from onnxprune.oracle import zeroed_model
    from onnxprune.passes.builtin import Rewrite, Score, Select

    model = onnx.load(MODELS / name)
    ctx = Pipeline([Normalize(), Analyze(), Score(), Select()]).run(
        model, PruneOptions(ratio=0.5, criterion="l1", prune="heads,channels,blocks", blocks=2))
    assert ctx.selection.removed and len(ctx.selection.blocks) == 2
    zeroed = zeroed_model(ctx.analysis, ctx.selection.removed, ctx.selection.blocks)
    Rewrite().run(ctx)
    zs, ps = session(zeroed), session(ctx.pruned)
    for seed in (0, 1):
        feeds = random_feeds(zs, seed)
        for e, g in zip(zs.run(None, feeds), ps.run(None, feeds)):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_fused_blocks_score_as_the_unfused_export(tmp_path):
    """The same BERT weights, fused by ONNX Runtime's optimizer or exported plain: a block's stream
    change on the same data is the same (the fused join's sum is the stream in, branch and bias
    added), so the same block goes."""
    rng = np.random.default_rng(0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=rng.integers(0, 100, (16, 8)), attention_mask=np.ones((16, 8), np.int64),
             token_type_ids=np.zeros((16, 8), np.int64))
    fused = prune(MODELS / "bert_ort_optimized.onnx", prune="blocks", blocks=1, calibration=str(calib))
    plain = prune(MODELS / "bert_sdpa_dynamo.onnx", prune="blocks", blocks=1, calibration=str(calib))
    got, want = fused.context.block_scores, plain.context.block_scores
    assert len(got) == len(want) == 4
    np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)], rtol=1e-5)
    assert fused.context.selection.blocks == plain.context.selection.blocks
    assert fused.report["after"]["params"] < fused.report["before"]["params"]
