"""The command line: outputs, exit codes, one-line errors, the input left untouched."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

MODELS = Path(__file__).resolve().parent.parent / "models"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True, cwd=cwd)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    dst = tmp_path / "resnet_small.onnx"
    shutil.copy(MODELS / "resnet_small.onnx", dst)
    return dst


def test_prune_writes_beside_input_and_leaves_input_alone(model: Path):
    before = digest(model)
    res = cli(str(model), "--ratio", "0.3")
    assert res.returncode == 0, res.stderr
    out = model.with_name("resnet_small.pruned.onnx")
    assert out.exists()
    assert digest(model) == before
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert "params" in res.stdout and "FLOPs" in res.stdout and "wrote" in res.stdout


def test_prune_with_output_and_criterion(model: Path, tmp_path: Path):
    out = tmp_path / "sub" / "small.onnx"
    res = cli(str(model), "-o", str(out), "--ratio", "0.5", "--criterion", "bn", "--round-to", "4")
    assert res.returncode == 0, res.stderr
    pruned = onnx.load(out)
    widths = [i.dims[0] for i in pruned.graph.initializer if len(i.dims) == 4]
    assert widths and all(w % 4 == 0 for w in widths[1:])
    assert not list(tmp_path.glob("sub/.*.tmp")), "temporary files left behind"


def test_analyze_lists_groups_and_reasons():
    res = cli("analyze", str(MODELS / "yolov8_block.onnx"))
    assert res.returncode == 0, res.stderr
    assert "prunable" in res.stdout and "blocked:" in res.stdout
    assert "graph output" in res.stdout


BAD_FILES = {"missing.onnx": None, "empty.onnx": b"", "junk.onnx": b"\x00garbage\xff" * 10}


@pytest.mark.parametrize("name,needle", [("missing.onnx", "no such file"), ("empty.onnx", "empty"),
                                         ("junk.onnx", "not a valid ONNX")])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, name: str, needle: str):
    path = tmp_path / name
    if BAD_FILES[name] is not None:
        path.write_bytes(BAD_FILES[name])
    res = cli(str(path), "--ratio", "0.3")
    assert res.returncode == 2
    assert needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not list(tmp_path.glob("*.pruned.onnx"))


def test_truncated_model(tmp_path: Path):
    data = (MODELS / "resnet_small.onnx").read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: len(data) // 3])
    res = cli(str(bad))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "1.5"])
def test_ratio_out_of_range(model: Path, ratio: str):
    res = cli(str(model), "--ratio", ratio)
    assert res.returncode == 2 and "ratio" in res.stderr
    assert not model.with_name("resnet_small.pruned.onnx").exists()


def test_output_never_replaces_the_input_even_with_force(model: Path):
    before = digest(model)
    for extra in ((), ("--force",)):
        res = cli(str(model), "-o", str(model), *extra)
        assert res.returncode == 2 and "is the input model" in res.stderr
        assert digest(model) == before


def test_unsupported_opset(tmp_path: Path):
    m = onnx.load(MODELS / "mlp.onnx")
    m.opset_import[0].version = 7
    path = tmp_path / "old.onnx"
    onnx.save(m, path)
    res = cli(str(path))
    assert res.returncode == 2 and "opset 7" in res.stderr


def test_same_input_gives_identical_bytes(model: Path, tmp_path: Path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    assert cli(str(model), "-o", str(a), "--ratio", "0.4").returncode == 0
    assert cli(str(model), "-o", str(b), "--ratio", "0.4").returncode == 0
    assert digest(a) == digest(b)


# --- domains: what cannot be processed is a one-line error; what the analysis does not know
# blocks the channels it touches ------------------------------------------------------------------

def _mlp_with(tmp_path: Path, node: onnx.NodeProto, imports: dict[str, int], name: str = "m.onnx") -> Path:
    """x -> Gemm -> Relu -> Gemm(h1) -> [node: h1 -> h2] -> Gemm -> y, with extra opset imports."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w0", [8, 16]), ("b0", [16]), ("w1", [16, 12]), ("b1", [12]), ("w2", [12, 4]), ("b2", [4]))]
    nodes = [helper.make_node("Gemm", ["x", "w0", "b0"], ["h0"], name="gemm0"),
             helper.make_node("Relu", ["h0"], ["a0"], name="relu0"),
             helper.make_node("Gemm", ["a0", "w1", "b1"], ["h1"], name="gemm1"),
             node,
             helper.make_node("Gemm", ["h2", "w2", "b2"], ["y"], name="gemm2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], initializer=inits)
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, v) for d, v in imports.items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, path)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (click's runner): the same code path as ``cli`` without starting an
    interpreter, for the many bad-input cases."""
    from click.testing import CliRunner

    from onnxprune.cli import main

    res = CliRunner().invoke(main, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return subprocess.CompletedProcess(args, res.exit_code, res.stdout, res.stderr)


def _one_line_exit_2(res: subprocess.CompletedProcess, needle: str) -> None:
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


@pytest.mark.parametrize("node,imports,needle", [
    (onnx.helper.make_node("Gelu", ["h1"], ["h2"], name="gelu", domain="com.microsoft"), {},
     "uses domain 'com.microsoft', which the model does not import"),
    (onnx.helper.make_node("Scaler", ["h1"], ["h2"], name="scale", domain="ai.onnx.ml", scale=[1.0] * 12), {"ai.onnx.ml": 99},
     "opset ai.onnx.ml 99 is not supported"),
    (onnx.helper.make_node("Frobnicate", ["h1"], ["h2"], name="frob", domain="ai.onnx.ml"), {"ai.onnx.ml": 3},
     "ai.onnx.ml opset 3 has no operator Frobnicate"),
    (onnx.helper.make_node("Frobnicate", ["h1"], ["h2"], name="frob"), {}, "ai.onnx opset 17 has no operator Frobnicate"),
])
def test_unsupported_domain_is_one_line_exit_2(tmp_path: Path, node, imports, needle: str):
    path = _mlp_with(tmp_path, node, imports)
    before = digest(path)
    for command in ([str(path)], ["analyze", str(path)]):
        _one_line_exit_2(run_cli(*command), needle)
    assert digest(path) == before and not list(tmp_path.glob("*.pruned.onnx"))


@pytest.mark.parametrize("node,imports", [
    (onnx.helper.make_node("Trilu", ["h1"], ["h2"], name="trilu", domain="com.microsoft"), {"com.microsoft": 1}),
    (onnx.helper.make_node("Frobnicate", ["h1"], ["h2"], name="frob", domain="com.example.custom"),
     {"com.example.custom": 3}),
    (onnx.helper.make_node("Scaler", ["h1"], ["h2"], name="scale", domain="ai.onnx.ml", scale=[2.0] * 12,
                           offset=[0.5] * 12), {"ai.onnx.ml": 3}),
])
def test_ops_without_a_rule_block_their_groups_and_the_rest_is_pruned(tmp_path: Path, node, imports):
    path = _mlp_with(tmp_path, node, imports)
    res = run_cli("analyze", str(path))
    assert res.returncode == 0, res.stderr
    assert f"op {node.domain}:{node.op_type} ('{node.name}') is not supported" in res.stdout
    out = tmp_path / "out.onnx"
    res = run_cli(str(path), "-o", str(out), "--ratio", "0.5")
    assert res.returncode == 0, res.stderr
    pruned = onnx.load(out)
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["w0"] == [8, 8] and dims["w1"] == [8, 12]  # gemm0's group pruned; gemm1's (into the op) kept
    assert {n.domain for n in pruned.graph.node} == {"", node.domain}
    assert {(o.domain, o.version) for o in pruned.opset_import} >= {(d, v) for d, v in imports.items()}


# --- every bad input end to end: one line, exit 2, no traceback, no output, input unchanged ----

def _calib(tmp_path: Path, kind: str) -> Path:
    import numpy as np

    x = np.zeros((2, 3, 32, 32), np.float32)
    contents = {"names": {"nope": x}, "dtype": {"input": x.astype(np.int64)}, "rank": {"input": x[:, 0]}}
    if kind in contents:
        path = tmp_path / f"{kind}.npz"
        np.savez(path, **contents[kind])
    elif kind == "junk":
        path = tmp_path / "junk.npz"
        path.write_bytes(b"not a zip")
    elif kind == "syntax":
        path = tmp_path / "calib.py"
        path.write_text("def load_data(:\n")
    else:
        path = tmp_path / "missing.npz"
    return path


BAD_INPUTS = {
    # name: (how to call, needle in the message)
    "model is a directory": (lambda m, t: [str(t)], "is a directory"),
    "opset 7": (lambda m, t: [str(_with_opset(t, 7))], "opset 7 is not supported"),
    "opset 24": (lambda m, t: [str(_with_opset(t, 24))], "opset 24 is not supported"),
    "ratio not a number": (lambda m, t: [str(m), "--ratio", "abc"], "'abc' is not a valid float"),
    "ratio nan": (lambda m, t: [str(m), "--ratio", "nan"], "--ratio must be in [0, 1)"),
    "ratio 1": (lambda m, t: [str(m), "--ratio", "1"], "--ratio must be in [0, 1)"),
    "round-to 0": (lambda m, t: [str(m), "--round-to", "0"], "--round-to must be a positive integer"),
    "unknown option": (lambda m, t: [str(m), "--frobnicate"], "No such option"),
    "calib missing": (lambda m, t: [str(m), "--calib", str(_calib(t, "missing"))], "no such file"),
    "calib unreadable": (lambda m, t: [str(m), "--calib", str(_calib(t, "junk"))], "unreadable"),
    "calib names": (lambda m, t: [str(m), "--calib", str(_calib(t, "names"))], "unknown input name"),
    "calib dtype": (lambda m, t: [str(m), "--calib", str(_calib(t, "dtype"))], "dtype int64"),
    "calib rank": (lambda m, t: [str(m), "--calib", str(_calib(t, "rank"))], "rank 3"),
    "calib script": (lambda m, t: [str(m), "--calib", str(_calib(t, "syntax"))], "SyntaxError"),
    "output folder cannot be made": (lambda m, t: [str(m), "-o", str(m / "x.onnx")], "is not a directory"),
    "output over input": (lambda m, t: [str(m), "-o", str(m)], "an output never replaces a file the run reads"),
}


def _with_opset(tmp_path: Path, version: int) -> Path:
    m = onnx.load(MODELS / "mlp.onnx")
    m.opset_import[0].version = version
    path = tmp_path / f"opset{version}.onnx"
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_end_to_end(model: Path, tmp_path: Path, case: str):
    make_args, needle = BAD_INPUTS[case]
    args = make_args(model, tmp_path)
    files_before = {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()}
    res = run_cli(*args)
    _one_line_exit_2(res, needle)
    assert {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()} == files_before, "a file was written or changed"
    assert not list(tmp_path.rglob("*.tmp"))


def test_debug_shows_the_traceback(tmp_path: Path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00garbage\xff" * 10)
    res = cli(str(path), "--debug")
    assert res.returncode != 0 and "Traceback" in res.stderr and "BadInputError" in res.stderr


@pytest.mark.parametrize("name", ["missing.onnx", "empty.onnx", "junk.onnx", "cut.onnx"])
def test_analyze_bad_input_is_one_line_exit_2(tmp_path: Path, name: str):
    path = tmp_path / name
    if name == "empty.onnx":
        path.write_bytes(b"")
    elif name == "junk.onnx":
        path.write_bytes(b"\x00garbage\xff" * 10)
    elif name == "cut.onnx":
        data = (MODELS / "resnet_small.onnx").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    res = run_cli("analyze", str(path))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_unwritable_output_is_one_line_exit_2(model: Path, tmp_path: Path):
    res = run_cli(str(model), "-o", "/proc/onnxprune-test.onnx")
    _one_line_exit_2(res, "cannot write there")


def _nothing_prunable_models(tmp_path: Path) -> dict[str, Path]:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    models = {}
    gemm = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm")], "g", [x],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                             [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")])
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    inits = [helper.make_tensor("wq", TensorProto.FLOAT8E4M3FN, [8, 4], np.ones(32).tolist()),
             numpy_helper.from_array(np.array(0.1, np.float32), "s")]
    qdq = helper.make_graph([helper.make_node("DequantizeLinear", ["wq", "s"], ["w"], name="dq"),
                             helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                             helper.make_node("Relu", ["h"], ["y"], name="relu")], "g", [x],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    for name, graph in (("blocked", gemm), ("no_layers", relu), ("quantized", qdq)):
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        m.ir_version = 9
        models[name] = tmp_path / f"{name}.onnx"
        onnx.save(m, models[name])
    return models


@pytest.mark.parametrize("name,needle", [("blocked", "every channel group (1) is blocked"),
                                         ("no_layers", "no Conv, ConvTranspose, Gemm or MatMul layer"),
                                         ("quantized", "weights of 1 layers are quantized")])
def test_nothing_prunable_exits_0_with_a_clear_message(tmp_path: Path, name: str, needle: str):
    path = _nothing_prunable_models(tmp_path)[name]
    res = run_cli(str(path))
    assert res.returncode == 0, res.stderr
    assert "nothing to prune: " in res.stdout and needle in res.stdout
    out = path.with_name(f"{name}.pruned.onnx")
    assert out.read_bytes() == path.read_bytes()


# --- element types numpy lacks --------------------------------------------------------------------

def test_bfloat16_model_matches_the_oracle(tmp_path: Path):
    """bfloat16 weights are read with onnx (ml_dtypes), sliced, and written back as bfloat16; the
    pruned model computes what the zeroed original computes (ONNX's reference evaluator: ONNX
    Runtime has no CPU bfloat16 kernels). The same on the large-model path, bit for bit."""
    import ml_dtypes
    import numpy as np
    from conftest import prune_with_oracle
    from large_model import check_lazy_path
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(ml_dtypes.bfloat16), n)
             for n, s in (("w0", [16, 32]), ("b0", [32]), ("w1", [32, 24]), ("w2", [24, 4]))]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["m0"]), helper.make_node("Add", ["m0", "b0"], ["h0"]),
             helper.make_node("Relu", ["h0"], ["a0"]), helper.make_node("MatMul", ["a0", "w1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["a1"]), helper.make_node("MatMul", ["a1", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "bf16", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [2, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [2, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ctx, zeroed = prune_with_oracle(model, ratio=0.5)
    pruned = ctx.pruned
    onnx.checker.check_model(pruned, full_check=True)
    assert {t.data_type for t in pruned.graph.initializer} == {TensorProto.BFLOAT16}
    assert {t.name: list(t.dims) for t in pruned.graph.initializer} == {"w0": [16, 16], "b0": [16], "w1": [16, 12],
                                                                       "w2": [12, 4]}
    x = rng.standard_normal((2, 16)).astype(ml_dtypes.bfloat16)
    want = ReferenceEvaluator(zeroed).run(None, {"x": x})[0].astype(np.float32)
    got = ReferenceEvaluator(pruned).run(None, {"x": x})[0].astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)  # bfloat16 sums in another order
    for ratio in (0.5, 0.0):  # sliced in memory; copied straight from the input's data file
        (tmp_path / str(ratio)).mkdir()
        check_lazy_path(model, tmp_path / str(ratio), ratio=ratio)
