"""Oracle helpers shared by the tests.

``assert_oracle`` is the proof of correctness the whole project rests on: zero the removed
channels' contributions in the original, prune, and the outputs must match.
"""

from __future__ import annotations

import os

# Strict rules: a rule raising anything but UnsupportedPattern fails the test (and the CLI runs
# the tests start inherit it), instead of passing as a refused group. Set before onnxprune is used.
os.environ["ONNXPRUNE_STRICT_RULES"] = "1"

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime", reason="the oracle runs models in ONNX Runtime ([cpu] extra)")

from onnxprune.context import PruneOptions  # noqa: E402
from onnxprune.oracle import zeroed_model  # noqa: E402
from onnxprune.passes.builtin import Analyze, Normalize, Rewrite, Score, Select  # noqa: E402
from onnxprune.pipeline import Pipeline  # noqa: E402
from onnxprune.rewrite import _check_like_input as check_like_input  # noqa: E402

_NP = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
       "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}


def session(model: onnx.ModelProto):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def random_feeds(sess, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        dtype = _NP[i.type]
        feeds[i.name] = (rng.standard_normal(shape) if dtype != np.bool_ else rng.random(shape) > 0.5).astype(dtype)
    return feeds


def prune_with_oracle(model, ratio: float = 0.3, criterion: str = "l1", round_to: int = 1):
    """Prune and return (context, zeroed original) — the pair the oracle compares."""
    ctx = Pipeline([Normalize(), Analyze(), Score(), Select()]).run(
        model, PruneOptions(ratio=ratio, criterion=criterion, round_to=round_to))
    zeroed = zeroed_model(ctx.analysis, ctx.selection.removed)
    Rewrite().run(ctx)
    return ctx, zeroed


def assert_oracle(model, ratio: float = 0.3, criterion: str = "l1", round_to: int = 1, seeds=(0, 1),
                  rtol: float = 1e-4, atol: float = 1e-5, expect_pruned: bool = True):
    """Pruned model == original with removed channels zeroed; same output names and shapes."""
    ctx, zeroed = prune_with_oracle(model, ratio, criterion, round_to)
    pruned = ctx.pruned
    onnx.checker.check_model(pruned, full_check=True)
    original = ctx.model
    assert [o.name for o in pruned.graph.output] == [o.name for o in original.graph.output]
    zs, ps, os_ = session(zeroed), session(pruned), session(original)
    for seed in seeds:
        feeds = random_feeds(os_, seed)
        expected = zs.run(None, feeds)
        got = ps.run(None, feeds)
        reference = os_.run(None, feeds)
        for e, g, r in zip(expected, got, reference):
            assert g.shape == r.shape, "output shape changed"
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    if expect_pruned:
        assert ctx.selection.removed, "nothing was pruned"
        assert ctx.report["after"]["params"] < ctx.report["before"]["params"]
    return ctx


def assert_cache_oracle(model, ratio: float = 0.5, criterion: str = "l1", feeds=None, seeds=(0, 1),
                        rtol: float = 1e-4, atol: float = 1e-5):
    """The oracle for a decoder with KV-cache graph inputs/outputs (``analysis.cache_io``).

    The zeroed original is fed the full past (non-zero values on every head, removed ones
    included); the pruned model the same past with the removed heads' slices taken out. Other
    outputs must match; each present output must match the zeroed original's on the kept heads.
    ``feeds(seed)`` gives the original's inputs (default: random, dynamic dims as 1).
    Returns the context; asserts that some cache input changed shape.
    """
    ctx, zeroed = prune_with_oracle(model, ratio, criterion)
    pruned = ctx.pruned
    check_like_input(pruned, ctx.model)  # full check, never stricter than the input passes (ONNX Runtime's ops)
    keep = ctx.analysis.keep_fn(ctx.selection.removed)
    ties = ctx.analysis.state.cache_ties
    zs, ps = session(zeroed), session(pruned)
    names = [o.name for o in zs.get_outputs()]
    assert names == [o.name for o in ps.get_outputs()]
    for seed in seeds:
        full = feeds(seed) if feeds is not None else random_feeds(zs, seed)
        cut = {n: np.compress(keep(ties[n][1]), v, axis=ties[n][0]) if n in ties else v for n, v in full.items()}
        expected = dict(zip(names, zs.run(None, full)))
        got = dict(zip(names, ps.run(None, cut)))
        for name in names:
            want = expected[name]
            if name in ties:
                want = np.compress(keep(ties[name][1]), want, axis=ties[name][0])
            assert got[name].shape == want.shape, name
            np.testing.assert_allclose(got[name], want, rtol=rtol, atol=atol, err_msg=name)
    shrunk = [n for n in ties if n in full and not keep(ties[n][1]).all()]
    assert shrunk, "no cache input changed shape"
    return ctx


def assert_block_oracle(model, blocks=None, seeds=(0, 1), rtol: float = 1e-4, atol: float = 1e-5, feeds=None):
    """Removing residual blocks (ids ``blocks``; default: every removable one) equals the original
    with their output projections zeroed; same outputs, names and shapes. ``feeds(seed)``: the
    inputs (default: random, dynamic dims as 1). Returns the context."""
    from onnxprune.selection import Selection

    ctx = Pipeline([Normalize(), Analyze()]).run(model)
    ids = {b.id for b in ctx.analysis.removable_blocks} if blocks is None else set(blocks)
    assert ids, "no removable block"
    zeroed = zeroed_model(ctx.analysis, set(), ids)
    ctx.selection = Selection(blocks=ids)
    Rewrite().run(ctx)
    pruned, original = ctx.pruned, ctx.model
    check_like_input(pruned, original)
    assert [o.name for o in pruned.graph.output] == [o.name for o in original.graph.output]
    zs, ps, os_ = session(zeroed), session(pruned), session(original)
    for seed in seeds:
        given = feeds(seed) if feeds is not None else random_feeds(os_, seed)
        for e, g, r in zip(zs.run(None, given), ps.run(None, given), os_.run(None, given)):
            assert g.shape == r.shape, "output shape changed"
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    assert ctx.report["after"]["params"] < ctx.report["before"]["params"]
    return ctx
