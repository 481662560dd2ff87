"""``--reconstruct nonlinear``: an MLP's two projections fitted together through its activation."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from conftest import session
from graphs import GraphBuilder

from onnxprune import prune
from onnxprune.mlp_refit import Activation, find_mlp


def gelu(b: GraphBuilder, z: str) -> str:
    """GELU as the TorchScript exporter writes it: x * (1 + erf(x / sqrt 2)) * 0.5."""
    shape = b.shapes[z]
    e = b.node("Erf", [b.node("Div", [z, b.const(np.float32(math.sqrt(2)))], shape)], shape)
    one_plus = b.node("Add", [e, b.const(np.float32(1))], shape)
    return b.node("Mul", [b.node("Mul", [z, one_plus], shape), b.const(np.float32(0.5))], shape)


def swiglu(b: GraphBuilder, x: str, hidden: int) -> str:
    """LLaMA's MLP activation: silu(gate(x)) * up(x), SiLU as x * sigmoid(x)."""
    gate = b.matmul(x, hidden, bias=False)
    shape = b.shapes[gate]
    silu = b.node("Mul", [gate, b.act(gate, "Sigmoid")], shape)
    return b.node("Mul", [silu, b.matmul(x, hidden, bias=False)], shape)


def mlp_model(seed: int, act: str = "gelu", hidden: int = 32) -> onnx.ModelProto:
    """x + down(act(up(x))), tokens of 8 channels: a transformer's FFN sub-block."""
    b = GraphBuilder(seed)
    x = b.input(["batch", 3, 8], name="x")
    if act == "swiglu":
        h = swiglu(b, x, hidden)
    else:
        z = b.matmul(x, hidden)
        h = gelu(b, z) if act == "gelu" else b.act(z, act)
    b.output(b.node("Add", [x, b.matmul(h, 8)], ["batch", 3, 8]))
    return b.model()


def data(seed: int, batches: int = 8) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((64, 3, 8)).astype(np.float32)} for _ in range(batches)]


def output_error(original: onnx.ModelProto, pruned: onnx.ModelProto, x: np.ndarray) -> float:
    y0 = session(original).run(None, {"x": x})[0]
    y1 = session(pruned).run(None, {"x": x})[0]
    return float(np.linalg.norm(y1 - y0) / np.linalg.norm(y0))


@pytest.mark.parametrize("act", ["gelu", "Relu", "Tanh", "swiglu"])
def test_the_joint_fit_lowers_the_held_out_error_below_least_squares(act):
    model = mlp_model(3, act)
    held_out = np.concatenate([d["x"] for d in data(99, 2)])
    errors, layers = {}, {}
    for mode in ("lstsq", "nonlinear"):
        result = prune(model, ratio=0.5, criterion="obs", calibration=data(1), reconstruct=mode)
        onnx.checker.check_model(result.model, full_check=True)
        errors[mode] = output_error(model, result.model, held_out)
        layers[mode] = result.report["reconstruction"]["layers"]
    (joint,) = layers["nonlinear"]
    assert joint["choice"].endswith("+ joint") and joint["joint"].startswith("with "), joint
    assert joint["joint"].count("MatMul") == (2 if act == "swiglu" else 1), joint  # every up-projection
    assert errors["nonlinear"] < 0.95 * errors["lstsq"], errors
    assert layers["lstsq"][0]["joint"] is None  # lstsq does not try it


def test_the_joint_fit_keeps_the_models_size_and_structure():
    model = mlp_model(4)
    lstsq = prune(model, ratio=0.5, calibration=data(1), reconstruct="lstsq").model
    joint = prune(model, ratio=0.5, calibration=data(1), reconstruct="nonlinear").model
    shapes = lambda m: sorted((t.name, tuple(t.dims)) for t in m.graph.initializer)  # noqa: E731
    assert shapes(joint) == shapes(lstsq)
    assert [n.op_type for n in joint.graph.node] == [n.op_type for n in lstsq.graph.node]


def _graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def _down(graph: gs.Graph) -> gs.Node:
    return [n for n in graph.nodes if n.op == "MatMul"][-1]


def test_the_activation_is_the_graphs_own_and_its_slope_is_right():
    graph = _graph(mlp_model(5))
    mlp, why = find_mlp(graph, _down(graph))
    assert why is None and [n.op for n in mlp.nodes] == ["Div", "Erf", "Add", "Mul", "Mul"]
    act = Activation(graph, mlp)
    z = np.linspace(-4, 4, 64, dtype=np.float32).reshape(2, 32)
    h, (slope,) = act.with_slopes([z])
    erf = np.vectorize(math.erf)
    np.testing.assert_allclose(h, 0.5 * z * (1 + erf(z / math.sqrt(2))), atol=1e-6)
    exact = 0.5 * (1 + erf(z / math.sqrt(2))) + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(slope, exact, atol=2e-3)


def test_swiglus_slopes_are_its_partial_derivatives():
    graph = _graph(mlp_model(5, "swiglu"))
    mlp, why = find_mlp(graph, _down(graph))
    assert why is None and len(mlp.ups) == 2 and mlp.ups[0].inputs[0] is mlp.ups[1].inputs[0]
    gate_first = mlp.pres[0] == mlp.nodes[0].inputs[0].name  # the Sigmoid's input is the gate
    g, u = np.linspace(-3, 3, 64, dtype=np.float32).reshape(2, 32), np.linspace(2, -1, 64, dtype=np.float32).reshape(2, 32)
    zs = [g, u] if gate_first else [u, g]
    h, slopes = Activation(graph, mlp).with_slopes(zs)
    sig = 1 / (1 + np.exp(-g))
    np.testing.assert_allclose(h, g * sig * u, rtol=1e-5, atol=1e-6)
    d_gate, d_up = (sig * (1 + g * (1 - sig))) * u, g * sig
    np.testing.assert_allclose(slopes[0 if gate_first else 1], d_gate, atol=2e-3)
    np.testing.assert_allclose(slopes[1 if gate_first else 0], d_up, atol=2e-3)


def test_no_joint_fit_where_the_activation_is_read_elsewhere_or_reads_other_tensors():
    b = GraphBuilder(6)
    x = b.input(["batch", 8], name="x")
    h = gelu(b, b.matmul(x, 16))
    b.output(b.matmul(h, 8))
    b.output(h)  # the hidden units are also a model output
    graph = _graph(b.model())
    assert find_mlp(graph, _down(graph)) == (None, f"{h} is also read outside the MLP")

    b = GraphBuilder(7)  # a gate computed from another input than the up-projection's
    x, y = b.input(["batch", 8], name="x"), b.input(["batch", 8], name="y")
    b.output(b.matmul(b.node("Mul", [b.act(b.matmul(y, 16), "Sigmoid"), b.matmul(x, 16)], ["batch", 16]), 8))
    graph = _graph(b.model())
    assert find_mlp(graph, _down(graph)) == (None, "its up-projections read different inputs")

    b = GraphBuilder(7)  # gated by a tensor that no linear layer computes (a graph input)
    x, y = b.input(["batch", 8], name="x"), b.input(["batch", 16], name="y")
    b.output(b.matmul(b.node("Mul", [b.act(b.matmul(x, 16), "Relu"), y], ["batch", 16]), 8))
    graph = _graph(b.model())
    assert find_mlp(graph, _down(graph)) == (None, "its activation reads a tensor that is not a linear layer's output")

    b = GraphBuilder(8)  # Softmax is not element-wise: no activation the joint fit can use
    x = b.input(["batch", 8], name="x")
    b.output(b.matmul(b.node("Softmax", [b.matmul(x, 16)], ["batch", 16], axis=-1), 8))
    graph = _graph(b.model())
    assert find_mlp(graph, _down(graph)) == (None, "its input is not an element-wise activation (of a linear layer)")


def test_layers_that_are_no_mlp_say_why_in_the_report():
    b = GraphBuilder(9)  # the hidden units also feed a second branch
    x = b.input(["batch", 8], name="x")
    h = b.act(b.matmul(x, 16), "Relu")
    b.output(b.node("Add", [b.matmul(h, 8), b.matmul(h, 8)], ["batch", 8]))
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((64, 8)).astype(np.float32)} for _ in range(4)]
    result = prune(b.model(), ratio=0.5, calibration=calib, reconstruct="nonlinear")
    layers = result.report["reconstruction"]["layers"]
    assert len(layers) == 2 and all(l["joint"] == f"{h} is also read outside the MLP" for l in layers), layers
    assert not any("joint" in l["choice"] for l in layers)


def test_conv_layers_are_refit_alone():
    """A 1x1 conv, ReLU and a 3x3 conv: the second's rows are patches, not positions of the first's
    output, so no joint fit is tried (and nothing breaks)."""
    b = GraphBuilder(10)
    x = b.input(["batch", 4, 6, 6], name="x")
    b.output(b.conv(b.act(b.conv(x, 16, k=1)), 4, k=3))
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((8, 4, 6, 6)).astype(np.float32)} for _ in range(4)]
    result = prune(b.model(), ratio=0.5, calibration=calib, reconstruct="nonlinear")
    (layer,) = result.report["reconstruction"]["layers"]
    assert layer["joint"] == "its rows are not positions (a conv's patches)"
    onnx.checker.check_model(result.model, full_check=True)


def stacked_model(seed: int) -> onnx.ModelProto:
    """x -> L1 -> tanh -> L2 -> tanh -> L3: L2 is one MLP's down-projection and the next's up."""
    b = GraphBuilder(seed)
    x = b.input(["batch", 3, 8], name="x")
    h1 = b.act(b.matmul(x, 32), "Tanh")
    b.output(b.matmul(b.act(b.matmul(h1, 32), "Tanh"), 8))
    return b.model()


def test_later_waves_see_the_up_projections_the_joint_fit_changed(monkeypatch):
    """Each joint fit changes a layer upstream of the pruned model's kept cut: later waves must
    run from the calibration inputs again, as if nothing had been kept."""
    import onnxprune.runtime.capture as capture

    model = stacked_model(2)
    kept = prune(model, ratio=0.5, calibration=data(1), reconstruct="nonlinear")
    first, second = kept.report["reconstruction"]["layers"]
    assert "+ joint" in first["choice"] and "+ joint" in second["choice"]
    assert first["joint"].endswith(f"; changed again with {second['node']}"), first  # its report is out of date
    monkeypatch.setattr(capture, "MAX_CACHE_BYTES", 0)  # nothing kept between waves
    uncached = prune(model, ratio=0.5, calibration=data(1), reconstruct="nonlinear")
    assert kept.model.SerializeToString() == uncached.model.SerializeToString()


def test_non_finite_rows_leave_the_least_squares_refit():
    """exp(100) is infinite inside the model, yet tanh saturates it: the Gram matrices stay
    finite, the joint fit's rows do not."""
    b = GraphBuilder(3)
    x = b.input(["batch", 3, 8], name="x")
    h = b.act(b.matmul(b.node("Exp", [x], ["batch", 3, 8]), 32), "Tanh")
    b.output(b.matmul(h, 8))
    calib = data(1)
    for batch in calib:
        batch["x"][16, 0, 0] = 100.0
    result = prune(b.model(), ratio=0.5, calibration=calib, reconstruct="nonlinear")
    (layer,) = result.report["reconstruction"]["layers"]
    assert layer["joint"] == "non-finite activations in its calibration rows"
    for init in result.model.graph.initializer:
        assert np.isfinite(onnx.numpy_helper.to_array(init)).all(), init.name


def test_a_scalar_constant_of_higher_rank_in_the_activation():
    b = GraphBuilder(3)
    x = b.input(["batch", 3, 8], name="x")
    scaled = b.node("Mul", [b.matmul(x, 32), b.const(np.full((1, 1, 1), 1.5, np.float32))], ["batch", 3, 32])
    b.output(b.node("Add", [x, b.matmul(b.act(scaled, "Relu"), 8)], ["batch", 3, 8]))
    model = b.model()
    held_out = data(99, 1)[0]["x"]
    errors = {mode: output_error(model, prune(model, ratio=0.5, calibration=data(1), reconstruct=mode).model, held_out)
              for mode in ("lstsq", "nonlinear")}
    assert errors["nonlinear"] < errors["lstsq"], errors


@pytest.mark.parametrize("seed", [2, 3, 5])
def test_the_joint_fit_is_judged_against_what_least_squares_chose(seed):
    """A large up-bias makes the removed units carry a large mean, and with so few rows the
    refit keeps only a new bias: the joint fit starts from that choice (not the sliced weights),
    and what is kept is no worse than it on held-out rows."""
    b = GraphBuilder(seed)
    x = b.input(["batch", 3, 8], name="x")
    b.output(b.matmul(b.act(b.matmul(x, 128), "Relu"), 8))
    model = b.model()
    for init in model.graph.initializer:
        if tuple(init.dims) == (128,):
            values = np.abs(onnx.numpy_helper.to_array(init)) + 3
            init.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), init.name))
    rng = np.random.default_rng(seed + 10)
    calib = [{"x": rng.standard_normal((16, 3, 8)).astype(np.float32)} for _ in range(2)]
    (layer,) = prune(model, ratio=0.5, calibration=calib, reconstruct="nonlinear", ridge=1e-8
                     ).report["reconstruction"]["layers"]
    (alone,) = prune(model, ratio=0.5, calibration=calib, reconstruct="lstsq", ridge=1e-8
                     ).report["reconstruction"]["layers"]
    if "+ joint" in layer["choice"]:
        start = float(layer["joint"].split("held-out error ")[1].split(" ->")[0])
        assert start <= 1.01 * alone["error_held_out"], (layer, alone)
        assert layer["error_held_out"] < start
    else:
        assert layer["joint"].startswith("not kept"), layer


def test_rows_over_the_memory_cap_are_named(monkeypatch):
    import onnxprune.reconstruct as rec

    monkeypatch.setattr(rec, "MAX_ROW_BYTES", 1024)
    result = prune(mlp_model(3), ratio=0.5, calibration=data(1), reconstruct="nonlinear")
    (layer,) = result.report["reconstruction"]["layers"]
    assert layer["joint"] == "one batch of its rows is over the 0.000977 MB the joint fit may hold", layer
