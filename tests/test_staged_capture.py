"""Reconstruction's captures: each wave runs only the nodes beyond the cut the previous one
kept, with the same tensors as a whole run; the rows a Gram matrix uses are a setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from conftest import session

import onnxprune.runtime.capture as capture_module
from onnxprune import prune
from onnxprune.ops.conv import ConvView
from onnxprune.reconstruct import _waves
from onnxprune.runtime.capture import StagedCapture, capture, capture_session

MODELS = Path(__file__).resolve().parents[1] / "models"


def _stages(graph: gs.Graph) -> list[list[str]]:
    """The inputs of every conv, in reconstruction's waves."""
    convs = [n.name for n in graph.nodes if n.op == "Conv"]
    by_name = {n.name: n for n in graph.nodes}
    return [sorted({by_name[n].inputs[0].name for n in wave}) for wave in _waves(graph, convs)]


@pytest.mark.parametrize("max_bytes", [capture_module.MAX_CACHE_BYTES, 0])
def test_stages_capture_what_a_whole_run_does_and_run_each_node_once(max_bytes):
    graph = gs.import_onnx(onnx.load(MODELS / "resnet_small.onnx"))
    feeds = [{"input": np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)} for i in range(3)]
    staged = StagedCapture(graph, max_bytes=max_bytes)
    stages = _stages(graph)
    assert len(stages) > 3
    ran = 0
    for wanted in stages:
        reads = staged.start(wanted)
        assert reads == (max_bytes == 0 or wanted is stages[0])
        ran += staged.nodes_run
        whole = capture_session(graph, wanted)
        for i, f in enumerate(feeds):
            got = staged.capture(i, f if reads else None)
            expected = capture(whole, f)
            for name in wanted:
                np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)
        staged.finish()
    if max_bytes:
        assert ran <= len(graph.nodes)  # each node at most once over all waves
    else:
        assert ran > len(graph.nodes)  # from the inputs each time: the same tensors, more work


def test_reconstruction_does_not_depend_on_what_is_kept_between_waves(monkeypatch):
    """The kept cut holds the pruned model's tensors upstream of the refit layers only: a run
    that keeps nothing (every wave from the inputs, after the earlier waves' refits) agrees.
    Enough samples that every refit has more rows than unknowns: an underdetermined one turns
    float32 rounding (ONNX Runtime fuses differently across a cut) into changes of any size."""
    model = onnx.load(MODELS / "resnet_small.onnx")
    calib = [{"input": np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)} for i in range(24)]
    kept = prune(model, ratio=0.5, criterion="fluctuation", calibration=calib)
    monkeypatch.setattr(capture_module, "MAX_CACHE_BYTES", 0)
    fresh = prune(model, ratio=0.5, criterion="fluctuation", calibration=calib)
    changed = [l for l in kept.report["reconstruction"]["layers"] if l["choice"] not in (None, "current")]
    assert changed
    x = np.random.default_rng(9).standard_normal((1, 3, 32, 32)).astype(np.float32)
    y_kept, y_fresh = (session(r.model).run(None, {"input": x})[0] for r in (kept, fresh))
    plain = prune(model, ratio=0.5, criterion="fluctuation", calibration=calib, reconstruct="none")
    y_plain = session(plain.model).run(None, {"input": x})[0]
    # ONNX Runtime fuses differently across a cut: float32 rounding, far below what the refit changes
    assert np.linalg.norm(y_kept - y_fresh) < 1e-3 * np.linalg.norm(y_plain - y_fresh)


def test_conv_patches_match_a_padded_gather():
    rng = np.random.default_rng(0)
    for pads, strides, dil in [([1, 2, 0, 1], [2, 1], [1, 2]), ([0, 0, 0, 0], [1, 1], [1, 1]), ([2, 2, 2, 2], [3, 2], [2, 1])]:
        w = gs.Constant("w", rng.standard_normal((4, 3, 3, 2)).astype(np.float32))
        node = gs.Node("Conv", "c", attrs={"pads": pads, "strides": strides, "dilations": dil},
                       inputs=[gs.Variable("x"), w], outputs=[gs.Variable("y")])
        view = ConvView(node)
        x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
        xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        ho, wo = view._out_hw(x)
        ref = np.stack([xp[n, :, oy * strides[0]:oy * strides[0] + 3 * dil[0]:dil[0],
                           ox * strides[1]:ox * strides[1] + 2 * dil[1]:dil[1]].reshape(-1)
                        for n in range(2) for oy in range(ho) for ox in range(wo)])
        np.testing.assert_array_equal(view.rows(x, None), ref)
        pick = np.array([0, 3, len(ref) - 1])
        np.testing.assert_array_equal(view.rows(x, pick), ref[pick])


def test_calib_rows_bounds_the_rows_of_each_gram_matrix(tmp_path):
    model = onnx.load(MODELS / "resnet_small.onnx")
    calib = [{"input": np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)} for i in range(3)]
    for rows in (7, 100):
        result = prune(model, ratio=0.5, calibration=calib, calib_rows=rows)
        graph = result.context.graph
        counts = {name: g.count for s in result.context.stats.values() for name, g in s.grams.items()}
        assert counts
        sizes = {n.name: int(np.prod(n.outputs[0].shape[2:])) for n in graph.nodes if n.name in counts}
        assert all(c == 3 * min(rows, sizes[name]) for name, c in counts.items()), counts
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", input=calib[0]["input"])
    res = subprocess.run([sys.executable, "-m", "onnxprune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"),
                          "--calib", str(tmp_path / "c.npz"), "--calib-rows", "0"], capture_output=True, text=True)
    assert res.returncode == 2 and "--calib-rows must be positive" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "o.onnx").exists()


def test_a_bias_added_by_one_wave_is_run_by_the_next():
    """A MatMul without a bias gets one (an Add appended to the graph) when refit; the next
    wave's inputs are computed through it."""
    from graphs import GraphBuilder

    b = GraphBuilder(3)
    x = b.input(["batch", 16], name="x")
    h = b.act(b.node("MatMul", [x, b.weight(16, 24)], ["batch", 24]))
    h = b.act(b.node("MatMul", [h, b.weight(24, 24)], ["batch", 24]))  # no bias: one is added
    h = b.act(b.node("MatMul", [h, b.weight(24, 24)], ["batch", 24]))
    b.output(b.node("MatMul", [h, b.weight(24, 8)], ["batch", 8]))
    model = b.model()
    calib = [{"x": np.random.default_rng(i).standard_normal((64, 16)).astype(np.float32)} for i in range(4)]
    result = prune(model, ratio=0.5, criterion="fluctuation", calibration=calib)
    layers = result.report["reconstruction"]["layers"]
    assert len(layers) >= 2 and all(l["skipped"] is None for l in layers)
    assert sum(n.op_type == "Add" for n in result.model.graph.node) >= 2
