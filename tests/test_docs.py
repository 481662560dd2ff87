"""The Python examples in README.md and docs/*.md run, as written, on a small real model."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks():
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL)):
            yield pytest.param(block, id=f"{doc.name}-{i}")


@pytest.mark.parametrize("code", list(_blocks()))
def test_example_runs(code, tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "models" / "digits_cnn.onnx", tmp_path / "model.onnx")
    shutil.copy(ROOT / "models" / "digits_calib.npz", tmp_path / "calib.npz")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})
    assert (tmp_path / "model.onnx").read_bytes() == (ROOT / "models" / "digits_cnn.onnx").read_bytes()


def _quickstart() -> tuple[list[str], str]:
    """The README's quickstart commands (the first bash block under "## Quickstart") and the output
    shown after them (the text block that follows)."""
    section = ROOT.joinpath("README.md").read_text().split("## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    commands = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1).strip().splitlines()
    shown = re.search(r"```text\n(.*?)```", section, re.DOTALL).group(1)
    return commands, shown


def test_quickstart_runs_and_prints_what_the_readme_shows(tmp_path):
    """On a fresh copy of the shipped files: the install is the README's (skipped here: the suite
    runs in an installed environment); every other line runs as written."""
    import shlex
    import subprocess
    import sys

    commands, shown = _quickstart()
    assert commands[0].startswith("pip install") and len(commands) == 3
    (tmp_path / "models").mkdir()
    for name in ("digits_cnn.onnx", "digits_calib.npz", "digits_eval.npz"):
        shutil.copy(ROOT / "models" / name, tmp_path / "models" / name)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    programs = {"onnxprune": [sys.executable, "-m", "onnxprune"], "python": [sys.executable]}
    outputs = []
    for line in commands[1:]:
        argv = shlex.split(line)
        res = subprocess.run(programs[argv[0]] + argv[1:], cwd=tmp_path, capture_output=True, text=True)
        assert res.returncode == 0, f"{line}\n{res.stderr}"
        assert "warning" not in res.stderr, res.stderr  # calibrated: no warning on a first run
        outputs.append(res.stdout)
    assert outputs[-1] == shown
    section = ROOT.joinpath("README.md").read_text().split("## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    params, flops = re.search(r"params\s+−(\S+%), FLOPs\s+−(\S+%)", section).groups()  # the prose's numbers
    assert f"-{params}" in outputs[0] and f"-{flops}" in outputs[0]
