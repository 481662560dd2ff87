"""Never make a model bigger: a constant several nodes read is not un-shared into more weight
than the pruning removes, identical cuts share one copy, and a bigger model is never written."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import assert_oracle
from graphs import GraphBuilder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxprune.context import PruneOptions
from onnxprune.errors import RewriteError
from onnxprune.passes.builtin import Analyze, Normalize, Rewrite, Score, Select
from onnxprune.rewrite import check_not_bigger
from onnxprune.pipeline import Pipeline


def _shared_weight_model(readers: int, prunable_readers: int, width: int = 16, through: str | None = None):
    """``readers`` 1x1 convs read one weight, each through its own ``through`` node if given
    (Identity, as the PyTorch exporter writes shared weights; a Reshape with its own shape
    vector); the first ``prunable_readers`` feed a conv (prunable), the others reach graph
    outputs (kept whole)."""
    b = GraphBuilder(seed=3)
    x = b.input([1, 8, 6, 6])
    h = b.act(b.conv(x, width, k=3))
    shared = b.weight(width, width, 1, 1)
    for i in range(readers):
        w = shared
        if through == "Identity":
            w = b.node("Identity", [shared], [width, width, 1, 1])
        elif through == "Reshape":
            w = b.node("Reshape", [shared, b.const(np.array([width, width, 1, 1], np.int64))], [width, width, 1, 1])
        y = b.node("Conv", [h, w], [1, width, 6, 6], kernel_shape=[1, 1])
        if i < prunable_readers:
            y = b.conv(b.act(y), 4, k=1)
        b.output(y)
    return b.model()


def _pipeline(model, ratio=0.3):
    ctx = Pipeline([Normalize(), Analyze(), Score(), Select()]).run(model, PruneOptions(ratio=ratio, criterion="l1"))
    Rewrite().run(ctx)
    return ctx


@pytest.mark.parametrize("through", [None, "Identity", "Reshape"])
def test_a_group_that_would_un_share_a_weight_is_kept_whole_with_the_reason(through):
    model = _shared_weight_model(readers=9, prunable_readers=1, through=through)
    ctx = _pipeline(model)
    assert ctx.report["after"]["params"] <= ctx.report["before"]["params"]
    stored = sum(onnx.numpy_helper.to_array(i).size for i in model.graph.initializer if i.data_type == 1)
    assert ctx.report["before"]["params"] == stored  # folding the Identity or Reshape nodes copies nothing
    whole = [g for g in ctx.analysis.groups if any("un-share constant" in r for r in g.reasons)]
    assert len(whole) == 1, [g.reasons for g in ctx.analysis.groups]
    assert "kept whole" in whole[0].reasons[0]
    # the first conv's group is still pruned: the guard keeps whole only what grows
    assert ctx.selection.removed
    assert ctx.report["after"]["params"] < ctx.report["before"]["params"]


def test_a_weight_that_is_also_a_graph_output_is_not_copied_for_a_small_gain():
    """The graph output keeps the whole weight, so slicing it for its conv would store a copy."""
    from onnx import TensorProto, helper

    b = GraphBuilder(seed=1)
    x = b.input([1, 4, 6, 6])
    w = b.weight(8, 4, 3, 3)
    y = b.node("Conv", [x, w], [1, 8, 6, 6], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    b.output(b.conv(b.act(y), 4, k=1))
    b.outputs.append(helper.make_tensor_value_info(w, TensorProto.FLOAT, [8, 4, 3, 3]))
    ctx = assert_oracle(b.model(), ratio=0.5, expect_pruned=False)
    assert not ctx.selection.removed
    assert any("un-share constant" in r for g in ctx.analysis.groups for r in g.reasons)
    assert {i.name: list(i.dims) for i in ctx.pruned.graph.initializer}[w] == [8, 4, 3, 3]


def test_analyze_lists_the_constants_pruning_can_un_share(tmp_path):
    import onnx
    from click.testing import CliRunner

    from onnxprune.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(_shared_weight_model(readers=9, prunable_readers=1), path)
    out = CliRunner().invoke(main, ["analyze", str(path)]).output
    assert "constants that pruning can un-share (1;" in out and "read 9 times; groups 0, 1, 2" in out and "(+2)" in out


def test_readers_cut_alike_share_one_copy():
    """Two readers whose channels are tied (Add) are cut alike: one sliced copy, not two."""
    b = GraphBuilder(seed=4)
    x = b.input([1, 8, 6, 6])
    h = b.act(b.conv(x, 12, k=3))
    shared = b.weight(12, 12, 1, 1)
    y1 = b.node("Conv", [h, shared], [1, 12, 6, 6], kernel_shape=[1, 1])
    y2 = b.node("Conv", [b.act(h), shared], [1, 12, 6, 6], kernel_shape=[1, 1])
    b.output(b.conv(b.act(b.add(y1, y2)), 4, k=1))
    ctx = assert_oracle(b.model(), ratio=0.5)
    sliced = [i.name for i in ctx.pruned.graph.initializer if list(i.dims) == [6, 6, 1, 1]]
    assert len(sliced) == 1, sliced


def test_the_oracle_holds_where_a_shared_weight_is_un_shared_for_a_gain():
    """Where the pruning frees more than the copy costs, the weight is un-shared and still correct."""
    b = GraphBuilder(seed=5)
    x = b.input([1, 8, 6, 6])
    h = b.act(b.conv(x, 8, k=3))
    shared = b.weight(8, 8, 1, 1)
    y1 = b.node("Conv", [h, shared], [1, 8, 6, 6], kernel_shape=[1, 1])
    y2 = b.node("Conv", [h, shared], [1, 8, 6, 6], kernel_shape=[1, 1])
    b.output(b.conv(b.act(y1), 64, k=3))  # y1's group frees 64 x 3 x 3 per channel
    b.output(y2)
    ctx = assert_oracle(b.model(), ratio=0.5)
    assert ctx.report["after"]["params"] < ctx.report["before"]["params"]


def test_a_bigger_model_is_refused():
    check_not_bigger(100, 100)
    with pytest.raises(RewriteError, match="more parameters than its input"):
        check_not_bigger(100, 101)


def test_reconstruction_that_would_copy_a_shared_weight_is_skipped():
    """Nine convs read one weight; refitting each of them would store nine copies of it. The
    refit is skipped with a warning, and the model written is the rewrite's (smaller) one."""
    from onnxprune.pipeline import prune

    b = GraphBuilder(seed=6)
    x = b.input([1, 4, 6, 6])
    h = b.act(b.conv(x, 32, k=1, bias=False))
    shared = b.weight(32, 32, 1, 1)
    for _ in range(9):
        b.output(b.node("Conv", [h, shared], [1, 32, 6, 6], kernel_shape=[1, 1]))
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((4, 4, 6, 6)).astype(np.float32)} for _ in range(4)]
    result = prune(b.model(), ratio=0.25, calibration=calib, reconstruct="lstsq")
    report = result.report
    assert report["after"]["params"] < report["before"]["params"]
    assert any("reconstruction skipped" in w for w in result.context.warnings)
    assert "reconstruction" not in report


@st.composite
def _shared_weight_cases(draw):
    """Random stacks around one or two blocks of convs that share a weight (the fuzz generator's blocks)."""
    from test_fuzz import OPSETS, FuzzBuilder, FuzzCase, _Gen

    opset = draw(st.sampled_from(OPSETS))
    b = FuzzBuilder(seed=draw(st.integers(0, 2**16)), opset=opset)
    gen = _Gen(draw, b)
    x = gen.conv_unit(b.input([1, draw(st.integers(1, 4)), 6, 6]))
    for _ in range(draw(st.integers(1, 2))):
        x = gen.shared_weights(x)
        if draw(st.booleans()):
            x = gen.conv_block(x)
    b.output(gen.head(x) if draw(st.booleans()) else b.conv(x, 2, k=1))
    return FuzzCase(b.model(), b.code(), opset), draw(st.sampled_from([0.05, 0.2, 0.4, 0.7]))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(_shared_weight_cases())
def test_random_shared_weights_never_grow_the_model(example):
    """The oracle holds and params after <= before (``check_case`` asserts both) wherever weights are shared."""
    from test_fuzz import check_case

    case, ratio = example
    check_case(case, ratio, "l1", 1)
