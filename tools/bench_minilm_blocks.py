#!/usr/bin/env python
"""MiniLM-L6 with whole residual sub-blocks removed, against heads or FFN units pruned to the same
parameters: mean embedding cosine on held-out sentences (the original's embedding as reference).

A case is ``blocks:attention:K`` (the K attention sub-blocks whose removal changes the stream
least, scored on calibration data), ``blocks:mlp:K``, ``blocks:any:K``, or ``KINDS:RATIO``
(``heads:0.1667``: a sixth of every layer's heads, as many parameters as one attention block
of six). Attention sub-blocks are told from MLP ones by their graph (a Softmax in the branch).
Every case calibrates on ``--calib`` and refits with lstsq (``--no-reconstruct`` to compare).

Needs ``tools/export_minilm.py``'s output (``build/minilm/``) and a calibration folder from
``tools/minilm_calib_buckets.py``; ``transformers`` for the tokenizer.

    python tools/bench_minilm_blocks.py blocks:attention:1 heads:0.1667 blocks:mlp:1 channels:0.1667
    python tools/bench_minilm_blocks.py channels:0.5 --calib-rows 1024 --criterion fluctuation --ridge 0.01
"""

from __future__ import annotations

import argparse
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
from onnxprune.passes.builtin import Analyze, Calibrate, Normalize, Reconstruct, Rewrite, Score, Select  # noqa: E402
from onnxprune.pipeline import Pipeline  # noqa: E402


def block_kind(analysis, block) -> str:
    """attention (a Softmax among the branch's nodes) or mlp."""
    ops = {n.name: n.op for n in analysis.graph.nodes}
    return "attention" if any(ops.get(name) == "Softmax" for name in block.nodes) else "mlp"


def drop_errors(ctx) -> dict[int, float]:
    """Each removable block's output error when removed alone (``onnxprune sensitivity``'s measure)."""
    from onnxprune.search.sensitivity import sweep

    curves, _ = sweep(ctx.analysis, ctx.graph, ctx.model.SerializeToString(), {}, ctx.calibration, fractions=())
    return {c.id: c.points[0].error for c in curves if c.kind == "block"}


def run_case(case: str, model: str, calib: str, reconstruct: bool, order: str = "score", **settings):
    """``settings``: more PruneOptions (criterion, calib_rows, ridge) for every case."""
    parts = case.split(":")
    mode = "lstsq" if reconstruct else "none"
    if parts[0] == "blocks":
        kind, count = parts[1], int(parts[2])
        options = PruneOptions(prune=("blocks",), blocks=count, calibration=calib, reconstruct=mode, **settings)
        ctx = Pipeline([Normalize(), Analyze(), Calibrate(), Score(), Select()]).run(model, options)
        blocks = [b for b in ctx.analysis.removable_blocks if kind == "any" or block_kind(ctx.analysis, b) == kind]
        by = ctx.block_scores if order == "score" else drop_errors(ctx)
        chosen = sorted(blocks, key=lambda b: by[b.id])[:count]
        ctx.selection.blocks = {b.id for b in chosen}
        label = ", ".join(f"{block_kind(ctx.analysis, b)} {b.id}" for b in sorted(chosen, key=lambda b: b.id))
    else:
        options = PruneOptions(prune=tuple(parts[0].split(",")), ratio=float(parts[1]), calibration=calib,
                               reconstruct=mode, **settings)
        ctx = Pipeline([Normalize(), Analyze(), Calibrate(), Score(), Select()]).run(model, options)
        label = f"{parts[1]} of each group"
    Rewrite().run(ctx)
    if reconstruct:
        Reconstruct().run(ctx)
    return ctx, label


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+")
    ap.add_argument("--model", default=os.path.join(REPO_ROOT, "build", "minilm", "minilm_torchscript.onnx"))
    ap.add_argument("--calib", default=os.path.join(REPO_ROOT, "build", "minilm", "calib_buckets"))
    ap.add_argument("--sentences", type=int, default=150)
    ap.add_argument("--no-reconstruct", action="store_true")
    ap.add_argument("--order", choices=("score", "drop"), default="score",
                    help="choose blocks by the pruner's block score, or by the output error each makes when dropped")
    ap.add_argument("--criterion", default=None, help="the channels' criterion [default: obs with the refit]")
    ap.add_argument("--calib-rows", type=int, default=None, help="rows per layer and sample for the refit's Grams")
    ap.add_argument("--ridge", type=float, default=None, help="a fixed ridge strength [default: chosen per layer]")
    args = ap.parse_args(argv)
    settings = {k: v for k, v in (("criterion", args.criterion), ("calib_rows", args.calib_rows),
                                  ("ridge", args.ridge)) if v is not None}
    embed = md.heldout_embedder(args.model, args.sentences)

    reference = embed(args.model)
    print("| removed | which | params | cosine | time |")
    print("|---|---|---|---|---|")
    for case in args.cases:
        start = time.time()
        ctx, label = run_case(case, args.model, args.calib, not args.no_reconstruct, args.order, **settings)
        cosine = float((embed(ctx.pruned) * reference).sum(1).mean())
        before, after = ctx.report["before"]["params"], ctx.report["after"]["params"]
        print(f"| {case} | {label} | {before / 1e6:.2f}M → {after / 1e6:.2f}M (−{(before - after) / 1e6:.2f}M) "
              f"| {cosine:.4f} | {time.time() - start:.0f} s |", flush=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
