#!/usr/bin/env python
"""MiniLM-L6's FFN units pruned at ``--ratio``, then refit in several ways: mean embedding
cosine on held-out sentences (the original's embedding as reference), one channel selection
shared by every variant so that only the refit differs.

A variant is ``+``-joined parts: ``lstsq`` (the default refit: the layers that lost inputs, the
FFN down-projections, with the residual's drift in their target), ``bias``, ``nonlinear`` or
``none`` (the other ``--reconstruct`` modes), ``rSTRENGTH`` (a fixed ``--ridge``), and the unpruned layers to refit
as well, downstream of the first pruned one, toward the original's outputs: ``q``, ``k``, ``v``
(attention projections), ``o`` (attention output projection, its target with the residual's
drift too) and ``fc1`` (FFN up-projection, the original's kept outputs).

Needs ``tools/export_minilm.py``'s output (``build/minilm/``), a calibration folder from
``tools/minilm_calib_buckets.py`` and ``transformers`` for the tokenizer.

    python tools/bench_minilm_refit.py lstsq lstsq+o+fc1 lstsq+q+k+v+o+fc1 bias lstsq+r0.01
    python tools/bench_minilm_refit.py lstsq --calib build/minilm/calib_3072 --criterion fluctuation
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, TOOLS_DIR)
sys.path.insert(0, REPO_ROOT)

import minilm_data as md  # noqa: E402
import numpy as np  # noqa: E402

from onnxprune.context import PruneOptions  # noqa: E402
from onnxprune.passes import builtin  # noqa: E402
from onnxprune.passes.builtin import Analyze, Calibrate, Normalize, Reconstruct, Rewrite, Score, Select  # noqa: E402
from onnxprune.pipeline import Pipeline  # noqa: E402

#: the TorchScript export's node names of each layer's projections
LAYER = "/bert/encoder/layer.{}/"
PROJECTIONS = {"q": "attention/self/query/MatMul", "k": "attention/self/key/MatMul",
               "v": "attention/self/value/MatMul", "o": "attention/output/dense/MatMul",
               "fc1": "intermediate/dense/MatMul"}
HIDDEN, LAYERS = 384, 6


def with_extra(refit_layers, extra: list[str]):
    """``refit_layers`` plus the unpruned projections ``extra`` of the layers after the first
    (layer 0's attention sees no pruning upstream), in graph order as ``reconstruct`` takes them."""
    def refit(ctx) -> list[tuple]:
        base = {entry[0]: entry for entry in refit_layers(ctx)}
        keep = ctx.analysis.plan.keep_fn(ctx.selection.removed)
        outputs = {cut.node: keep(cut.atoms) for cut in ctx.analysis.plan.cuts if cut.role == "weight_out"}
        for i in range(LAYERS):
            for key in extra:
                name = LAYER.format(i) + PROJECTIONS[key]
                if name not in base and (key == "fc1" or i > 0):
                    base[name] = (name, HIDDEN, HIDDEN, outputs.get(name))
        return [base[n.name] for n in ctx.original.nodes if n.name in base]
    return refit


def run_variant(ctx, variant: str) -> int:
    """Rewrite and refit ``ctx`` (selected already) as ``variant`` says; the layers refit."""
    parts = variant.split("+")
    extra = [p for p in parts if p in PROJECTIONS]
    ridge = next((float(p[1:]) for p in parts if p.startswith("r")), None)
    mode = next((p for p in parts if p in ("bias", "none", "nonlinear")), "lstsq")
    ctx.options = dataclasses.replace(ctx.options, ridge=ridge, reconstruct=mode)
    saved = builtin.refit_layers
    builtin.refit_layers = with_extra(saved, extra)
    try:
        Rewrite().run(ctx)
        Reconstruct().run(ctx)
    finally:
        builtin.refit_layers = saved
    return len(ctx.report.get("reconstruction", {}).get("layers", []))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--model", default=os.path.join(REPO_ROOT, "build", "minilm", "minilm_torchscript.onnx"))
    ap.add_argument("--calib", default=os.path.join(REPO_ROOT, "build", "minilm", "calib_buckets"))
    ap.add_argument("--sentences", type=int, default=150, help="held-out sentences")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--criterion", default="obs")
    ap.add_argument("--allocate", default="uniform", choices=("uniform", "global"))
    args = ap.parse_args(argv)
    embed = md.heldout_embedder(args.model, args.sentences)
    reference = embed(args.model)
    start = time.time()
    options = PruneOptions(prune=("channels",), ratio=args.ratio, calibration=args.calib, reconstruct="lstsq",
                           criterion=args.criterion, allocate=args.allocate)
    ctx = Pipeline([Normalize(), Analyze(), Calibrate(), Score(), Select()]).run(args.model, options)
    print(f"calibration, scores and selection ({args.criterion}, {args.allocate}): {time.time() - start:.0f} s")
    print("| criterion | refit | layers refit | cosine | time |")
    print("|---|---|---|---|---|")
    for variant in args.variants:
        start = time.time()
        layers = run_variant(ctx, variant)
        cosine = float((embed(ctx.pruned) * reference).sum(1).mean())
        print(f"| {args.criterion} | {variant} | {layers} | {cosine:.4f} | {time.time() - start:.0f} s |", flush=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
