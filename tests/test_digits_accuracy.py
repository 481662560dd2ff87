"""Accuracy kept on real data: a small CNN trained on scikit-learn's digits (tools/train_digits_cnn.py),
evaluated on its held-out split, pruned with calibration on training images only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import session

from onnxprune import prune

MODELS = Path(__file__).resolve().parent.parent / "models"
MODEL = MODELS / "digits_cnn.onnx"
CALIB = MODELS / "digits_calib.npz"


def accuracy(model) -> float:
    data = np.load(MODELS / "digits_eval.npz")
    logits = session(model).run(None, {"input": data["input"]})[0]
    return float((logits.argmax(1) == data["label"]).mean())


@pytest.fixture(scope="module")
def baseline() -> float:
    import onnx

    return accuracy(onnx.load(MODEL))


def test_baseline_is_a_real_classifier(baseline):
    assert baseline > 0.95


@pytest.mark.parametrize("ratio,floor", [(0.3, 0.93), (0.5, 0.87)])
def test_reconstruction_keeps_accuracy(baseline, ratio, floor):
    acc = {mode: accuracy(prune(MODEL, ratio=ratio, criterion="fluctuation", calibration=CALIB,
                                reconstruct=mode).model)
           for mode in ("none", "bias", "lstsq")}
    assert acc["lstsq"] >= floor, acc
    assert acc["lstsq"] > acc["bias"] > acc["none"], acc
    assert acc["lstsq"] <= baseline + 0.01


def test_weight_only_pruning_also_gains_from_reconstruction():
    plain = accuracy(prune(MODEL, ratio=0.3, criterion="l1").model)
    repaired = accuracy(prune(MODEL, ratio=0.3, criterion="l1", calibration=CALIB).model)
    assert repaired > plain + 0.3


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_obs_ranks_better_for_the_refit_than_fluctuation(baseline, ratio):
    """The default criterion with calibration: chosen for what the least-squares refit leaves."""
    acc = {criterion: accuracy(prune(MODEL, ratio=ratio, criterion=criterion, calibration=CALIB,
                                     reconstruct="lstsq").model)
           for criterion in ("fluctuation", "obs")}
    assert acc["obs"] > acc["fluctuation"], acc
    assert acc["obs"] >= {0.3: 0.95, 0.5: 0.92}[ratio], acc
