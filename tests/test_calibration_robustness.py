"""Calibration data that a real pipeline produces: packed in files any which way, holding NaN or
Inf, or making the model itself produce them. The result depends on the samples alone, bad
inputs are refused in one line, and the model's own non-finite activations never hang the run
nor reach the output's weights."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder

import onnxprune.calibration.data as data_module
import onnxprune.scoring.obs as obs_module
from onnxprune import prune
from onnxprune.calibration.data import Calibration, InputSpec
from onnxprune.errors import BadInputError
from onnxprune.reconstruct import NON_FINITE

MODELS = Path(__file__).resolve().parent.parent / "models"


# --- packing -----------------------------------------------------------------------------

def fixed_batch_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model exported with a fixed batch size of 1 (as OCR and detection models often are)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in [*m.graph.input, *m.graph.output]:
        dim = t.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_param")
        dim.dim_value = 1
    del m.graph.value_info[:]
    return m


def digits_samples() -> dict[str, np.ndarray]:
    return {"input": np.load(MODELS / "digits_calib.npz")["input"][:64]}


def token_samples() -> dict[str, np.ndarray]:
    ids = np.random.default_rng(0).integers(0, 100, (64, 12)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def packed(samples: dict[str, np.ndarray], per_file: int, folder: Path) -> Path:
    """The samples as files of ``per_file`` each (one .npz when it holds them all)."""
    n = len(next(iter(samples.values())))
    if per_file >= n:
        np.savez(folder / "all.npz", **samples)
        return folder / "all.npz"
    for start in range(0, n, per_file):
        np.savez(folder / f"{start:04d}.npz", **{k: v[start:start + per_file] for k, v in samples.items()})
    return folder


@pytest.mark.parametrize("name", ["digits", "digits_batch1", "digits_small_runs", "bert"])
def test_the_same_samples_give_the_same_model_however_they_are_packed(tmp_path, monkeypatch, name):
    """One sample per file, 4 or 24 per file (files of 24, 24 and 16), or all in one: the same
    kept channels, the same weights and the same reported fidelity (folds, row sampling and
    fidelity follow the samples)."""
    if name == "bert":
        model, samples = onnx.load(MODELS / "bert_torchscript.onnx"), token_samples()
    else:
        model, samples = onnx.load(MODELS / "digits_cnn.onnx"), digits_samples()
        if name == "digits_batch1":
            model = fixed_batch_one(model)
        if name == "digits_small_runs":  # as for large samples: each chunk of 16 runs 3 at a time
            monkeypatch.setattr(data_module, "MAX_RUN_BYTES", 3 * samples["input"][0].nbytes)
    results = {}
    for per_file in (1, 4, 24, 64):
        folder = tmp_path / str(per_file)
        folder.mkdir()
        source = str(packed(samples, per_file, folder))
        results[per_file] = prune(model, ratio=0.4, calibration=source)
        capped = Calibration(source, results[per_file].context.calibration.specs, max_samples=20)
        expected = {"digits_batch1": [1] * 20, "digits_small_runs": [3, 3, 3, 3, 3, 1, 3, 1]}.get(name, [16, 4])
        assert [run.samples for run in capped.runs()] == expected
    reference = results[64]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in reference.model.graph.initializer}
    for per_file, result in results.items():
        assert result.context.selection.removed == reference.context.selection.removed, per_file
        for t in result.model.graph.initializer:
            np.testing.assert_allclose(onnx.numpy_helper.to_array(t), weights[t.name], rtol=1e-5, atol=1e-6)
        fidelity = result.report["fidelity"]
        assert fidelity["samples"] == 64
        for output, figures in fidelity["outputs"].items():
            assert figures == pytest.approx(reference.report["fidelity"]["outputs"][output], rel=1e-9), per_file
    assert reference.report["reconstruction"]["layers"], "the refit must have run for this to mean anything"


# --- non-finite inputs -------------------------------------------------------------------

SPEC = [InputSpec("x", np.dtype(np.float32), ("batch", 3, 8, 8))]


@pytest.mark.parametrize("value,word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "-Inf")])
def test_non_finite_calibration_inputs_are_refused_naming_the_sample(tmp_path, value, word):
    x = np.random.default_rng(0).standard_normal((20, 3, 8, 8)).astype(np.float32)
    x[18, 1, 2, 3] = value
    folder = tmp_path / "folder"
    folder.mkdir()
    np.savez(folder / "a.npz", x=x[:10])
    np.savez(folder / "b.npz", x=x[10:])
    np.savez(tmp_path / "one.npz", x=x)
    for source, where in ((folder, "b.npz"), (tmp_path / "one.npz", "one.npz")):
        sample = 8 if where == "b.npz" else 18
        with pytest.raises(BadInputError, match=rf"{where}: input 'x' holds {word} in sample {sample}\b"):
            list(Calibration(source, SPEC))
    with pytest.raises(BadInputError, match=rf"batch 1 .*input 'x' holds {word} in sample 8\b"):
        list(Calibration([{"x": x[:10]}, {"x": x[10:]}], SPEC))

    model = tmp_path / "m.onnx"
    onnx.save(cnn_with_a_log(), model)
    out = tmp_path / "out.onnx"
    res = subprocess.run([sys.executable, "-m", "onnxprune", str(model), "--calib", str(folder), "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "b.npz" in res.stderr and "sample 8" in res.stderr
    assert not out.exists()


# --- non-finite activations --------------------------------------------------------------

def cnn_with_a_log(clip: bool = True) -> onnx.ModelProto:
    """A Log after a ReLU: -inf wherever a channel is off, on perfectly finite inputs. The next
    conv (positive weights) passes the -inf on, and a Clip brings the activations back (without
    it, the model's outputs are not finite either)."""
    b = GraphBuilder(5)
    x = b.input(["batch", 3, 8, 8], name="x")
    h = b.act(b.act(b.conv(x, 8)), "Log")
    w = b.weight(8, 8, 1, 1)
    weight = next(i for i in b.inits if i.name == w)
    weight.CopyFrom(onnx.numpy_helper.from_array(np.abs(onnx.numpy_helper.to_array(weight)), w))
    h = b.node("Conv", [h, w, b.weight(8)], ["batch", 8, 8, 8], kernel_shape=[1, 1])
    if clip:
        h = b.node("Clip", [h, b.const(np.float32(-5)), b.const(np.float32(5))], ["batch", 8, 8, 8])
    h = b.act(b.conv(h, 12))
    b.output(b.gemm(b.flatten(b.gap(h)), 4))
    return b.model()


@pytest.mark.parametrize("clip", [True, False])
def test_non_finite_activations_fall_back_with_a_reason_and_leave_finite_weights(clip):
    model = cnn_with_a_log(clip)
    calib = {"x": np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)}
    done: dict = {}
    worker = threading.Thread(target=lambda: done.setdefault("result", prune(model, ratio=0.5, calibration=[calib])),
                              daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "pruning hung on non-finite activations"
    result = done["result"]
    log = next(n for n in model.graph.node if n.op_type == "Log")
    after_log = next(n.name for n in model.graph.node if log.output[0] in n.input)
    warnings = " | ".join(result.context.warnings)
    assert f"scored by l1: obs non-finite activations on calibration data at {log.output[0]}" in warnings, warnings
    layers = {layer["node"]: layer for layer in result.report["reconstruction"]["layers"]}
    skipped = [n for n, layer in layers.items() if layer["skipped"] == NON_FINITE]
    if clip:
        assert skipped == [after_log], layers
        assert any(layer["choice"] not in (None, "current") for layer in layers.values()), "the others are refit"
    else:
        assert skipped == list(layers), layers  # everything downstream of the Log is not finite
    for t in result.model.graph.initializer:
        values = onnx.numpy_helper.to_array(t)
        assert not np.issubdtype(values.dtype, np.floating) or np.isfinite(values).all(), t.name
    fidelity = result.report["fidelity"]
    assert all(np.isfinite(v) for f in fidelity["outputs"].values() for v in f.values())
    if clip:
        assert fidelity["outputs"] and "non_finite" not in fidelity
    else:
        assert fidelity["non_finite"] == {model.graph.output[0].name: {"original": 32, "pruned": 0}}
        assert "non-finite original output" in warnings


def test_obs_greedy_loop_is_bounded_when_losses_are_not_numbers(monkeypatch):
    """The greedy loop takes only channels still there, a fixed number of steps, and gives up
    (None: the group falls back) as soon as a loss is not a number, one at a time or in chunks."""
    n = 6
    hinv = np.eye(n)
    hinv[2, 2] = np.nan
    for max_cost in (obs_module.MAX_EXACT_COST, 1.0):  # one at a time; several per step
        monkeypatch.setattr(obs_module, "MAX_EXACT_COST", max_cost)
        consumer = obs_module._Consumer(hinv.copy(), np.ones((n, 3)), np.arange(n), 1, 1.0)
        done: dict = {}
        worker = threading.Thread(target=lambda: done.setdefault("scores", obs_module._greedy([consumer], n)),
                                  daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), f"obs greedy loop did not terminate (MAX_EXACT_COST={max_cost})"
        assert done["scores"] is None
        finite = obs_module._Consumer(np.eye(n), np.ones((n, 3)), np.arange(n), 1, 1.0)
        scores = obs_module._greedy([finite], n)
        assert np.isfinite(scores).all() and len(set(scores.tolist())) == n  # each removed exactly once
