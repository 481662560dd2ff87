#!/usr/bin/env python
"""How exact float32 products per batch (summed in float64) are for calibration's Gram
matrices, against float64 products throughout: the relative error of every Gram matrix the
statistics and the refit gather, and how far the pruned model's outputs move.

Usage::

    python tools/check_gram_precision.py [--ratio 0.3] [--minilm build/minilm] [--minilm-samples 256]

(digits CNN and bert_torchscript; with ``--minilm``, all-MiniLM-L6-v2 calibrated on its length
buckets, ``tools/export_minilm.py`` and ``tools/minilm_calib_buckets.py``.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

import onnxprune.calibration.stats as stats_module
import onnxprune.reconstruct as reconstruct_module
from onnxprune import prune

MODELS = Path(__file__).resolve().parents[1] / "models"


def _float64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.float64).T @ b.astype(np.float64)


def _bert_data(n: int = 64, seq: int = 32) -> list[dict]:
    rng = np.random.default_rng(0)
    mask = (np.arange(seq)[None, :] < rng.integers(8, seq + 1, (n, 1))).astype(np.int64)
    return [{"input_ids": rng.integers(1, 100, (n, seq)).astype(np.int64) * mask,
             "attention_mask": mask}]


def _grams(result) -> dict[str, np.ndarray]:
    return {f"{t}/{n}": g.xtx for t, s in result.context.stats.items() for n, g in s.grams.items()}


def _outputs(model: onnx.ModelProto, feeds: list[dict]) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, f)[0].ravel() for f in feeds])  # batches may differ in length


def measure(name: str, model: onnx.ModelProto, calib, feeds: list[dict], ratio: float, **options) -> dict:
    runs = {}
    for kind in ("float32", "float64"):
        if kind == "float64":
            stats_module.cross_product = reconstruct_module.cross_product = _float64
        runs[kind] = prune(model, ratio=ratio, calibration=calib, **options)
    stats_module.cross_product = reconstruct_module.cross_product = _CROSS
    g32, g64 = _grams(runs["float32"]), _grams(runs["float64"])
    gram_err = max(np.linalg.norm(g32[k] - g64[k]) / np.linalg.norm(g64[k]) for k in g64)
    y0, y32, y64 = (_outputs(m, feeds) for m in (model, runs["float32"].model, runs["float64"].model))
    return {"model": name, "grams": len(g64), "max gram error": gram_err,
            "output change": float(np.linalg.norm(y32 - y64) / np.linalg.norm(y64)),
            "error vs original (f32 / f64)": (float(np.linalg.norm(y32 - y0) / np.linalg.norm(y0)),
                                             float(np.linalg.norm(y64 - y0) / np.linalg.norm(y0)))}


_CROSS = stats_module.cross_product


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--minilm", type=Path, help="folder with minilm_torchscript.onnx and calib_buckets/")
    p.add_argument("--minilm-samples", type=int, default=256)
    args = p.parse_args(argv)
    digits = np.load(MODELS / "digits_calib.npz")["input"]
    rows = [measure("digits_cnn", onnx.load(MODELS / "digits_cnn.onnx"), str(MODELS / "digits_calib.npz"),
                    [{"input": digits}], args.ratio)]
    bert = _bert_data()
    rows.append(measure("bert_torchscript", onnx.load(MODELS / "bert_torchscript.onnx"), bert, bert, args.ratio))
    if args.minilm:
        buckets = sorted((args.minilm / "calib_buckets").glob("*.npz"))
        feeds = [dict(np.load(f)) for f in buckets[:8]]
        rows.append(measure("minilm", onnx.load(args.minilm / "minilm_torchscript.onnx"), str(args.minilm / "calib_buckets"),
                            feeds, args.ratio, calib_samples=args.minilm_samples))
    print("| model | Gram matrices | max relative Gram error | pruned output change | output error f32 / f64 |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        e32, e64 = r["error vs original (f32 / f64)"]
        print(f"| {r['model']} | {r['grams']} | {r['max gram error']:.1e} | {r['output change']:.1e} | "
              f"{e32:.5f} / {e64:.5f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
