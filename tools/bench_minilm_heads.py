#!/usr/bin/env python
"""MiniLM-L6 with attention heads and/or MLP units removed: mean embedding cosine on held-out
sentences against the original, and parameters.

Needs ``tools/export_minilm.py``'s output (``build/minilm/``: the model, ``tokenizer/`` and a
calibration folder such as ``tools/minilm_calib_buckets.py`` writes) and ``transformers`` for
the tokenizer. Each case is KINDS:RATIO:CRITERION (criterion ``default``: fluctuation with
calibration data); pruned models are written to ``--out``, to be timed side by side with
``onnxprune bench ORIGINAL PRUNED... --threads 1 --input-shape input_ids:1x128 ...``.

Usage::

    python tools/bench_minilm_heads.py heads:0.25:default heads,channels:0.5:obs
        [--model build/minilm/minilm_torchscript.onnx] [--calib build/minilm/calib_buckets]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, TOOLS_DIR)
sys.path.insert(0, REPO_ROOT)

import minilm_data as md
import numpy as np
import onnx

from onnxprune.context import PruneOptions
from onnxprune.passes.builtin import default_passes
from onnxprune.pipeline import Pipeline


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+", help="KINDS:RATIO:CRITERION, e.g. heads:0.25:default")
    ap.add_argument("--model", default=os.path.join(REPO_ROOT, "build", "minilm", "minilm_torchscript.onnx"))
    ap.add_argument("--calib", default=os.path.join(REPO_ROOT, "build", "minilm", "calib_buckets"))
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "build", "minilm", "results"))
    ap.add_argument("--sentences", type=int, default=150)
    args = ap.parse_args(argv)

    embed = md.heldout_embedder(args.model, args.sentences)

    reference = embed(args.model)
    os.makedirs(args.out, exist_ok=True)
    print("| prune | ratio | criterion | params | cosine | time |")
    print("|---|---|---|---|---|---|")
    for case in args.cases:
        kinds, ratio, criterion = case.split(":")
        start = time.time()
        options = PruneOptions(ratio=float(ratio), criterion=None if criterion == "default" else criterion,
                               calibration=args.calib, prune=tuple(kinds.split(",")))
        ctx = Pipeline(default_passes(options)).run(args.model, options)
        cosine = float((embed(ctx.pruned) * reference).sum(1).mean())
        name = f"{os.path.basename(args.model)[:-5]}_{kinds.replace(',', '+')}_{ratio}_{criterion}.onnx"
        onnx.save(ctx.pruned, os.path.join(args.out, name))
        before, after = ctx.report["before"]["params"], ctx.report["after"]["params"]
        print(f"| {kinds} | {ratio} | {criterion} | {before / 1e6:.2f}M → {after / 1e6:.2f}M | {cosine:.4f} "
              f"| {time.time() - start:.0f} s |", flush=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
