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


def test_overwriting_input_needs_force(model: Path):
    before = digest(model)
    res = cli(str(model), "-o", str(model))
    assert res.returncode == 2 and "--force" in res.stderr
    assert digest(model) == before
    res = cli(str(model), "-o", str(model), "--force")
    assert res.returncode == 0 and digest(model) != before


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
