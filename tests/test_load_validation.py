"""Inputs that would make the run (or ONNX Runtime, later) fail are refused when read: exit 2,
one line naming the tensor, field or input, no traceback, never an internal error."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import run_cli


def _mlp(x_shape=(1, 8)) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [x_shape[0], 4])
    inits = [numpy_helper.from_array(np.ones((8, 16), np.float32), "w1"),
             numpy_helper.from_array(np.ones((16, 4), np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])


def _conv(x_shape=(1, 3, 32, 32)) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [x_shape[0], 4, x_shape[2] - 2, x_shape[3] - 2])
    inits = [numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w1"),
             numpy_helper.from_array(np.ones((4, 8, 1, 1), np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="c1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])


def _edit(edit: Callable[[onnx.ModelProto], None], base=_mlp) -> Callable[[], onnx.ModelProto]:
    def make() -> onnx.ModelProto:
        model = base()
        edit(model)
        return model
    return make


def _recursive(model: onnx.ModelProto, mutual: bool) -> None:
    imports = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    model.opset_import.append(helper.make_opsetid("local", 1))
    callee = "G" if mutual else "F"
    model.functions.append(helper.make_function("local", "F", ["a"], ["b"],
                                                [helper.make_node(callee, ["a"], ["b"], domain="local")], imports))
    if mutual:
        model.functions.append(helper.make_function("local", "G", ["a"], ["b"],
                                                    [helper.make_node("F", ["a"], ["b"], domain="local")], imports))
    model.graph.node.insert(1, helper.make_node("F", ["h"], ["h2"], domain="local", name="f"))
    model.graph.node[2].input[0] = "h2"


def _set(obj, **fields):
    for k, v in fields.items():
        setattr(obj, k, v)


MODELS = {  # name: (make the model, needle in the message)
    "raw_data too short": (_edit(lambda m: _set(m.graph.initializer[0], raw_data=m.graph.initializer[0].raw_data[:-4])),
                           "tensor 'w1' has 508 bytes of raw_data, its dims [8, 16] and type FLOAT need 512"),
    "raw_data too long": (_edit(lambda m: _set(m.graph.initializer[1], raw_data=m.graph.initializer[1].raw_data * 2)),
                          "tensor 'w2' has 512 bytes of raw_data"),
    "typed data too short": (_edit(lambda m: m.graph.initializer[1].CopyFrom(
        TensorProto(name="w2", data_type=TensorProto.FLOAT, dims=[16, 4], float_data=[1.0] * 60))),
        "tensor 'w2' holds 60 values in float_data, its dims [16, 4] and type FLOAT need 64"),
    "negative dim": (_edit(lambda m: m.graph.initializer[0].dims.__setitem__(0, -8)),
                     "tensor 'w1' has a negative dimension [-8, 16]"),
    "unknown tensor type": (_edit(lambda m: _set(m.graph.initializer[1], data_type=99)),
                            "tensor 'w2' has unknown data type 99"),
    "unknown input type": (_edit(lambda m: _set(m.graph.input[0].type.tensor_type, elem_type=99)),
                           "input 'x' has unknown data type 99"),
    "unknown type in a Constant": (_edit(lambda m: m.graph.node.insert(0, helper.make_node(
        "Constant", [], ["c"], value=TensorProto(name="c", data_type=77, dims=[1])))), "tensor 'c' has unknown data type 77"),
    "default domain twice": (_edit(lambda m: m.opset_import.append(helper.make_opsetid("ai.onnx", 13))),
                             "imports domain 'ai.onnx' more than once"),
    "custom domain twice": (_edit(lambda m: m.opset_import.extend([helper.make_opsetid("com.x", 1)] * 2)),
                            "imports domain 'com.x' more than once"),
    "no graph outputs": (_edit(lambda m: m.graph.ClearField("output")), "the graph has no outputs"),
    "cycle": (_edit(lambda m: m.graph.node[0].input.__setitem__(0, "y")), "the graph has a cycle (mm1 <- mm2 <- relu"),
    "tensor produced twice": (_edit(lambda m: m.graph.node[1].output.__setitem__(0, "h")), "tensor 'h' is produced twice"),
    "tensor read but never defined": (_edit(lambda m: m.graph.node[1].input.__setitem__(0, "nope")),
                                      "node 'relu' reads tensor 'nope', which no input, initializer or node defines"),
    "graph output never produced": (_edit(lambda m: _set(m.graph.output[0], name="z")),
                                    "graph output 'z' is not produced by any node"),
    "initializer twice": (_edit(lambda m: m.graph.initializer.append(m.graph.initializer[1])),
                          "initializer 'w2' is declared twice"),
    "graph input twice": (_edit(lambda m: m.graph.input.append(m.graph.input[0])), "graph input 'x' is declared twice"),
    "ir_version too new": (_edit(lambda m: _set(m, ir_version=99)), "ir_version 99 is newer than this onnx reads"),
    "attribute the operator does not have": (_edit(lambda m: m.graph.node[1].attribute.append(
        helper.make_attribute("alpha", 1.0))), "node 'relu' (Relu): Unrecognized attribute: alpha"),
    "attribute of the wrong type": (_edit(lambda m: m.graph.node.insert(0, helper.make_node(
        "Conv", ["x", "w1"], ["q"], name="conv", strides=[1.0]))), "node 'conv' (Conv): Mismatched attribute type"),
    "cast to an unknown type": (_edit(lambda m: (m.graph.node.insert(2, helper.make_node("Cast", ["r"], ["r2"], to=99)),
                                                 m.graph.node[3].input.__setitem__(0, "r2"))),
                                "type error: (op_type:Cast): [TypeInferenceError] Attribute to does not specify"),
    "output declared with another type": (_edit(lambda m: _set(m.graph.output[0].type.tensor_type, elem_type=7)),
                                          "Inferred elem type differs from existing elem type"),
    "recursive function": (_edit(lambda m: _recursive(m, mutual=False)), "function calls itself (local:F -> local:F)"),
    "mutually recursive functions": (_edit(lambda m: _recursive(m, mutual=True)),
                                     "function calls itself (local:F -> local:G -> local:F)"),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_malformed_models_are_refused_at_load(tmp_path: Path, case: str):
    make, needle = MODELS[case]
    path = tmp_path / "bad.onnx"
    onnx.save(make(), path)
    for args in ([str(path), "-o", str(tmp_path / "out.onnx")], ["analyze", str(path)]):
        _refused(run_cli(*args), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def _refused(res, needle: str) -> None:
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr


def _png(path: Path, side: int) -> None:
    """A PNG header claiming side x side pixels, a few bytes on disk: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    pixels = zlib.compress(b"\0" * (side // 8 + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def _other_input(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """Command line and needle for inputs other than the model file."""
    model = tmp_path / "m.onnx"
    if case == "inputs too large to allocate: bench":
        onnx.save(_conv((8, 3, 8000, 8000)), model)
        return ["bench", str(model)], "input 'x' would need 6.1 GB"
    if case == "inputs too large to allocate: synthetic calibration":
        onnx.save(_conv((1, 3, 8000, 8000)), model)
        return [str(model), "--criterion", "activation", "-o", str(tmp_path / "o.onnx")], "input 'x' would need 6.1 GB"
    onnx.save(_conv(), model)
    if case == "latency table nested too deeply":
        (tmp_path / "t.json").write_text("[" * 100_000 + "]" * 100_000)
        return [str(model), "--target-latency", "1ms", "--latency-table", str(tmp_path / "t.json")], \
            "not a readable latency table (JSON nested too deeply)"
    if case == "config nested too deeply":
        (tmp_path / "c.toml").write_text("ratio = " + "[" * 5000 + "]" * 5000 + "\n")
        return [str(model), "--config", str(tmp_path / "c.toml")], "not valid TOML (nested too deeply)"
    pytest.importorskip("PIL")
    (tmp_path / "images").mkdir()
    side = {"image decompression bomb": 40_000, "image over the pixel limit": 10_000}[case]
    _png(tmp_path / "images" / "big.png", side)
    return [str(model), "--calib", str(tmp_path / "images"), "-o", str(tmp_path / "o.onnx")], \
        f"{side * side} pixels, over Pillow's limit"


@pytest.mark.parametrize("case", ["inputs too large to allocate: bench", "inputs too large to allocate: synthetic calibration",
                                  "latency table nested too deeply", "config nested too deeply",
                                  "image decompression bomb", "image over the pixel limit"])
def test_other_inputs_that_cannot_be_used_are_refused(tmp_path: Path, case: str):
    args, needle = _other_input(tmp_path, case)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    _refused(run_cli(*args), needle)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
