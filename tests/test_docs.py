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
