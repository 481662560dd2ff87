"""``--allocate global``: per-group ratios from measured sensitivities, no more FLOPs than the
uniform ratio leaves; opt-in, and refused without calibration data or with a target."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxprune.errors import BadInputError
from onnxprune.pipeline import prune

MODELS = Path(__file__).resolve().parent.parent / "models"
DIGITS, CALIB = MODELS / "digits_cnn.onnx", str(MODELS / "digits_calib.npz")


def test_same_flops_budget_spent_by_sensitivity():
    uniform = prune(DIGITS, ratio=0.5, calibration=CALIB, reconstruct="none")
    spread = prune(DIGITS, ratio=0.5, calibration=CALIB, reconstruct="none", allocate="global")
    assert spread.report["after"]["flops"] <= uniform.report["after"]["flops"]
    assert spread.report["after"]["flops"] >= 0.8 * uniform.report["after"]["flops"]
    kept = {g: k for g, (k, _) in spread.context.selection.kept.items()}
    assert kept != {g: k for g, (k, _) in uniform.context.selection.kept.items()}
    allocation = spread.report["allocation"]
    assert allocation["mode"] == "global" and set(allocation["counts"]) == {str(g) for g in kept}
    # no group is cut below the lowest kept fraction the sweep measured (25%)
    assert all(k >= 0.25 * total - 1 for k, total in spread.context.selection.kept.values())


def test_default_stays_uniform():
    result = prune(DIGITS, ratio=0.3, calibration=CALIB, reconstruct="none")
    assert "allocation" not in result.report


@pytest.mark.parametrize("kwargs", [{"ratio": 0.3}, {"target_flops": 0.5, "calibration": CALIB}])
def test_refused_without_data_or_with_a_target(kwargs):
    with pytest.raises(BadInputError, match="--allocate global"):
        prune(DIGITS, allocate="global", **kwargs)


def test_flops_counted_at_the_calibration_shapes(tmp_path):
    """A model with dynamic spatial dims is priced at its calibration samples' shapes (as the
    report counts FLOPs), so it gets the allocation its static twin gets."""
    import onnx

    model = onnx.load(DIGITS)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for i, name in ((2, "height"), (3, "width")):
        dims[i].ClearField("dim_value")
        dims[i].dim_param = name
    del model.graph.value_info[:]
    dynamic = tmp_path / "digits_dynamic.onnx"
    onnx.save(model, dynamic)
    static = prune(DIGITS, ratio=0.5, calibration=CALIB, reconstruct="none", allocate="global")
    spread = prune(dynamic, ratio=0.5, calibration=CALIB, reconstruct="none", allocate="global")
    assert spread.report["allocation"]["counts"] == static.report["allocation"]["counts"]
    assert spread.report["after"]["flops"] == static.report["after"]["flops"]


def test_a_group_whose_flops_are_unknown_takes_the_uniform_width(monkeypatch):
    """What the cost model cannot price is not traded: with every layer's shape unknown no
    group saves a counted FLOP, and each keeps the uniform ratio's width."""
    import onnxprune.search.cost as cost
    from onnxprune.passes.builtin import Analyze, Normalize
    from onnxprune.pipeline import Pipeline
    from onnxprune.search import allocate as allocation

    analysis = Pipeline([Normalize(), Analyze()]).run(DIGITS).analysis
    groups = analysis.prunable_groups
    uniform = {g.id: allocation._uniform_keep(g.channels, 0.5) for g in groups}
    # the first group barely minds being cut, the others mind a lot
    curves = {g.id: _Curve(0.01 if g is groups[0] else 1.0) for g in groups}
    priced = allocation.allocate_by_sensitivity(analysis, curves, 0.5)
    assert priced[groups[0].id] < uniform[groups[0].id]
    monkeypatch.setattr(cost, "static_layer_shapes", lambda analysis, input_shapes=None: {})
    assert allocation.allocate_by_sensitivity(analysis, curves, 0.5) == uniform


class _Curve:
    """A sensitivity curve: the error grows with the share cut, times ``scale``."""

    points = (type("Point", (), {"kept": 0.25})(),)  # swept down to a quarter kept

    def __init__(self, scale: float):
        self.scale = scale

    def error_at(self, kept: float) -> float:
        return self.scale * (1.0 - kept)
