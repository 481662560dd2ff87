"""Real exported architectures (models/, from tools/export_models.py) and the ONNX model zoo's
"light" models shipped inside the onnx package: prune, then compare with the oracle."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from conftest import assert_oracle

MODELS = Path(__file__).resolve().parent.parent / "models"
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"

EXPORTED = ["resnet_small", "mobilenetv2_small", "densenet_block", "yolov8_block", "se_block", "mlp"]


@pytest.mark.parametrize("name", EXPORTED)
@pytest.mark.parametrize("ratio,criterion", [(0.3, "l1"), (0.5, "l2"), (0.5, "bn")])
def test_exported_models(name, ratio, criterion):
    ctx = assert_oracle(onnx.load(MODELS / f"{name}.onnx"), ratio=ratio, criterion=criterion)
    assert ctx.report["after"]["flops"] < ctx.report["before"]["flops"]


def test_mobilenet_depthwise_and_residual_groups_are_prunable():
    ctx = assert_oracle(onnx.load(MODELS / "mobilenetv2_small.onnx"), ratio=0.5)
    blocked = [g for g in ctx.analysis.groups if not g.prunable]
    # only the classifier's output channels, which reach the graph output
    assert len(blocked) == 1 and "graph output" in blocked[0].reasons[0]


def test_yolo_block_refuses_runtime_chunk_but_prunes_the_rest():
    ctx = assert_oracle(onnx.load(MODELS / "yolov8_block.onnx"), ratio=0.5)
    reasons = [r for g in ctx.analysis.groups for r in g.reasons]
    assert any("Shape" in r or "run time" in r for r in reasons)
    assert len(ctx.analysis.prunable_groups) >= 10


LIGHT_MODELS = sorted(p.stem for p in LIGHT.glob("light_*.onnx")) if LIGHT.exists() else []


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_model_zoo_light_models(name):
    if name == "light_vgg19" and not os.environ.get("ONNXPRUNE_SLOW"):
        pytest.skip("vgg19 folds to 550 MB of weights; set ONNXPRUNE_SLOW=1 or run `pytest -m slow`")
    ctx = assert_oracle(onnx.load(LIGHT / f"{name}.onnx"), ratio=0.3, seeds=(0,),
                        expect_pruned=name != "light_shufflenet")
    for group in ctx.analysis.groups:
        if not group.prunable and group.channels > 1:
            assert group.reasons, f"group {group.name} refused without a reason"


@pytest.mark.slow
def test_model_zoo_vgg19():
    assert_oracle(onnx.load(LIGHT / "light_vgg19.onnx"), ratio=0.3, seeds=(0,))
