"""``onnxprune bench``: side-by-side timing, providers, input shapes (no speed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnxprune.bench import bench_models
from onnxprune.errors import BadInputError, MissingRuntimeError
from onnxprune.runtime.session import make_runner, onnxruntime, parse_input_shapes

ort = pytest.importorskip("onnxruntime")
MODELS = Path(__file__).resolve().parent.parent / "models"


def test_two_models_side_by_side(tmp_path: Path):
    pruned = tmp_path / "p.onnx"
    from onnxprune import prune

    prune(MODELS / "resnet_small.onnx", ratio=0.5).save(pruned)
    result = bench_models([MODELS / "resnet_small.onnx", pruned], threads=1, max_rounds=6, min_seconds=0)
    a, b = result["models"]
    assert a["rounds"] == b["rounds"] >= 5 and a["samples"] == 5 * a["rounds"]
    assert 0 < a["p50_ms"] <= a["p90_ms"] <= a["p99_ms"]
    ratio = result["ratios_vs_first"][0]
    assert ratio["min"] <= ratio["median"] <= ratio["max"]


def test_cli_json(tmp_path: Path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "-m", "onnxprune", "bench", str(MODELS / "mlp.onnx"), "--threads", "1",
                          "--rounds", "5", "--json", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["provider"] == "cpu" and data["models"][0]["p50_ms"] > 0


def test_dynamic_dims_need_input_shape(tmp_path: Path):
    m = onnx.load(MODELS / "mlp.onnx")
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    path = tmp_path / "dyn.onnx"
    onnx.save(m, path)
    with pytest.raises(BadInputError, match="dynamic shape"):
        bench_models([path], max_rounds=1)
    result = bench_models([path], input_shapes=["input:4x64"], max_rounds=5, min_seconds=0)
    assert result["models"][0]["p50_ms"] > 0


@pytest.mark.parametrize("spec", ["input", "input:1xa", ":1x3"])
def test_bad_input_shape_spec(spec: str):
    with pytest.raises(BadInputError):
        parse_input_shapes([spec])


def test_cuda_unavailable_is_a_clear_error():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here; see test_cuda_iobinding")
    res = subprocess.run([sys.executable, "-m", "onnxprune", "bench", str(MODELS / "mlp.onnx"), "--provider", "cuda"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not available" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_cuda_iobinding():
    runner = make_runner((MODELS / "mlp.onnx").read_bytes(), provider="cuda")
    assert runner.binding is not None
    runner.run()
    outputs = runner.binding.copy_outputs_to_cpu()
    assert outputs[0].shape == (1, 10)


def test_missing_runtime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingRuntimeError, match=r"onnxprune\[cpu\]"):
        onnxruntime()
