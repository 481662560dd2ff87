"""``--quantize``: the pruned model quantized by ONNX Runtime's quantizer, as one build step.

Checked on real ONNX Runtime runs: the quantized model loads, keeps the pruned model's inputs
and outputs, computes what the pruned model computes up to quantization error (classifier
accuracy on held-out digits, output error on random inputs), is smaller, and is what gets
written; temporary files stay beside the output; bad input is a one-line error.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.errors import BadInputError, PipelineError
from onnxprune.passes.builtin import Normalize, default_passes
from onnxprune.passes.quantize import Quantize
from onnxprune.pipeline import Pipeline
from onnxprune.report.json_report import quantize_steps

ort = pytest.importorskip("onnxruntime")

MODELS = Path(__file__).resolve().parent.parent / "models"
DIGITS, CALIB, EVAL = MODELS / "digits_cnn.onnx", MODELS / "digits_calib.npz", MODELS / "digits_eval.npz"


def run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def io_names(model: onnx.ModelProto) -> tuple:
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def digits_int8():
    return onnxprune.prune(DIGITS, calibration=CALIB, quantize="int8", work_dir=tempfile.gettempdir())


def test_static_int8_keeps_the_pruned_digits_accuracy(digits_int8):
    """Static QDQ on the calibration data: the shipped model is the quantized one, with the
    pruned model's I/O, and classifies the held-out digits as the pruned model does."""
    result, data = digits_int8, np.load(EVAL)
    assert result.model is result.context.quantized
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops(result.model)
    assert io_names(result.model) == io_names(result.context.pruned)
    pruned = run(result.context.pruned, {"input": data["input"]}).argmax(1)
    quantized = run(result.model, {"input": data["input"]}).argmax(1)
    labels = data["label"]
    assert (quantized == pruned).mean() >= 0.97
    assert (quantized == labels).mean() >= (pruned == labels).mean() - 0.02
    q = result.report["quantization"]
    assert (q["scheme"], q["samples"], q["layers"]) == ("static QDQ", 200, 5)
    assert q["bytes"]["quantized"] < q["bytes"]["pruned"] < q["bytes"]["original"]
    assert q["bytes"]["quantized"] == result.model.ByteSize()
    cosine = q["fidelity"]["outputs"]["logits"]["mean_cosine"]
    assert 0.9 < cosine <= result.report["fidelity"]["outputs"]["logits"]["mean_cosine"] + 0.01


def test_dynamic_int8_without_calibration_matches_the_pruned_model():
    """Without calibration data int8 is dynamic (activations quantized at run time)."""
    result = onnxprune.prune(MODELS / "mlp.onnx", ratio=0.3, quantize="int8")
    assert result.report["quantization"]["scheme"] == "dynamic" and result.report["quantization"]["layers"] > 0
    assert "DynamicQuantizeLinear" in ops(result.model)
    rng = np.random.default_rng(0)
    xs = [{"input": rng.standard_normal((1, 64)).astype(np.float32)} for _ in range(16)]
    a = np.concatenate([run(result.context.pruned, x) for x in xs])
    b = np.concatenate([run(result.model, x) for x in xs])
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.05
    assert "fidelity" not in result.report["quantization"]


def test_int8_dynamic_with_calibration_data_is_dynamic():
    """``int8-dynamic``: the calibration data serves the pruning only."""
    result = onnxprune.prune(DIGITS, calibration=CALIB, quantize="int8-dynamic")
    q = result.report["quantization"]
    assert (q["scheme"], q["samples"], q["calibration"]) == ("dynamic", None, None)
    assert "DynamicQuantizeLinear" in ops(result.model) and "QuantizeLinear" not in ops(result.model)
    assert q["fidelity"]["outputs"]["logits"]["mean_cosine"] > 0.9


def test_int4_quantizes_matmul_weights_in_blocks():
    result = onnxprune.prune(MODELS / "bert_torchscript.onnx", ratio=0.3, quantize="int4")
    q = result.report["quantization"]
    nbits = [n for n in result.model.graph.node if n.op_type == "MatMulNBits"]
    assert q["scheme"] == "MatMulNBits" and len(nbits) == q["layers"] == 12
    assert all(next(a.i for a in n.attribute if a.name == "bits") == 4 for n in nbits)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 100, (2, 16)).astype(np.int64), "attention_mask": np.ones((2, 16), np.int64)}
    a, b = run(result.context.pruned, feeds), run(result.model, feeds)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.02
    assert q["bytes"]["quantized"] < q["bytes"]["pruned"]


def test_int4_without_matmul_ships_the_pruned_model_with_a_warning():
    """The digits CNN has Conv and Gemm only, which the 4-bit quantizer leaves alone."""
    result = onnxprune.prune(DIGITS, ratio=0.3, quantize="int4")
    assert result.context.quantized is None and result.model is result.context.pruned
    assert any("quantized no layer" in w for w in result.context.warnings)


def test_quantize_only_when_nothing_is_removed():
    """``--ratio 0`` with ``--quantize``: quantize-only; the output is not the input."""
    result = onnxprune.prune(DIGITS, ratio=0.0, calibration=CALIB, quantize="int8")
    assert not result.context.selection.removed and not result.unchanged
    assert result.context.pruned is result.context.model and result.model is result.context.quantized
    assert result.report["quantization"]["pruned"] is False


def test_an_already_quantized_model_is_refused(tmp_path: Path):
    from onnxruntime.quantization import quantize_dynamic

    quantized = tmp_path / "q.onnx"
    quantize_dynamic(str(DIGITS), str(quantized))
    with pytest.raises(BadInputError, match="quantized already"):
        onnxprune.prune(quantized, quantize="int8")
    res = cli(str(quantized), "--quantize", "int8", "-o", str(tmp_path / "out.onnx"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "quantized already" in res.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_int4_without_onnx_ir_is_one_line_exit_2(tmp_path: Path):
    script = ("import sys; sys.modules['onnx_ir'] = None\n"
              "from onnxprune.cli import main\n"
              f"main([{str(MODELS / 'bert_torchscript.onnx')!r}, '--quantize', 'int4', '-o', "
              f"{str(tmp_path / 'out.onnx')!r}])\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "onnxprune[quantize]" in res.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (("--quantize", "int3"), "int3"),
    (("--quantize", "int8", "--target-latency", "1ms", "--latency-table", "t.json"), "--latency-table"),
])
def test_bad_quantize_options_are_one_line_exit_2(tmp_path: Path, args, message):
    (tmp_path / "t.json").write_text("{}")
    res = subprocess.run([sys.executable, "-m", "onnxprune", str(DIGITS), "-o", str(tmp_path / "o.onnx"), *args],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


def test_cli_writes_the_quantized_model_and_reports_each_step(tmp_path: Path):
    model = tmp_path / "digits.onnx"
    shutil.copy(DIGITS, model)
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    out, report, page = tmp_path / "out" / "d.onnx", tmp_path / "r.json", tmp_path / "r.html"
    res = cli(str(model), "--calib", str(CALIB), "--quantize", "int8", "-o", str(out), "--report", str(report),
              "--html", str(page), "--bench", "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before
    written = onnx.load(out)
    assert "DequantizeLinear" in ops(written)
    import json

    doc = json.loads(report.read_text())
    steps = doc["steps"]
    assert [s["step"] for s in steps] == ["original", "pruned", "pruned+int8"]
    assert steps[2]["bytes"] == out.stat().st_size and steps[0]["bytes"] == model.stat().st_size
    assert all(s["p50_ms"] > 0 for s in steps)  # --bench: the three side by side
    assert steps[0]["fidelity"] is None and steps[1]["fidelity"] and steps[2]["fidelity"]
    assert doc["benchmark"]["quantized"]["rounds"] == doc["benchmark"]["pruned"]["rounds"]
    assert "pruned+int8" in res.stdout and "static QDQ on 200 calibration samples" in res.stdout
    assert "Build steps" in page.read_text() and "pruned+int8" in page.read_text()
    left = sorted(p.name for p in tmp_path.rglob("*"))
    assert left == ["d.onnx", "digits.onnx", "out", "r.html", "r.json"], left  # no temporary file left


def test_temporary_files_go_beside_the_output(tmp_path: Path, monkeypatch):
    """The quantizer's own temporary folders are made inside the work folder, none elsewhere."""
    made = []
    real = tempfile.mkdtemp

    def recording(*args, **kwargs):
        path = real(*args, **kwargs)
        made.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording)
    work = tmp_path / "out"
    work.mkdir()
    onnxprune.prune(DIGITS, calibration=CALIB, quantize="int8", work_dir=work)
    assert made and all(work in p.parents for p in made), made
    assert not list(work.iterdir())


def test_output_is_deterministic():
    a = onnxprune.prune(DIGITS, calibration=CALIB, quantize="int8").model.SerializeToString()
    b = onnxprune.prune(DIGITS, calibration=CALIB, quantize="int8").model.SerializeToString()
    assert a == b


def test_the_pass_follows_verify_and_needs_a_pruned_model():
    passes = default_passes(onnxprune.PruneOptions(quantize="int8"))
    names = [p.name for p in passes]
    assert names.index("quantize") == names.index("verify") + 1
    assert "quantize" not in [p.name for p in default_passes(onnxprune.PruneOptions())]
    with pytest.raises(PipelineError, match="pruned"):
        Pipeline([Normalize(), Quantize()])


def test_latency_target_met_by_the_quantized_unpruned_model_writes_it(tmp_path: Path):
    """With --quantize the model that ships is timed: where the quantized original already meets
    the target, nothing is pruned, and the quantized model is written (not 'already met')."""
    result = onnxprune.prune(DIGITS, calibration=CALIB, quantize="int8", target_latency="1000ms", threads=1)
    search = result.report["search"]
    assert search["status"] == "met" and search["timed_as"] == "quantized"
    assert [i["kind"] for i in search["iterations"]] == ["unpruned"]
    assert not result.context.selection.removed and result.model is result.context.quantized
    steps = quantize_steps(result.report)
    assert steps[2]["p50_ms"] == search["achieved"]


def test_latency_candidates_are_timed_quantized(monkeypatch):
    """Every candidate the search times is first quantized (on a few calibration samples)."""
    from onnxprune.runtime import quantize as q
    from onnxprune.search.target_search import TargetUnreachable

    calls = []
    real = q.quantize

    def recording(model, method, batches=None, work_dir=None, max_samples=None):
        calls.append(max_samples)
        return real(model, method, batches, work_dir, max_samples)

    monkeypatch.setattr(q, "quantize", recording)
    with pytest.raises(TargetUnreachable) as info:
        onnxprune.prune(DIGITS, calibration=CALIB, quantize="int8", target_latency="0.000001ms", threads=1)
    assert "out of reach" in str(info.value)
    assert len(calls) >= 2 and set(calls) == {q.TIMING_SAMPLES}  # the unpruned model and the candidates


def test_a_stopping_signal_removes_the_quantizer_folder(tmp_path: Path):
    import signal

    from onnxprune import tempfiles

    with tempfiles.temp_folder(tmp_path, "onnxprune-quantize") as folder:
        (folder / "augmented_model.onnx").write_bytes(b"x")
        with pytest.raises(tempfiles.Interrupted):
            tempfiles._on_signal(signal.SIGTERM, None)  # the handler itself, before any unwinding
        assert not folder.exists()
    assert not list(tmp_path.iterdir())


def _attention_like(mask_add: bool) -> onnx.ModelProto:
    """x -> MatMul -> (Add of an additive mask) -> Softmax -> MatMul -> LayerNormalization."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), n) for n in ("w1", "w2")]
    inits += [numpy_helper.from_array(np.ones(8, np.float32), "g"), numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["s"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])]
    if mask_add:
        nodes.append(helper.make_node("Add", ["s", "mask"], ["sm"]))
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [None, 8]))
    nodes += [helper.make_node("Softmax", ["sm" if mask_add else "s"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "w2"], ["h"]),
              helper.make_node("LayerNormalization", ["h", "g", "b"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "attn", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_static_int8_leaves_softmax_mask_and_layernorm_float_in_attention_graphs(tmp_path: Path):
    """In a graph with Softmax/LayerNormalization, static QDQ quantizes the weight layers only:
    the additive mask (0 on calibration rows without padding, -1e9 at run time) keeps its values,
    so a masked position still gets no attention (ONNX Runtime's default op set gives the mask a
    range of [0, 0] and clips -1e9 to -128)."""
    from onnxprune.runtime.quantize import quantize

    model = _attention_like(mask_add=True)
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((16, 8)).astype(np.float32), "mask": np.zeros((16, 8), np.float32)}]
    done = quantize(model, "int8", calib, tmp_path)
    consumers = {i: n.op_type for n in done.model.graph.node for i in n.input}
    producers = {o: n.op_type for n in done.model.graph.node for o in n.output}
    assert "QuantizeLinear" in ops(done.model)
    assert consumers["mask"] == "Add" and producers[[n for n in done.model.graph.node if n.op_type == "Softmax"][0]
                                                    .input[0]] == "Add"
    x = rng.standard_normal((4, 8)).astype(np.float32)
    mask = np.zeros((4, 8), np.float32)
    mask[:, 4:] = -1e9
    masked_in = _attention_like(mask_add=True)
    masked_in.graph.output[0].name = "p"
    masked_in.graph.node.pop()  # up to the attention probabilities
    masked_in.graph.node.pop()
    probs = run(quantize(masked_in, "int8", calib, tmp_path).model, {"x": x, "mask": mask})
    assert np.abs(probs[:, 4:]).max() < 1e-6


def test_static_int8_op_set_is_ort_default_without_attention():
    from onnxprune.runtime.quantize import WEIGHT_OPS, static_op_types

    assert static_op_types(onnx.load(DIGITS)) is None
    assert static_op_types(_attention_like(mask_add=False)) == list(WEIGHT_OPS)
