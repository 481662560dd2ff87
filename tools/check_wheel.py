#!/usr/bin/env python
"""Check a built wheel: it installs into a throwaway virtual environment (``--no-deps``: fast,
no network) and its metadata has the entry point, the dependencies and the extras.

    python -m build --wheel --outdir dist && python tools/check_wheel.py dist/onnxprune-*.whl
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import venv
from pathlib import Path

EXTRAS = ("cpu", "gpu", "images", "quantize", "dev")

PROBE = f"""
import importlib.metadata as md, sys
dist = md.distribution("onnxprune")
extras = set(dist.metadata.get_all("Provides-Extra") or [])
requires = dist.requires or []
entry = [e for e in dist.entry_points if e.group == "console_scripts" and e.name == "onnxprune"]
problems = [f"no extra {{x}}" for x in {EXTRAS!r} if x not in extras]
problems += [f"no requirement {{r}}" for r in ("onnx", "onnx-graphsurgeon", "numpy", "click", "tqdm")
             if not any(q.split(";")[0].replace(" ", "").startswith(r) for q in requires)]
problems += [] if any("onnxruntime" in q and 'extra == "cpu"' in q for q in requires) else ["cpu extra lacks onnxruntime"]
problems += [] if any("onnx-ir" in q and 'extra == "quantize"' in q for q in requires) else ["quantize extra lacks onnx-ir"]
problems += [] if entry and entry[0].value == "onnxprune.cli:main" else ["no onnxprune console script"]
files = {{str(f) for f in dist.files or []}}
problems += [f"{{f}} missing" for f in ("onnxprune/cli.py", "onnxprune/report/progress.py",
                                      "onnxprune/calibration/images.py", "onnxprune/runtime/quantize.py") if f not in files]
print("\\n".join(problems) or "ok")
sys.exit(1 if problems else 0)
"""


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].endswith(".whl"):
        print("usage: check_wheel.py WHEEL", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        venv.create(tmp, with_pip=True)
        python = str(Path(tmp) / "bin" / "python")
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", argv[0]], check=True)
        res = subprocess.run([python, "-c", PROBE], cwd=tmp, capture_output=True, text=True)
    print(f"{argv[0]}: {res.stdout.strip() or res.stderr.strip()}")
    return res.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
