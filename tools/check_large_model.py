#!/usr/bin/env python
"""Prune a generated model over 2 GB (external data) and report peak memory against its size.

The model (a conv stem and a deep MLP of 8192x8192 fp32 weights, see ``tests/large_model.py``)
is written to a temporary folder, pruned through the CLI in a fresh interpreter, and the peak
RSS above that interpreter's baseline is compared with the model's size on disk (the bound is
1.5x). Everything generated is deleted at the end unless ``--keep``.

Usage::

    python tools/check_large_model.py [--hidden 8192] [--layers 10] [--ratio 0.3] [--dir DIR] [--keep]

Needs about 4 GB of free disk and about the model's size of free memory. Exit status 1 if the
bound is missed or pruning fails.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from large_model import disk_size, make_large_model, prune_and_measure  # noqa: E402

BOUND = 1.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--ratio", default="0.3")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the model [default: a temporary folder]")
    ap.add_argument("--keep", action="store_true", help="keep the generated and pruned models")
    ap.add_argument("--lazy-load-threshold", type=int, default=None,
                    help="override onnxprune.io.LAZY_LOAD_THRESHOLD (bytes) in the pruning process")
    args = ap.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="onnxprune-large-", dir=args.dir))
    try:
        model = folder / "large_mlp.onnx"
        t0 = time.perf_counter()
        size = make_large_model(model, hidden=args.hidden, layers=args.layers)
        print(f"generated {model} ({size / 1e9:.2f} GB on disk) in {time.perf_counter() - t0:.1f} s")
        out = folder / "large_mlp.pruned.onnx"
        probe = prune_and_measure(model, out, "--ratio", args.ratio, lazy_load_threshold=args.lazy_load_threshold)
        print(probe["stdout"].strip())
        if probe["code"] != 0:
            print(probe["stderr"].strip(), file=sys.stderr)
            return 1
        ratio = probe["extra"] / size
        print(f"size on disk       {size / 1e9:8.2f} GB")
        print(f"interpreter        {probe['baseline'] / 1e9:8.2f} GB (imports, before pruning)")
        print(f"peak above that    {probe['extra'] / 1e9:8.2f} GB = {ratio:.2f}x the size on disk (bound {BOUND}x)")
        print(f"pruning time       {probe['seconds']:8.1f} s (load, analyze, score, rewrite, check, save)")
        print(f"output             {disk_size(out) / 1e9:8.2f} GB, weights in {out.name}.data")
        return 0 if ratio < BOUND else 1
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
