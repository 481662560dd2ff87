"""Targets (--target-flops/-params/-latency) with --prune blocks: alone, residual blocks go in score
order until the target is met (the fewest that meet it); with channels, the channel search makes
up the rest for each block set, and with calibration data the closest to the original wins.
Every result meets its target, and equals the original with its removed channels and blocks
zeroed (the oracle); the CLI writes a model that loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import random_feeds, session
from test_search import _fake_ms, fake_clock  # noqa: F401 (the fixture)

from onnxprune.cli import main
from onnxprune.context import PruneOptions
from onnxprune.oracle import zeroed_model
from onnxprune.passes.builtin import Analyze, Calibrate, Normalize, Rewrite, Score
from onnxprune.passes.search import Search
from onnxprune.pipeline import Pipeline
from onnxprune.rewrite import apply
from onnxprune.search.targets import Target

MODELS = Path(__file__).resolve().parent.parent / "models"


def _calib(tmp_path, model) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / "calib.npz"
    np.savez(path, **{model.graph.input[0].name: rng.standard_normal((32, 3, 32, 32)).astype(np.float32)})
    return str(path)


def _searched(model, target: Target, prune: str, **options):
    """Search, then the oracle: the rewrite equals the original with the selection zeroed."""
    ctx = Pipeline([Normalize(), Analyze(), Calibrate(), Score(), Search()]).run(
        model, PruneOptions(target=target, prune=prune, **options))
    zeroed = zeroed_model(ctx.analysis, ctx.selection.removed, ctx.selection.blocks)
    Rewrite().run(ctx)
    zs, ps = session(zeroed), session(ctx.pruned)
    for seed in (0, 1):
        feeds = random_feeds(ps, seed)
        for e, g in zip(zs.run(None, feeds), ps.run(None, feeds)):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    return ctx


@pytest.mark.parametrize("name", ["resnet_small.onnx", "bert_torchscript.onnx", "bert_ort_optimized.onnx"])
@pytest.mark.parametrize("kind, fraction", [("flops", 0.8), ("params", 0.85)])
def test_blocks_alone_meet_a_counted_target_with_the_fewest_blocks(name, kind, fraction):
    from onnxprune.metrics import count_flops, count_params

    model = onnx.load(MODELS / name)
    ctx = _searched(model, Target(kind, fraction, True), "blocks", criterion="l1")
    search, before, after = ctx.report["search"], ctx.report["before"][kind], ctx.report["after"][kind]
    assert search["status"] == "met" and after <= fraction * before and search["achieved"] == after
    assert not ctx.selection.removed and ctx.selection.blocks
    # the blocks went in score order, and one fewer would not have met the target
    order = sorted(ctx.analysis.removable_blocks, key=lambda b: (ctx.block_scores[b.id], -b.id))
    k = len(ctx.selection.blocks)
    assert ctx.selection.blocks == {b.id for b in order[:k]}
    fewer = apply(ctx.analysis.plan, set(), ctx.graph, {b.id for b in order[:k - 1]})
    count = count_flops if kind == "flops" else count_params
    assert count(fewer) > fraction * count(ctx.graph)


@pytest.mark.parametrize("name", ["resnet_small.onnx", "llama_dynamo.onnx"])
def test_a_block_count_with_a_target_cuts_channels_for_the_rest(name):
    from onnxprune.metrics import count_flops

    model = onnx.load(MODELS / name)
    ctx = _searched(model, Target("flops", 0.5, True), "blocks,heads,channels", blocks=1, criterion="l1")
    assert ctx.report["search"]["status"] == "met"
    assert ctx.report["after"]["flops"] <= 0.5 * ctx.report["before"]["flops"]
    assert len(ctx.selection.blocks) == 1 and ctx.selection.removed
    alone = apply(ctx.analysis.plan, set(), ctx.graph, ctx.selection.blocks)
    assert count_flops(alone) > 0.5 * count_flops(ctx.graph)  # the block alone does not meet it


def test_with_calibration_the_block_set_closest_to_the_original_wins(tmp_path):
    from onnxprune.search.blocks import MAX_BLOCK_SETS

    model = onnx.load(MODELS / "resnet_small.onnx")
    ctx = _searched(model, Target("flops", 0.5, True), "blocks,channels", calibration=_calib(tmp_path, model))
    search = ctx.report["search"]
    assert search["status"] == "met" and ctx.report["after"]["flops"] <= 0.5 * ctx.report["before"]["flops"]
    sets = search["block_sets"]
    assert 1 < len(sets) <= MAX_BLOCK_SETS
    assert [len(c["blocks"]) for c in sets] == sorted(len(c["blocks"]) for c in sets)
    best = max(sets, key=lambda c: c["cosine"])
    assert [c for c in sets if c["chosen"]] == [best] and best["blocks"] == sorted(ctx.selection.blocks)


def test_without_calibration_channels_alone_are_tried_first():
    """No data to compare candidates on: blocks go only where channels alone cannot meet the target."""
    model = onnx.load(MODELS / "resnet_small.onnx")
    ctx = _searched(model, Target("flops", 0.5, True), "blocks,channels", criterion="l1")
    assert ctx.report["search"]["status"] == "met" and not ctx.selection.blocks and ctx.selection.removed


@pytest.mark.parametrize("prune", ["blocks", "blocks,channels"])
def test_latency_target_with_blocks(fake_clock, prune):  # noqa: F811 (the fixture)
    model = onnx.load(MODELS / "resnet_small.onnx")
    target = 0.8 * _fake_ms(model)
    ctx = _searched(model, Target("latency", target), prune, criterion="l1", blocks=1 if "," in prune else None)
    search = ctx.report["search"]
    assert search["status"] == "met" and search["achieved"] <= target
    assert _fake_ms(ctx.pruned) == pytest.approx(search["achieved"], rel=0.05)
    assert len(ctx.selection.blocks) >= 1
    if prune == "blocks":
        assert not ctx.selection.removed


def test_cli_blocks_target_writes_a_model_that_loads(tmp_path):
    out = tmp_path / "o.onnx"
    result = CliRunner().invoke(main, [str(MODELS / "bert_ort_optimized.onnx"), "-o", str(out),
                                       "--prune", "blocks", "--target-params", "0.9"])
    assert result.exit_code == 0, result.output
    assert "met" in result.output and out.exists()
    session(onnx.load(out))
    bad = CliRunner().invoke(main, [str(MODELS / "resnet_small.onnx"), "-o", str(out.with_name("b.onnx")),
                                    "--prune", "blocks", "--target-latency", "1ms", "--latency-table", "t.json"])
    assert bad.exit_code == 2 and "--latency-table" in bad.output and not out.with_name("b.onnx").exists()
