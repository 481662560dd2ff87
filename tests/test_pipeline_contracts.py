"""Passes declare what they read and fill; a pipeline missing a prerequisite fails before it runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from onnxprune import (Analyze, BadInputError, Benchmark, Calibrate, Normalize, Pass, PassError, Pipeline,
                       PipelineError, PruneOptions, PruningContext, Reconstruct, Rewrite, Score, Search, Select,
                       Verify)
from onnxprune.passes.builtin import default_passes
from onnxprune.search.targets import Target

MODEL = Path(__file__).resolve().parent.parent / "models" / "digits_cnn.onnx"
BUILTIN = [Normalize(), Analyze(), Calibrate(), Score(), Select(), Search(), Rewrite(), Reconstruct(), Verify(),
           Benchmark()]


@pytest.mark.parametrize("passes,name,missing", [
    ([Normalize(), Analyze(), Rewrite()], "rewrite", ("selection",)),
    ([Normalize(), Analyze(), Select(), Verify()], "select", ("scores",)),
    ([Analyze()], "analyze", ("graph", "opset")),
    ([Normalize(), Analyze(), Score(), Select(), Verify()], "verify", ("pruned",)),
])
def test_a_missing_prerequisite_is_named_before_anything_runs(passes, name, missing, tmp_path):
    with pytest.raises(PipelineError) as info:
        Pipeline(passes).run(tmp_path / "not-even-a-file.onnx")  # not loaded: the check comes first
    assert (info.value.pass_name, info.value.missing) == (name, missing)
    assert f"pass '{name}'" in str(info.value) and all(f"'{m}'" in str(info.value) for m in missing)


def test_a_pass_added_after_construction_is_checked_too():
    pipeline = Pipeline([Normalize(), Analyze()])
    pipeline.passes.append(Rewrite())
    with pytest.raises(PipelineError, match="'rewrite' needs 'selection'"):
        pipeline.run(str(MODEL))


@pytest.mark.parametrize("target", [None, Target("flops", 0.5)])
def test_the_default_pipelines_satisfy_their_own_contracts(target):
    Pipeline(default_passes(PruneOptions(target=target, benchmark=True)))


def test_declared_fields_are_context_fields():
    fields = {f.name for f in dataclasses.fields(PruningContext)}
    for p in BUILTIN:
        assert set(p.requires) | set(p.provides) <= fields, p


def test_a_bug_inside_a_pass_is_a_pass_error_naming_it_with_the_cause_kept():
    class Broken(Pass):
        name = "broken"
        requires = ("analysis",)

        def run(self, ctx):
            return {}[0]

    with pytest.raises(PassError, match="internal error in pass 'broken': KeyError") as info:
        Pipeline([Normalize(), Analyze(), Broken()]).run(str(MODEL))
    assert info.value.pass_name == "broken" and isinstance(info.value.__cause__, KeyError)


def test_an_input_error_inside_a_pass_keeps_its_type_and_says_which_pass():
    bad = [{"nope": np.zeros((1, 1, 8, 8), np.float32)}]  # options are fine; the data is not
    with pytest.raises(BadInputError, match="unknown input name") as info:
        Pipeline([Normalize(), Analyze(), Calibrate()]).run(str(MODEL), PruneOptions(calibration=bad))
    assert info.value.pass_name == "calibrate"


def test_a_bad_option_is_refused_before_any_pass_runs():
    with pytest.raises(BadInputError, match="ratio must be in") as info:
        Pipeline([Normalize(), Analyze(), Score(), Select()]).run(str(MODEL), PruneOptions(ratio=1.5))
    assert getattr(info.value, "pass_name", None) is None


def test_a_pass_of_ones_own_without_declarations_or_with_a_lone_name_is_understood():
    class Undeclared:  # duck-typed, as docs/python-api.md shows: needs nothing, provides nothing
        name = "undeclared"

        def run(self, ctx):
            pass

    class Scorer(Pass):
        name = "scorer"
        requires, provides = "analysis", "scores"

        def run(self, ctx):
            ctx.scores = {g.id: np.ones(len(g.classes)) for g in ctx.analysis.groups}

    ctx = Pipeline([Normalize(), Undeclared(), Analyze(), Scorer(), Select()]).run(str(MODEL))
    assert ctx.selection is not None
    with pytest.raises(PipelineError, match="'select' needs 'scores'"):
        Pipeline([Normalize(), Analyze(), Undeclared(), Select()])
