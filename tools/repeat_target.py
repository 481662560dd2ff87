#!/usr/bin/env python
"""Run the same ``--target-latency`` command several times and compare what it returned.

For each run: params after, the kept-channel signature (identical runs must return the same
model), the latency figures the run reported (baseline, achieved, their ratio), the fidelity it
reported, the task accuracy on a labelled .npz (when given), and a fresh side-by-side
``bench`` of the original and the output (the ratio a user would measure afterwards).

Usage::

    python tools/repeat_target.py MODEL --calib CALIB --fraction 0.7 --threads 1 --runs 3 \
        [--input-shape input:200x1x8x8] [--eval models/digits_eval.npz] [--workdir build/repeat]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--calib")
    ap.add_argument("--fraction", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--input-shape", action="append", default=[])
    ap.add_argument("--eval")
    ap.add_argument("--workdir", default="build/repeat")
    args = ap.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    import numpy as np
    import onnx
    import onnxruntime as ort

    from onnxprune.bench import bench_models

    shape_args = [a for s in args.input_shape for a in ("--input-shape", s)]
    base = bench_models([args.model], threads=args.threads, input_shapes=args.input_shape, max_rounds=30,
                        min_seconds=2.0)["models"][0]["p50_ms"]
    target = args.fraction * base
    print(f"baseline (bench) {base:.3f} ms, target {target:.3f} ms", flush=True)
    rows = []
    for i in range(args.runs):
        out = os.path.join(args.workdir, f"run{i}.onnx")
        report = os.path.join(args.workdir, f"run{i}.json")
        html = os.path.join(args.workdir, f"run{i}.html")
        cmd = [sys.executable, "-m", "onnxprune", args.model, "-o", out, "--force", "--target-latency",
               f"{target:.6f}ms", "--threads", str(args.threads), "--report", report, "--html", html, *shape_args]
        if args.calib:
            cmd += ["--calib", args.calib]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        summary = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines()
                   if line.startswith(("target", "latency", "fidelity", "warning"))]
        row = {"run": i, "rc": proc.returncode, "seconds": seconds, "summary": summary}
        if proc.returncode == 0 and os.path.exists(report):
            rep = json.load(open(report))
            search = rep["search"]
            kept = [(g["id"], g["channels_after"]) for g in rep["groups"]]
            fid = rep.get("fidelity") or {}
            cos = [v["mean_cosine"] for v in fid.get("outputs", {}).values()]
            row.update(status=search["status"], params=rep["after"]["params"], params_before=rep["before"]["params"],
                       flops_ratio=rep["after"]["flops"] / rep["before"]["flops"],
                       kept=hashlib.sha256(repr(kept).encode()).hexdigest()[:10],
                       reported_baseline=search["baseline"], reported_achieved=search["achieved"],
                       reported_ratio=search["achieved"] / search["baseline"],
                       fidelity=cos[0] if cos else None)
            side = bench_models([args.model, out], threads=args.threads, input_shapes=args.input_shape,
                                max_rounds=30, min_seconds=2.0)
            row["bench_ratio"] = side["ratios_vs_first"][0]["median"]
            if args.eval:
                data = np.load(args.eval)
                sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
                logits = sess.run(None, {"input": data["input"]})[0]
                row["accuracy"] = float((logits.argmax(1) == data["label"]).mean())
        else:
            row["error"] = (proc.stderr.strip().splitlines() or [""])[-1]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print("| run | status | params | FLOPs after/before | kept-channels hash | reported ms (baseline -> achieved) "
          "| reported ratio | fresh bench ratio | fidelity (cosine) | accuracy |")
    print("|---|---|---:|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "status" not in r:
            print(f"| {r['run']} | exit {r['rc']}: {r.get('error', '')} | | | | | | | | |")
            continue
        fid = f"{r['fidelity']:.4f}" if r["fidelity"] is not None else "–"
        acc = f"{r['accuracy']:.3f}" if "accuracy" in r else "–"
        print(f"| {r['run']} | {r['status']} | {r['params']} | {r['flops_ratio']:.3f} | {r['kept']} | "
              f"{r['reported_baseline']:.3f} -> {r['reported_achieved']:.3f} | {r['reported_ratio']:.3f} | "
              f"{r['bench_ratio']:.3f} | {fid} | {acc} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
