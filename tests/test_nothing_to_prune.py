"""Nothing prunable, for any reason: exit 0, the output is a byte copy of the input, and both
``prune`` and ``analyze`` say why (one explanation) and list the weights no group covers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from onnxprune.cli import main


def float8_model() -> onnx.ModelProto:
    """Weights quantized to float8 (DequantizeLinear of FLOAT8E4M3FN), a form not pruned: only
    8- to 32-bit integer weights are. The output's rank is known only at run time (Unsqueeze by
    an input), so ONNX's full check, which the input does not pass either, fails on any re-export."""
    x = helper.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])
    axes = helper.make_tensor_value_info("axes", T.INT64, [1])
    y = helper.make_tensor_value_info("y", T.FLOAT, None)
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("w1", T.FLOAT8E4M3FN, [8, 3, 3, 3], rng.standard_normal(216).tolist()),
             helper.make_tensor("w2", T.FLOAT8E4M3FN, [4, 8, 1, 1], rng.standard_normal(32).tolist()),
             numpy_helper.from_array(np.array(0.01, np.float32), "s")]
    nodes = [helper.make_node("DequantizeLinear", ["w1", "s"], ["w1f"], name="dq1"),
             helper.make_node("Conv", ["x", "w1f"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("DequantizeLinear", ["w2", "s"], ["w2f"], name="dq2"),
             helper.make_node("Conv", ["r", "w2f"], ["y0"], name="conv2"),
             helper.make_node("Unsqueeze", ["y0", "axes"], ["y"], name="unsqueeze")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x, axes], [y], inits),
                          opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    return m


def if_model() -> onnx.ModelProto:
    """The whole network inside the branches of an If."""
    x = helper.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8])
    cond = helper.make_tensor_value_info("cond", T.BOOL, [])
    rng = np.random.default_rng(1)

    def branch(tag: str) -> onnx.GraphProto:
        w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), f"{tag}_w1")
        w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), f"{tag}_w2")
        nodes = [helper.make_node("Conv", ["x", f"{tag}_w1"], [f"{tag}_h"], name=f"{tag}_conv1", pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", [f"{tag}_h"], [f"{tag}_r"], name=f"{tag}_relu"),
                 helper.make_node("Conv", [f"{tag}_r", f"{tag}_w2"], [f"{tag}_y"], name=f"{tag}_conv2")]
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"{tag}_y", T.FLOAT, [1, 4, 8, 8])],
                                 [w1, w2])

    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=branch("then"),
                            else_branch=branch("else"))
    graph = helper.make_graph([node], "g", [x, cond], [helper.make_tensor_value_info("y", T.FLOAT, [1, 4, 8, 8])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


CASES = {"float8": (float8_model, "quantized (DequantizeLinear of float8_e4m3fn), a form that is not pruned",
                    "w1 (float8_e4m3fn 8x3x3x3"),
         "if": (if_model, "inside the subgraphs of If 'branch'", None)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_nothing_prunable_is_exit_0_and_a_byte_copy(tmp_path: Path, name: str):
    build, why, _ = CASES[name]
    source, out = tmp_path / f"{name}.onnx", tmp_path / "out.onnx"
    onnx.save(build(), source)
    res = CliRunner().invoke(main, [str(source), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "nothing to prune: " in res.output and why in res.output
    assert out.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("name", sorted(CASES))
def test_analyze_says_why_there_are_no_groups(tmp_path: Path, name: str):
    build, why, weight = CASES[name]
    source = tmp_path / f"{name}.onnx"
    onnx.save(build(), source)
    res = CliRunner().invoke(main, ["analyze", str(source)])
    assert res.exit_code == 0, res.output
    assert "0 channel groups" in res.output and "nothing to prune: " in res.output and why in res.output
    if weight:
        assert "weights no group covers (2" in res.output and weight in res.output


def test_analyze_lists_a_few_uncovered_weights_and_all_with_verbose(tmp_path: Path):
    """Eight float8-quantized layers: five shown and a count; -v shows all eight."""
    x = helper.make_tensor_value_info("x", T.FLOAT, [1, 8])
    nodes, inits, h = [], [], "x"
    for i in range(8):
        inits += [helper.make_tensor(f"wq{i}", T.FLOAT8E4M3FN, [8, 8], np.ones(64).tolist()),
                  numpy_helper.from_array(np.array(0.1, np.float32), f"s{i}")]
        nodes += [helper.make_node("DequantizeLinear", [f"wq{i}", f"s{i}"], [f"w{i}"], name=f"dq{i}"),
                  helper.make_node("MatMul", [h, f"w{i}"], [f"h{i}"], name=f"mm{i}")]
        h = f"h{i}"
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info(h, T.FLOAT, [1, 8])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    source = tmp_path / "q.onnx"
    onnx.save(m, source)
    short = CliRunner().invoke(main, ["analyze", str(source)]).output
    assert "weights no group covers (8" in short and "... and 3 more (-v lists all)" in short
    assert "quantized (DequantizeLinear of float8_e4m3fn)" in short
    full = CliRunner().invoke(main, ["analyze", "-v", str(source)]).output
    assert all(f"wq{i} (float8_e4m3fn 8x8" in full for i in range(8)) and "more (-v" not in full


def test_a_model_pruned_to_nothing_at_these_settings_is_a_byte_copy(tmp_path: Path):
    source, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    source.write_bytes((Path(__file__).resolve().parent.parent / "models" / "resnet_small.onnx").read_bytes())
    res = CliRunner().invoke(main, [str(source), "-o", str(out), "--ratio", "0"])
    assert res.exit_code == 0, res.output
    assert "the output is the same model" in res.output
    assert out.read_bytes() == source.read_bytes()


def test_a_pruned_model_is_validated_no_stricter_than_its_input(tmp_path: Path):
    """The input fails ONNX's full check (an output of run-time rank); its float branch is pruned,
    and the output is checked the way the input passes: written, and it runs."""
    from conftest import session

    b_nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
               helper.make_node("Relu", ["h"], ["r"], name="relu"),
               helper.make_node("Conv", ["r", "w2"], ["y0"], name="conv2"),
               helper.make_node("Unsqueeze", ["y0", "axes"], ["y"], name="unsqueeze")]
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")]
    graph = helper.make_graph(b_nodes, "g", [helper.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8]),
                                             helper.make_tensor_value_info("axes", T.INT64, [1])],
                              [helper.make_tensor_value_info("y", T.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    with pytest.raises(Exception, match="shape"):
        onnx.checker.check_model(model, full_check=True)
    source, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, source)
    res = CliRunner().invoke(main, [str(source), "-o", str(out), "--ratio", "0.5"])
    assert res.exit_code == 0, res.output
    pruned = onnx.load(out)
    assert {i.name: list(i.dims) for i in pruned.graph.initializer}["w1"] == [4, 3, 3, 3]
    feeds = {"x": np.ones((1, 3, 8, 8), np.float32), "axes": np.array([0], np.int64)}
    assert session(pruned).run(None, feeds)[0].shape == (1, 1, 4, 8, 8)
