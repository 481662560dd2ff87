"""The files a run touches: no output replaces an input or another output, the written model
loads in ONNX Runtime, temporary files never outlive the run (signals, long names)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli import MODELS, digest, run_cli

#: Every option of every command that names a file the command writes.
OUTPUT_FLAGS = {"prune": ["-o", "--report", "--html"], "profile": ["-o"], "bench": ["--json"],
                "sensitivity": ["--json", "--html"]}
#: ... and every option naming a file it reads.
INPUT_FLAGS = {"prune": ["--latency-table", "--calib", "--config"], "profile": [], "bench": [], "analyze": [],
               "sensitivity": ["--calib"]}


def test_every_file_option_is_known_as_input_or_output():
    """A new file option must be added to the tables above, so the clash test covers it."""
    import click

    from onnxprune.cli import main

    for name, command in main.commands.items():
        files = {p.opts[0] for p in command.params if isinstance(p, click.Option) and isinstance(p.type, click.Path)}
        assert files == set(OUTPUT_FLAGS.get(name, [])) | set(INPUT_FLAGS[name]), name


def _inputs(tmp_path: Path) -> dict[str, Path]:
    """A model with external data and every other kind of file a prune run reads."""
    model = onnx.load(MODELS / "mlp.onnx")
    path = tmp_path / "m.onnx"
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.data",
              size_threshold=0)
    x = {i.name: np.zeros([d.dim_value or 1 for d in i.type.tensor_type.shape.dim], np.float32)
         for i in model.graph.input}
    np.savez(tmp_path / "calib.npz", **x)
    (tmp_path / "calib").mkdir()
    np.savez(tmp_path / "calib" / "a.npz", **x)
    (tmp_path / "table.json").write_text('{"format": "onnxprune-latency-table"}\n')
    (tmp_path / "prune.toml").write_text("ratio = 0.3\n")
    (tmp_path / "old-report.json").write_text("{}\n")  # an earlier output, and a link to it
    (tmp_path / "alias.json").symlink_to("old-report.json")
    (tmp_path / "link.onnx").symlink_to("m.onnx")
    os.link(path, tmp_path / "hard.onnx")
    return {"model": path, "data": tmp_path / "m.data", "link": tmp_path / "link.onnx", "hard": tmp_path / "hard.onnx"}


def _command(command: str, flag: str, target: Path, model: Path) -> list[str]:
    if command == "prune":
        return [str(model), flag, str(target)]
    if command == "sensitivity":  # calibration data is required
        return [command, str(model), "--calib", str(model.parent / "calib.npz"), flag, str(target)]
    return [command, str(model), flag, str(target)]


_CLASHES = [(c, f, t) for c, flags in OUTPUT_FLAGS.items() for f in flags for t in ("model", "data", "link", "hard")]
_CLASHES += [("prune", f, t) for f in OUTPUT_FLAGS["prune"] for t in ("calib", "calib folder", "table", "config")]
_CLASHES += [("prune", "outputs", t) for t in ("report=-o", "html=report", "html=-o data", "force over input",
                                                 "report=html via link")]
#: Outputs a rename would not write into but replace: a symbolic link (/dev/stdout), a device.
_SPECIAL = {"symlink": ("alias.json", "is a symbolic link"), "device": (os.devnull, "is not a regular file")}
_CLASHES += [(c, f, t) for c, flags in OUTPUT_FLAGS.items() for f in flags for t in _SPECIAL]


def _prune_args(target: str, flag: str, tmp: Path, model: Path) -> list[str]:
    reads = {"calib": ["--calib", str(tmp / "calib.npz")], "calib folder": ["--calib", str(tmp / "calib")],
             "table": ["--target-latency", "1ms", "--latency-table", str(tmp / "table.json")],
             "config": ["--config", str(tmp / "prune.toml")]}
    files = {"calib": tmp / "calib.npz", "calib folder": tmp / "calib" / "a.npz", "table": tmp / "table.json",
             "config": tmp / "prune.toml"}
    if target in reads:
        return [str(model), *reads[target], flag, str(files[target])]
    out = str(tmp / "out.onnx")
    return {"report=-o": [str(model), "-o", out, "--report", out],
            "html=report": [str(model), "--report", str(tmp / "r.json"), "--html", str(tmp / "r.json")],
            "html=-o data": [str(model), "-o", out, "--html", out + ".data"],
            "force over input": [str(model), "-o", str(model), "--force"],
            "report=html via link": [str(model), "--report", str(tmp / "old-report.json"),
                                     "--html", str(tmp / "alias.json")]}[target]


@pytest.mark.parametrize("command,flag,target", _CLASHES)
def test_no_output_replaces_an_input_or_another_output(tmp_path: Path, command: str, flag: str, target: str):
    files = _inputs(tmp_path)
    if target in files:
        args = _command(command, flag, files[target], files["model"])
    elif target in _SPECIAL:
        args = _command(command, flag, tmp_path / _SPECIAL[target][0], files["model"])
    else:
        args = _prune_args(target, flag, tmp_path, files["model"])
    before = {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()}
    res = run_cli(*args)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    needles = [_SPECIAL[target][1]] if target in _SPECIAL else ["an output never replaces a file the run reads",
                                                                   "each output needs its own file"]
    assert any(n in res.stderr for n in needles), res.stderr
    assert {p: digest(p) for p in tmp_path.rglob("*") if p.is_file()} == before, "a file was written or changed"
    assert (tmp_path / "link.onnx").is_symlink() and (tmp_path / "alias.json").is_symlink()
    assert Path(os.devnull).is_char_device()


# --- the written model loads in ONNX Runtime -------------------------------------------------

def test_a_written_model_that_onnx_runtime_refuses_fails_the_run(tmp_path: Path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import onnxprune.pipeline as pipeline

    real_save = pipeline.save_model

    def save_then_break(model, path, graph=None):  # a writer bug ONNX Runtime notices
        written = real_save(model, path, graph)
        broken = onnx.load(str(path))
        broken.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
        onnx.save(broken, str(path))
        return written

    monkeypatch.setattr(pipeline, "save_model", save_then_break)
    out = tmp_path / "out.onnx"
    res = run_cli(str(MODELS / "mlp.onnx"), "-o", str(out), "--report", str(tmp_path / "r.json"))
    assert res.returncode == 1, res.stderr
    assert "the pruned model does not load in ONNX Runtime" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [], "the refused model (or a report) was left behind"

    monkeypatch.setattr(pipeline, "save_model", real_save)  # a model ONNX Runtime cannot run at all
    custom = onnx.load(MODELS / "mlp.onnx")
    relu = next(n for n in custom.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "Swish", "com.example"
    custom.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(custom, tmp_path / "custom.onnx")
    res = run_cli(str(tmp_path / "custom.onnx"), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "cannot load the input model either" in res.stderr and out.exists()


# --- temporary files ---------------------------------------------------------------------------

_BLOCK_THE_RENAME = """
import os, sys, time
real_replace = os.replace
def slow_replace(src, dst):
    print(src, flush=True)  # the temporary file exists: now is the time for the signal
    time.sleep(60)
    real_replace(src, dst)
os.replace = slow_replace
from onnxprune.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_the_write_removes_the_temporary_file(tmp_path: Path, signum: int):
    out = tmp_path / "out.onnx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _BLOCK_THE_RENAME, str(MODELS / "mlp.onnx"), "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        temp = Path(proc.stdout.readline().strip())
        assert temp.parent == tmp_path and temp.exists(), proc.stderr.read() if proc.poll() is not None else temp
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert "interrupted" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == [], "a temporary file or a partial output was left behind"


def test_output_names_up_to_the_file_name_limit_work(tmp_path: Path):
    out = tmp_path / ("m" * 245 + ".onnx")  # 250 characters: legal, with no room for ".<random>.tmp"
    report = tmp_path / ("é" * 122 + "r.json")  # 250 bytes in UTF-8
    html = tmp_path / ("h" * 255)
    res = run_cli(str(MODELS / "mlp.onnx"), "-o", str(out), "--report", str(report), "--html", str(html))
    assert res.returncode == 0, res.stderr
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert report.exists() and html.exists()
    assert sorted(tmp_path.iterdir()) == sorted([out, report, html]), "temporary files left behind"
    res = run_cli(str(MODELS / "mlp.onnx"), "-o", str(tmp_path / ("m" * 256)))
    assert res.returncode == 2 and "over the file system's limit of 255" in res.stderr
