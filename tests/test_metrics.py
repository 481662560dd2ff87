"""FLOPs are counted the same way before and after pruning, at the input shapes the summary names."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
import pytest

import onnxprune
from onnxprune.metrics import count_flops, count_flops_at
from onnxprune.passes.normalize import normalize

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


def _layer(op: str, x: list[int], w: list[int], **attrs) -> gs.Graph:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    init = numpy_helper.from_array(np.ones(w, np.float32), "w")
    node = helper.make_node(op, ["x", "w"], ["y"], name="layer", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [init])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return gs.import_onnx(model)


@pytest.mark.parametrize("op, x, w, attrs", [
    ("Conv", [2, 8, 9, 9], [6, 4, 3, 3], {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("ConvTranspose", [1, 4, 5, 5], [4, 3, 2, 2], {"strides": [2, 2]}),
    ("Gemm", [3, 5], [7, 5], {"transB": 1}),
    ("Gemm", [5, 3], [5, 7], {"transA": 1}),
    ("MatMul", [2, 3, 5], [5, 7], {}),
])
def test_probes_and_metrics_count_a_layer_with_one_formula(op, x, w, attrs):
    """The search's probe of a layer, as it is and resized, costs what the metrics count for it."""
    from onnxprune.metrics import node_flops
    from onnxprune.ops.probe import base_spec, resized

    graph = _layer(op, x, w, **attrs)
    node = graph.nodes[0]
    y = [int(d) for d in node.outputs[0].shape]
    spec = base_spec(node, x, y)
    assert spec.flops == node_flops(node) > 0
    smaller = list(w)
    smaller[0] -= 2 if op == "Conv" else 1  # Conv: one whole conv group of outputs
    narrow = resized(spec, smaller)
    assert narrow.flops == node_flops(_layer(op, narrow.x_shape, smaller, **narrow.attrs).nodes[0]) < spec.flops
