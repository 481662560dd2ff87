"""The pruning plan: frozen data by name, applied to a copy; the run leaves its inputs as they were."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from onnxprune.analysis import analyze_graph
from onnxprune.context import PruneOptions
from onnxprune.passes.builtin import Analyze, Normalize, Score, Select
from onnxprune.passes.normalize import normalize
from onnxprune.passes.rewrite import apply
from onnxprune.pipeline import Pipeline
from onnxprune.search.target_search import Trials

MODELS = Path(__file__).resolve().parent.parent / "models"
#: models whose plans hold every kind of edit the shipped models need: group counts (depthwise
#: convs), Split sizes, Reshape shape entries, shape vectors built by Concat
PLAN_MODELS = ["mobilenetv2_small", "gpt2_dynamo", "llama_dynamo"]


def _exported(graph: gs.Graph) -> bytes:
    return gs.export_onnx(graph, do_type_check=False).SerializeToString()


def _plain(value) -> bool:
    """Plain frozen data: names, numbers, read-only arrays, tuples of them."""
    if isinstance(value, np.ndarray):
        return not value.flags.writeable
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, (str, int, float, bool, type(None)))


def _selected(name: str, ratio: float = 0.5):
    return Pipeline([Normalize(), Analyze(), Score(), Select()]).run(
        onnx.load(MODELS / f"{name}.onnx"), PruneOptions(ratio=ratio, criterion="l1"))


@pytest.mark.parametrize("name", PLAN_MODELS)
def test_the_plan_holds_names_and_read_only_atoms_only(name):
    ctx = _selected(name)
    plan = ctx.analysis.plan
    assert plan.cuts and plan.edits
    for item in (*plan.cuts, *plan.edits):
        for f in dataclasses.fields(item):
            assert _plain(getattr(item, f.name)), f"{type(item).__name__}.{f.name} is not plain data"
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(item, dataclasses.fields(item)[0].name, "x")
    names = {n.name for n in ctx.graph.nodes}
    assert {c.node for c in plan.cuts} <= names
    assert not plan.root.flags.writeable


@pytest.mark.parametrize("name", PLAN_MODELS)
def test_apply_leaves_its_graph_untouched_and_gives_the_same_model_twice(name, monkeypatch):
    ctx = _selected(name)
    before = _exported(ctx.graph)
    first = apply(ctx.analysis.plan, ctx.selection.removed, ctx.graph)
    assert _exported(ctx.graph) == before
    second = apply(ctx.analysis.plan, ctx.selection.removed, ctx.graph)
    assert _exported(first) == _exported(second)
    assert first is not ctx.graph and len(_exported(first)) < len(before)

    # a search trial is one apply of the plan: no rule runs again, and it builds what Rewrite builds
    import onnxprune.analysis.groups as groups

    monkeypatch.setattr(groups, "_run_rule", lambda *a: pytest.fail("a trial re-ran the analysis"))
    pruned, _ = Trials(ctx.graph, ctx.analysis, ctx.opset, ctx.model).build(ctx.selection)
    assert _exported(pruned) == _exported(first)


def test_a_calibrated_run_leaves_the_original_graph_and_the_options_as_they_were():
    model = onnx.load(MODELS / "digits_cnn.onnx")
    options = PruneOptions(ratio=0.5, calibration=str(MODELS / "digits_calib.npz"), calib_samples=64)
    snapshot, model_bytes = dataclasses.asdict(options), model.SerializeToString()
    ctx = Pipeline().run(model, options)
    assert model.SerializeToString() == model_bytes
    assert ctx.report["reconstruction"]["layers"], "nothing was reconstructed"
    assert ctx.graph is not ctx.pruned_graph
    assert _exported(ctx.graph) == _exported(normalize(model))
    assert dataclasses.asdict(options) == snapshot  # criterion and reconstruct resolved in the context's copy
    assert (ctx.options.criterion, ctx.options.reconstruct) == ("obs", "lstsq")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.options.ratio = 0.1

    with pytest.raises(dataclasses.FrozenInstanceError):
        options.calibration = None  # the caller's options are frozen too: reuse means a copy
    ctx = Pipeline().run(model, dataclasses.replace(options, calibration=None))  # reused without calibration
    assert (ctx.options.criterion, ctx.options.reconstruct) == ("l1", "none")
    assert ctx.selection.removed


def test_analysis_of_the_original_graph_after_a_run_gives_the_same_plan():
    ctx = _selected("resnet_small")
    apply(ctx.analysis.plan, ctx.selection.removed, ctx.graph)
    again = analyze_graph(ctx.graph, ctx.opset).plan
    plan = ctx.analysis.plan
    assert [(c.node, c.input_index, c.axis, c.role, c.atoms.tolist()) for c in again.cuts] == \
        [(c.node, c.input_index, c.axis, c.role, c.atoms.tolist()) for c in plan.cuts]
