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
