"""Real exported architectures (models/, from tools/export_models.py) and the ONNX model zoo's
"light" models shipped inside the onnx package: prune, then compare with the oracle."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_oracle

from onnxprune import Pipeline
from onnxprune.passes.builtin import Analyze, Normalize

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


@pytest.mark.zoo
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


# --- transformers (tools/export_transformers.py): heads and MLP channels --------------------

TRANSFORMERS = ["bert", "vit", "gpt2", "llama"]
EXPORTERS = ["torchscript", "dynamo"]


def _transformer_feeds(model: onnx.ModelProto, seed: int) -> dict:
    """Token ids in the vocabulary, a padding mask, batch 2 and 6 tokens (or 16x16 images)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        if i.name == "pixel_values":
            feeds[i.name] = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
        elif i.name == "input_ids":
            feeds[i.name] = rng.integers(0, 100, (2, 6)).astype(np.int64)
        elif i.name == "attention_mask":
            mask = np.ones((2, 6), np.int64)
            mask[1, -2:] = 0
            feeds[i.name] = mask
    return feeds


def transformer_oracle(name: str, ratio: float = 0.5, criterion: str = "l1"):
    from conftest import prune_with_oracle, session

    model = onnx.load(MODELS / f"{name}.onnx")
    ctx, zeroed = prune_with_oracle(model, ratio=ratio, criterion=criterion)
    onnx.checker.check_model(ctx.pruned, full_check=True)
    zs, ps, os_ = session(zeroed), session(ctx.pruned), session(ctx.model)
    for seed in (0, 1):
        feeds = _transformer_feeds(model, seed)
        expected, got, reference = zs.run(None, feeds)[0], ps.run(None, feeds)[0], os_.run(None, feeds)[0]
        assert got.shape == reference.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
        assert not np.allclose(reference, expected, atol=1e-3)
    return ctx


# Which groups each export prunes: (head groups, MLP channel groups). The residual stream is
# refused everywhere (LayerNorm normalizes over it).
EXPECTED = {
    "bert_torchscript": (2, 2), "bert_dynamo": (2, 2), "vit_torchscript": (2, 2), "vit_dynamo": (2, 2),
    "gpt2_dynamo": (2, 2), "llama_dynamo": (2, 2),
    # GPT-2's Conv1D as TorchScript writes it, x.view(-1, x.size(-1)), reads the width at run time
    # for the tensor's own view: it follows.
    "gpt2_torchscript": (2, 2),
    # LLaMA's repeat_kv reads the K/V head count at run time for its own expand and reshape, and
    # its head merge reshape(b, t, -1) feeds the output projection, which fixes the -1.
    "llama_torchscript": (2, 2),
}
REFUSAL: dict[str, str] = {}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("arch", TRANSFORMERS)
def test_transformer_heads_and_mlp(arch, exporter):
    name = f"{arch}_{exporter}"
    if EXPECTED[name] == (0, 0):
        analysis = Pipeline([Normalize(), Analyze()]).run(onnx.load(MODELS / f"{name}.onnx")).analysis
        assert not analysis.prunable_groups
        ctx = None
    else:
        ctx = transformer_oracle(name)
        analysis = ctx.analysis
    prunable = analysis.prunable_groups
    heads = [g for g in prunable if g.kind == "heads"]
    channels = [g for g in prunable if g.kind == "channels"]
    assert (len(heads), len(channels)) == EXPECTED[name], [g.reasons for g in analysis.groups]
    if ctx is not None:
        for g in prunable:
            assert ctx.selection.kept[g.id][0] < g.channels
    for g in analysis.groups:
        if not g.prunable and g.channels > 1:
            assert g.reasons
    if name in REFUSAL:
        assert any(REFUSAL[name] in r for g in analysis.groups for r in g.reasons)
