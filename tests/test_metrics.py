"""FLOPs are counted the same way before and after pruning, at the input shapes the summary names."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
import pytest

import onnxprune
from onnxprune.metrics import count_flops, count_flops_at
from onnxprune.normalize import normalize

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize("name", ["bert_dynamo", "gpt2_dynamo", "llama_dynamo", "digits_cnn"])
def test_nothing_pruned_leaves_flops_and_params_unchanged(name):
    result = onnxprune.prune(str(MODELS / f"{name}.onnx"), ratio=0.0)
    assert result.report["after"] == result.report["before"]


def test_input_shape_changes_the_count_of_a_dynamic_model():
    path = str(MODELS / "bert_dynamo.onnx")
    short = onnxprune.prune(path, ratio=0.0, input_shapes={"input_ids": [1, 8]}).report
    long = onnxprune.prune(path, ratio=0.0, input_shapes={"input_ids": [1, 32]}).report
    assert long["before"]["flops"] > 3 * short["before"]["flops"] > 0
    assert long["flops_at"]["shapes"] == {"input_ids": [1, 32], "attention_mask": [1, 32]}  # "sequence" shared
    assert long["flops_at"]["source"] == "input-shape" and not long["flops_at"]["dynamic_as_one"]


def test_counts_ignore_the_shapes_a_file_declares():
    """Stale shapes on the tensors (as a file's value_info can carry) do not change the count."""
    model = onnx.load(MODELS / "digits_cnn.onnx")
    graph = normalize(model)
    honest = count_flops_at(graph, {"input": [1, 1, 8, 8]}).flops
    ends = {t.name for t in graph.inputs + graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.shape and tensor.name not in ends:
            tensor.shape = [7] * len(tensor.shape)
    assert count_flops(graph) != honest  # the carried shapes did change
    assert count_flops_at(graph, {"input": [1, 1, 8, 8]}).flops == honest


def test_summary_names_the_shapes_counted_at(tmp_path):
    from onnxprune.report.summary import prune_summary

    result = onnxprune.prune(str(MODELS / "digits_cnn.onnx"), ratio=0.3, calibration=str(MODELS / "digits_calib.npz"))
    assert "FLOPs counted at input 1x1x8x8 (a calibration sample)" in prune_summary(result.context)
