"""Opsets 22 and 23, and the default-domain ops ONNX Runtime defines beyond ONNX (the GenAI model
builder's SimplifiedLayerNormalization): they load, shapes are inferred through them, and the
layers after them prune (the oracle holds)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import prune_with_oracle, random_feeds, session
from test_cli import run_cli


def rms_mlp(opset: int, norm: str = "SimplifiedLayerNormalization") -> onnx.ModelProto:
    """x -> RMS norm (default domain, ONNX Runtime's schema) -> MatMul -> Relu -> MatMul -> + x."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "W2"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), "g")]
    nodes = [helper.make_node(norm, ["x", "g"], ["n"], axis=-1, epsilon=1e-5, name="norm"),
             helper.make_node("MatMul", ["n", "W1"], ["a"], name="up"),
             helper.make_node("Relu", ["a"], ["b"], name="act"),
             helper.make_node("MatMul", ["b", "W2"], ["c"], name="down"),
             helper.make_node("Add", ["x", "c"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "rms_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


@pytest.mark.parametrize("opset", [17, 21, 22, 23])
def test_layers_after_an_onnxruntime_default_domain_op_prune(opset):
    model = rms_mlp(opset)
    ctx, zeroed = prune_with_oracle(model, ratio=0.5)
    assert ctx.selection.removed, "the MLP behind SimplifiedLayerNormalization was not pruned"
    pruned, original = ctx.pruned, ctx.model
    zs, ps, os_ = session(zeroed), session(pruned), session(original)
    for seed in (0, 1):
        feeds = random_feeds(os_, seed)
        np.testing.assert_allclose(ps.run(None, feeds)[0], zs.run(None, feeds)[0], rtol=1e-4, atol=1e-5)
    assert ctx.report["before"]["flops"] > 0  # counted through the op ONNX's inference does not know


def test_onnxruntime_default_domain_op_through_the_cli(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(rms_mlp(22), src)
    before = src.read_bytes()
    res = run_cli(str(src), "--ratio", "0.5", "-o", str(tmp_path / "out.onnx"))
    assert res.returncode == 0, res.stderr
    assert src.read_bytes() == before
    out = onnx.load(tmp_path / "out.onnx")
    assert numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "W1")).shape == (16, 16)


def test_an_op_neither_onnx_nor_onnxruntime_defines_is_still_refused(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(rms_mlp(22, norm="SimplifiedLayerNormalisation"), src)
    res = run_cli(str(src), "--ratio", "0.5", "-o", str(tmp_path / "out.onnx"))
    assert res.returncode == 2 and "has no operator SimplifiedLayerNormalisation" in res.stderr
    assert not (tmp_path / "out.onnx").exists()
