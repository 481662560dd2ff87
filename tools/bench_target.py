#!/usr/bin/env python
"""``--target-latency`` at a fraction of each model's measured baseline, on real exported graphs.

For each model:

1. measure the original's p50 on the CPU provider (``--threads``) and set the target to
   ``--fraction`` of it (0.5: half the baseline);
2. run ``onnxprune.prune(..., target_latency=...)``, timing the whole search (profiling,
   allocation, end-to-end verification);
3. time the original and the pruned model side by side, interleaved (``onnxprune bench``'s
   engine), and report both p50s, the per-round speedup (median, min–max), the FLOPs reduction
   and the ratio of measured speedup to FLOPs reduction.

Models (built here, random weights unless noted; nothing is downloaded):

- ``resnet50``: transformers ``ResNetConfig()`` exported with the TorchScript exporter
  (``tools/bench_resnet50.py``'s export), 1x3x224x224;
- ``mobilenetv2``: transformers ``MobileNetV2Config()``, TorchScript exporter, 1x3x224x224;
- ``bert``: the real all-MiniLM-L6-v2 (a 6-layer BERT) as ``tools/export_minilm.py`` exports
  it, batch 1 x 128 tokens, scored with calibration sentences (``--bert-calib``) when present.

Usage::

    python tools/bench_target.py [--models resnet50 mobilenetv2 bert] [--fraction 0.5]
        [--threads 1] [--workdir build/target] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, TOOLS_DIR)

import onnxprune
from onnxprune.bench import bench_models
from onnxprune.search.target_search import TargetUnreachable



def export_resnet50(path: str) -> None:
    from bench_resnet50 import build_torch_model, export_onnx

    export_onnx(build_torch_model(None), path)


def export_mobilenetv2(path: str) -> None:
    import torch
    import transformers
    from bench_resnet50 import export_onnx, logits_module

    torch.manual_seed(0)
    export_onnx(logits_module(transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config())), path)


def export_bert(path: str) -> None:
    raise SystemExit(f"{path} is missing: run python tools/export_minilm.py first")


MODELS = {
    "resnet50": {"export": export_resnet50, "shapes": {}, "file": "resnet50.onnx"},
    "mobilenetv2": {"export": export_mobilenetv2, "shapes": {}, "file": "mobilenetv2.onnx"},
    "bert": {"export": export_bert, "file": os.path.join(REPO_ROOT, "build", "minilm", "minilm_torchscript.onnx"),
             "shapes": {"input_ids": [1, 128], "attention_mask": [1, 128], "token_type_ids": [1, 128]}},
}


def run(name: str, workdir: str, fraction: float, threads: int | None, bert_calib: str | None,
        calib_samples: int) -> dict:
    spec = MODELS[name]
    path = spec["file"] if os.path.isabs(spec["file"]) else os.path.join(workdir, spec["file"])
    if not os.path.exists(path):
        spec["export"](path)
    shapes = [f"{k}:{'x'.join(map(str, v))}" for k, v in spec["shapes"].items()]
    base = bench_models([path], threads=threads, input_shapes=shapes, max_rounds=30, min_seconds=3.0)
    baseline = base["models"][0]["p50_ms"]
    target = fraction * baseline
    kwargs = {}
    if name == "bert" and bert_calib and os.path.exists(bert_calib):
        kwargs = {"calibration": bert_calib, "calib_samples": calib_samples}
    row = {"model": name, "threads": threads, "baseline_ms": baseline, "target_ms": target}
    start = time.perf_counter()
    try:
        result = onnxprune.prune(path, target_latency=target, threads=threads, input_shapes=spec["shapes"],
                                 log=lambda m: print(f"  [{name}] {m}", flush=True), **kwargs)
    except TargetUnreachable as exc:
        row.update(status="unreachable", message=str(exc), search_s=time.perf_counter() - start)
        return row
    row["search_s"] = time.perf_counter() - start
    search = result.report["search"]
    row.update(status=search["status"], iterations=len(search["iterations"]),
               search_measured_ms=search["achieved"], search_only_s=search["seconds"])
    out = os.path.join(workdir, f"{name}_target.onnx")
    result.save(out)
    side = bench_models([path, out], threads=threads, input_shapes=shapes, max_rounds=40, min_seconds=5.0)
    o, p = side["models"]
    r = side["ratios_vs_first"][0]
    before, after = result.report["before"], result.report["after"]
    flops_reduction = before["flops"] / after["flops"] if after["flops"] else float("nan")
    row.update(original_ms=o["p50_ms"], pruned_ms=p["p50_ms"], pruned_round_min_ms=p["round_median_min_ms"],
               pruned_round_max_ms=p["round_median_max_ms"], speedup=1 / r["median"], speedup_min=1 / r["max"],
               speedup_max=1 / r["min"], flops_before=before["flops"], flops_after=after["flops"],
               flops_reduction=flops_reduction, speedup_per_flops=(1 / r["median"]) / flops_reduction,
               params_before=before["params"], params_after=after["params"],
               meets_target=p["p50_ms"] <= target, fidelity=result.report.get("fidelity"))
    return row


def table(rows: list[dict]) -> str:
    lines = [("| model | threads | baseline p50 ms | target ms | prune s (search s) | iterations | original p50 ms | "
              "pruned p50 ms (round medians) | at/under target | speedup (per-round min–max) | FLOPs reduction | "
              "speedup / FLOPs reduction | params |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] == "unreachable":
            lines.append(f"| {r['model']} | {r['threads']} | {r['baseline_ms']:.2f} | {r['target_ms']:.2f} | "
                         f"{r['search_s']:.0f} | – | – | – | no: {r['message']} | – | – | – | – |")
            continue
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['baseline_ms']:.2f} | {r['target_ms']:.2f} | {r['search_s']:.0f} "
            f"({r['search_only_s']:.0f}) | {r['iterations']} | {r['original_ms']:.2f} | {r['pruned_ms']:.2f} ({r['pruned_round_min_ms']:.2f}–"
            f"{r['pruned_round_max_ms']:.2f}) | {'yes' if r['meets_target'] else 'no'} | {r['speedup']:.2f}x "
            f"({r['speedup_min']:.2f}–{r['speedup_max']:.2f}) | {r['flops_reduction']:.2f}x | "
            f"{r['speedup_per_flops']:.2f} | {r['params_before'] / 1e6:.2f}M → {r['params_after'] / 1e6:.2f}M |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=os.path.join(REPO_ROOT, "build", "target"))
    ap.add_argument("--bert-calib", default=os.path.join(REPO_ROOT, "build", "minilm", "calib_buckets"))
    ap.add_argument("--calib-samples", type=int, default=256)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    for name in args.models:
        print(f"{name}:", flush=True)
        rows.append(run(name, args.workdir, args.fraction, args.threads, args.bert_calib, args.calib_samples))
        print(table(rows[-1:]), flush=True)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
