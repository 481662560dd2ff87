"""Hostile inputs a new user gives by mistake: each class is refused with exit 2 and one line
naming the problem, nothing written, the inputs untouched."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _conv(tmp_path: Path, batch: int | str = 1) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _refused(tmp_path: Path, *args: str, needle: str) -> None:
    before = _digests(tmp_path)
    res = run_cli(*args, "-o", str(tmp_path / "out.onnx"))
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert _digests(tmp_path) == before  # nothing written, nothing changed


@pytest.mark.parametrize("spec,needle", [
    ("x:0x3x8x8", "dimensions must be positive"),
    ("nope:1x3x8x8", "unknown input(s): nope"),
    ("x:1x3x8", "rank 3, model expects 4"),
    ("x:1x3x9x9", "dimension 2 is 9, the model fixes it at 8"),
])
def test_input_shape_that_does_not_fit_the_model_is_refused(tmp_path: Path, spec: str, needle: str) -> None:
    """--input-shape is checked against the model's inputs before any work, not silently ignored
    (prune) or left to ONNX Runtime's error (bench, profile)."""
    model = _conv(tmp_path, batch="N")
    _refused(tmp_path, str(model), "--input-shape", spec, needle=needle)
    if spec != "x:0x3x8x8":
        res = run_cli("bench", str(model), "--input-shape", spec.replace("N", "1"), "--rounds", "2")
        assert res.returncode == 2 and needle in res.stderr, res.stderr


@pytest.mark.parametrize("script,needle", [
    ("def load_data():\n    raise RuntimeError('boom')\n", "load_data() failed (RuntimeError: boom)"),
    ("def load_data():\n    return 5\n", "load_data() failed (TypeError"),
    ("import numpy as np\ndef load_data():\n    yield {'x': np.zeros((2, 3, 8, 8), np.float32)}\n"
     "    raise ValueError('late')\n", "load_data() failed (ValueError: late)"),
    ("raise SystemExit(0)\n", "failed to load (SystemExit: 0)"),
    ("import sys\ndef load_data():\n    sys.exit(0)\n", "load_data() failed (SystemExit: 0)"),
])
def test_calibration_script_that_fails_is_bad_input(tmp_path: Path, script: str, needle: str) -> None:
    """A .py calibration script is the user's code: whatever it raises (even SystemExit, which
    otherwise ended the run with exit 0 and nothing written) is exit 2 naming the script."""
    model = _conv(tmp_path)
    (tmp_path / "calib.py").write_text(script)
    _refused(tmp_path, str(model), "--calib", str(tmp_path / "calib.py"), needle=needle)


@pytest.mark.parametrize("shape,target", [("input_ids:1x32", 0.7), ("input_ids:1x8", 0.5)])
def test_flops_target_is_judged_on_the_count_the_summary_prints(shape: str, target: float) -> None:
    """A --target-flops search counts at --input-shape, as the summary does: "met" means the
    summary's after/before is at most the target, and not far under it (the cost model is
    counted at the same shapes, so the search does not over-prune)."""
    from onnxprune import prune
    from onnxprune.runtime.session import parse_input_shapes

    model = ROOT / "models" / "bert_dynamo.onnx"
    result = prune(model, target_flops=target, input_shapes=parse_input_shapes([shape]))
    report = result.report
    ratio = report["after"]["flops"] / report["before"]["flops"]
    assert report["search"]["status"] == "met"
    assert report["search"]["achieved"] == report["after"]["flops"]
    assert report["search"]["baseline"] == report["before"]["flops"]
    assert target - 0.1 < ratio <= target


@pytest.mark.parametrize("where", ["model", "calib", "calib-folder", "latency-table", "config", "external-data"])
def test_an_input_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path, where: str) -> None:
    """Opening a FIFO blocks until something writes to it (the run hung); a FIFO, socket or
    device given as any file the run reads is exit 2 naming it."""
    import os

    model = _conv(tmp_path)
    fifo = tmp_path / "f.npz"
    args = [str(model)]
    if where == "model":
        fifo = tmp_path / "f.onnx"
        args = [str(fifo)]
    elif where == "calib":
        args += ["--calib", str(fifo)]
    elif where == "calib-folder":
        (tmp_path / "cal").mkdir()
        np.savez(tmp_path / "cal" / "a.npz", x=np.zeros((2, 3, 8, 8), np.float32))
        fifo = tmp_path / "cal" / "b.npz"
        args += ["--calib", str(tmp_path / "cal")]
    elif where == "latency-table":
        fifo = tmp_path / "t.json"
        args += ["--target-latency", "1ms", "--latency-table", str(fifo)]
    elif where == "config":
        fifo = tmp_path / "c.toml"
        args += ["--config", str(fifo)]
    else:
        onnx.save(onnx.load(model), model, save_as_external_data=True, location="m.data", size_threshold=0)
        fifo = tmp_path / "m.data"
        fifo.unlink()
    os.mkfifo(fifo)
    _refused(tmp_path, *args, needle="is a FIFO, not a regular file")


def test_initializers_listed_as_graph_inputs_stay_inputs(tmp_path: Path) -> None:
    """Initializers that are also graph inputs (overridable defaults; every weight in IR < 4
    models) keep their place in the pruned model's inputs, with their pruned dims, so the
    model's interface is the input's."""
    from onnxprune import prune

    model = onnx.load(_conv(tmp_path))
    weights = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer]
    model.graph.input.insert(0, weights[0])  # an input order that is not the initializers' order
    model.graph.input.append(weights[1])
    result = prune(model, ratio=0.5)
    names = [vi.name for vi in result.model.graph.input]
    assert names == [vi.name for vi in model.graph.input] == ["w1", "x", "w2"]
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in result.model.graph.input}
    inits = {t.name: list(t.dims) for t in result.model.graph.initializer}
    assert dims["w1"] == inits["w1"] and inits["w1"][0] < 8
    onnx.checker.check_model(result.model, full_check=True)


def test_file_names_that_are_not_utf8_work_for_every_output(tmp_path: Path) -> None:
    """A legal file name in another encoding (Python keeps its bytes as surrogates) is a name
    like any other: the model, --report and --html are written (the HTML failed with an
    internal error: its text could not be encoded)."""
    import os

    model = _conv(tmp_path)
    odd = tmp_path / os.fsdecode(b"caf\xe9.onnx")
    model.rename(odd)
    report, html = tmp_path / os.fsdecode(b"r\xe9.json"), tmp_path / os.fsdecode(b"h\xe9.html")
    # a real process: click's test runner cannot print such names, a terminal can
    res = subprocess.run([sys.executable, "-m", "onnxprune", odd.name, "--report", report.name, "--html", html.name],
                         cwd=tmp_path, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    assert b"ONNX Runtime" not in res.stderr  # the written model was checked in ONNX Runtime, not skipped
    assert (tmp_path / os.fsdecode(b"caf\xe9.pruned.onnx")).is_file() and report.is_file()
    assert "caf\\udce9" in html.read_text(encoding="utf-8")


@pytest.mark.parametrize("line,needle", [
    ("calib-samples = true", "'calib-samples' must be an integer, got True"),
    ("round-to = 8.5", "'round-to' must be an integer, got 8.5"),
    ("ratio = true", "'ratio' must be a value, not true/false"),
    ("calib-bgr = 1", "'calib-bgr' must be true or false, got 1"),
])
def test_config_value_of_the_wrong_toml_type_is_refused(tmp_path: Path, line: str, needle: str) -> None:
    """A TOML value is typed: `true` for a count ran with 1, `8.5` for an integer ran with 8.
    A value whose type does not fit its option is exit 2 naming the key; one string for an
    option given several times (input-shape) is taken as a list of one."""
    model = _conv(tmp_path, batch="N")
    (tmp_path / "c.toml").write_text(line + "\n")
    _refused(tmp_path, str(model), "--config", str(tmp_path / "c.toml"), "--calib", str(tmp_path / "c.npz"),
             needle=needle)
    (tmp_path / "c.toml").write_text('input-shape = "x:2x3x8x8"\nround-to = 2\n')
    res = run_cli(str(model), "--config", str(tmp_path / "c.toml"), "-o", str(tmp_path / "out.onnx"))
    assert res.returncode == 0 and "x 2x3x8x8" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize("failing", ["report", "html"])
def test_a_report_that_cannot_be_written_leaves_no_output_behind(tmp_path: Path, monkeypatch, failing: str) -> None:
    """All or nothing: when a report fails to be written (after the paths were checked), the
    model and any report already written are removed, and the run is an error."""
    import onnxprune.io as io

    real = io.atomic_write_text

    def write(path, text):
        if Path(path).suffix == (".json" if failing == "report" else ".html"):
            raise io.BadInputError(f"{path}: cannot write here (disk full)")
        real(path, text)

    monkeypatch.setattr(io, "atomic_write_text", write)
    model = tmp_path / "m.onnx"
    model.write_bytes((ROOT / "models" / "digits_cnn.onnx").read_bytes())
    res = run_cli(str(model), "-o", str(tmp_path / "out.onnx"), "--report", str(tmp_path / "r.json"),
                  "--html", str(tmp_path / "r.html"), "-q")
    assert res.returncode == 2 and "disk full" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
