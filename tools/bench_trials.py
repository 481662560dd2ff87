#!/usr/bin/env python
"""Time spent outside ONNX Runtime per ``--target-latency`` trial, two source trees side by side.

A latency search builds one pruned model per candidate it times (``Trials.build``: the rewrite
and the serialization ONNX Runtime is given). This tool times exactly that, for the candidates
of the search's own ladder (``flops_ladder``, l1 scores), in worker processes that import
onnxprune from each tree given, alternating trees round after round so that machine load falls
on both alike. It prints the median time per trial of each tree and whether both built the
same bytes.

The model is a ResNet-50-shaped graph built here with ``onnx.helper`` and random weights
(bottleneck blocks 3-4-6-3, widths 64-2048, Conv+bias+Relu as exporters leave it after folding
BatchNorm, 1x3x224x224, opset 17; about 25.5M parameters), so no torch is needed.

Usage::

    python tools/bench_trials.py --tree before=/path/to/old/checkout --tree after=. \\
        [--rounds 3] [--trials 4] [--model build/resnet50_graph.onnx]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resnet50_graph(path: str, seed: int = 0) -> None:
    """Write a ResNet-50-shaped model (random weights) to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, name: str, relu: bool = True) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(
            (rng.standard_normal(cout) * 0.01).astype(np.float32), f"{name}.b")])
        nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name,
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        if not relu:
            return f"{name}.y"
        nodes.append(helper.make_node("Relu", [f"{name}.y"], [f"{name}.r"], name=f"{name}.relu"))
        return f"{name}.r"

    x = conv("input", 3, 64, 7, 2, "stem")
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = "pool", 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for b in range(blocks):
            name, stride = f"s{stage}b{b}", (2 if b == 0 and stage > 0 else 1)
            y = conv(x, cin, width, 1, 1, f"{name}.c1")
            y = conv(y, width, width, 3, stride, f"{name}.c2")
            y = conv(y, width, width * 4, 1, 1, f"{name}.c3", relu=False)
            short = conv(x, cin, width * 4, 1, stride, f"{name}.down", relu=False) if b == 0 else x
            nodes += [helper.make_node("Add", [y, short], [f"{name}.sum"], name=f"{name}.add"),
                      helper.make_node("Relu", [f"{name}.sum"], [f"{name}.out"], name=f"{name}.relu")]
            x, cin = f"{name}.out", width * 4
    inits += [numpy_helper.from_array((rng.standard_normal((1000, 2048)) * 0.02).astype(np.float32), "fc.w"),
              numpy_helper.from_array(np.zeros(1000, np.float32), "fc.b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]), helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "resnet50", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                [1, 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_trials")
    onnx.checker.check_model(model)
    onnx.save(model, path)


def worker(model_path: str, trials: int) -> dict:
    """In the tree on ``sys.path``: the search's first ``trials`` ladder candidates, each built once, timed."""
    import onnx

    from onnxprune.context import PruneOptions
    from onnxprune.passes.builtin import Analyze, Normalize, Score
    from onnxprune.pipeline import Pipeline
    from onnxprune.search.target_search import Trials, flops_ladder
    from onnxprune.selection import select_by_counts

    ctx = Pipeline([Normalize(), Analyze(), Score()]).run(onnx.load(model_path), PruneOptions(criterion="l1"))
    start = time.perf_counter()
    built = Trials(ctx.graph, ctx.analysis, ctx.opset, ctx.model)
    setup = time.perf_counter() - start
    _, ladder = flops_ladder(ctx.analysis, ctx.graph, ctx.scores)
    step = max(1, len(ladder) // trials)
    seconds, digests = [], []
    for candidate in ladder[::step][:trials]:
        selection = select_by_counts(ctx.analysis, ctx.scores, candidate.counts)
        start = time.perf_counter()
        model_bytes = built.build(selection)[1]
        seconds.append(time.perf_counter() - start)
        digests.append(hashlib.sha256(model_bytes).hexdigest())
    return {"setup": setup, "seconds": seconds, "digests": digests}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a source tree (repeatable)")
    parser.add_argument("--model", default=os.path.join(REPO_ROOT, "build", "resnet50_graph.onnx"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.trials)))
        return 0
    if not os.path.exists(args.model):
        os.makedirs(os.path.dirname(os.path.abspath(args.model)), exist_ok=True)
        resnet50_graph(args.model)
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": REPO_ROOT}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, path in trees.items():
            env = {**os.environ, "PYTHONPATH": os.path.abspath(path)}
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--model", args.model,
                                  "--trials", str(args.trials)], env=env, capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"model {os.path.basename(args.model)}, {args.rounds} rounds x {args.trials} trials per tree\n")
    print("| tree | trials timed | per trial, median (s) | min – max (s) | Trials() setup, median (s) |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        seconds = [s for r in runs for s in r["seconds"]]
        setup = statistics.median(r["setup"] for r in runs)
        print(f"| {name} | {len(seconds)} | {statistics.median(seconds):.3f} | {min(seconds):.3f} – "
              f"{max(seconds):.3f} | {setup:.3f} |")
    digests = {name: runs[0]["digests"] for name, runs in results.items()}
    same = len({tuple(d) for d in digests.values()}) == 1
    print(f"\nsame trial models (sha256) in every tree: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
