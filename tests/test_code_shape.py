"""The shape of the code: layers that point one way, no function over 80 lines (also run by .ci/run)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_function_length", ROOT / "tools" / "check_function_length.py")
lengths = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lengths)


def test_no_function_in_the_package_grows_past_the_limit():
    assert lengths.main(["check", str(ROOT / "onnxprune")]) == 0


def test_the_length_check_counts_decorators_and_nested_functions(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"        x{i} = {i}" for i in range(lengths.MAX_LINES - 3))
    (pkg / "m.py").write_text(f"class C:\n    @staticmethod\n    def f():\n{body}\n        return 0\n\n\ndef g():\n    return 1\n")
    assert lengths.long_functions(pkg) == {}  # at the limit (the decorator counted): allowed
    (pkg / "m.py").write_text((pkg / "m.py").read_text().replace("return 0", "y = 0\n        return y"))
    assert lengths.long_functions(pkg) == {"pkg/m.py:C.f": lengths.MAX_LINES + 1}


def test_the_import_layers_contract_is_kept():
    pytest.importorskip("importlinter", reason="import-linter comes with the [dev] extra")
    res = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:]


def test_only_the_cli_switches_the_terminal_ui():
    """Progress bars and the log handler are the CLI's to turn on: library code never does."""
    import ast

    switches = {"enable", "install"}
    offenders = []
    for path in sorted((ROOT / "onnxprune").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in ("onnxprune/cli.py", "onnxprune/report/progress.py", "onnxprune/report/log.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.endswith(("progress", "report.log")):
                offenders += [f"{rel}: imports {a.name}" for a in node.names if a.name in switches]
    assert not offenders, offenders
