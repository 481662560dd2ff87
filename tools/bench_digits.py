#!/usr/bin/env python
"""Held-out accuracy of the digits CNN after pruning, per criterion and reconstruction.

Prunes ``models/digits_cnn.onnx`` (made by ``tools/train_digits_cnn.py``) at each
``--ratios`` value with every criterion x reconstruction combination through
``onnxprune.prune``, calibrating on ``models/digits_calib.npz`` (training images), and
reports the accuracy on ``models/digits_eval.npz`` (held-out images) and the agreement of
the pruned model's predictions with the original's.  Combinations the installed API cannot
take are ``n/a``; rejected ones show the error.  Needs only onnx, numpy and onnxruntime.

Usage::

    python tools/bench_digits.py [--ratios 0.3 0.5 0.7]
        [--criteria l1 l2 bn activation apoz wanda fluctuation obs] [--reconstruct none bias lstsq]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, TOOLS_DIR)

import onnxprune  # noqa: E402
from bench_minilm import NA, api_params, count_params, fmt, prune_kwargs, session, short_error  # noqa: E402

MODELS = os.path.join(REPO_ROOT, "models")
CRITERIA = ["l1", "l2", "bn", "activation", "apoz", "wanda", "fluctuation", "obs"]
RECONSTRUCT = ["none", "bias", "lstsq"]


def predict(model, x: np.ndarray) -> np.ndarray:
    return session(model).run(None, {"input": x})[0].argmax(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(MODELS, "digits_cnn.onnx"))
    ap.add_argument("--eval", default=os.path.join(MODELS, "digits_eval.npz"))
    ap.add_argument("--calib", default=os.path.join(MODELS, "digits_calib.npz"))
    ap.add_argument("--calib-samples", type=int, default=None)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--criteria", nargs="+", default=CRITERIA)
    ap.add_argument("--reconstruct", nargs="+", default=RECONSTRUCT)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    data = np.load(args.eval)
    x, y = data["input"], data["label"]
    base_pred = predict(args.model, x)
    base_params = count_params(onnx.load(args.model))
    params = api_params()

    rows = [{"ratio": 0.0, "criterion": "original", "reconstruct": "-", "params": base_params,
             "time_s": None, "acc": float((base_pred == y).mean()), "agree": 1.0, "note": ""}]
    for ratio in args.ratios:
        for crit in args.criteria:
            for rec in args.reconstruct:
                row = {"ratio": ratio, "criterion": crit, "reconstruct": rec, "params": None,
                       "time_s": None, "acc": None, "agree": None, "note": ""}
                rows.append(row)
                kw = prune_kwargs(crit, rec, args.calib, args.calib_samples, params, ratio)
                if kw is None:
                    row["note"] = "API not ready"
                    continue
                t0 = time.perf_counter()
                try:
                    result = onnxprune.prune(args.model, **kw)
                except Exception as e:
                    row["note"] = short_error(e)
                    continue
                row["time_s"] = time.perf_counter() - t0
                row["params"] = count_params(result.model)
                pred = predict(result.model, x)
                row["acc"] = float((pred == y).mean())
                row["agree"] = float((pred == base_pred).mean())
                print(f"  ratio {ratio} {crit:11s} {rec:5s}  acc {row['acc']:.4f}", flush=True)

    print(f"\n### digits CNN, {len(y)} held-out images, calibration "
          f"{os.path.relpath(args.calib, REPO_ROOT)}\n")
    print("| ratio | criterion | reconstruct | params | prune s | accuracy | agrees with original | note |")
    print("|---:|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['ratio']} | {r['criterion']} | {r['reconstruct']} | "
              f"{NA if r['params'] is None else r['params']} | {fmt(r['time_s'], '.2f')} | "
              f"{fmt(r['acc'], '.4f')} | {fmt(r['agree'], '.4f')} | {r['note']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
