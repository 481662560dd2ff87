#!/usr/bin/env python
"""How well does a pruned all-MiniLM-L6-v2 keep its sentence embeddings?

For each exported MiniLM (``tools/export_minilm.py`` writes them to ``build/minilm/``),
prune at ``--ratio`` with every criterion x reconstruction combination through onnxprune's
default pipeline with the selection restricted to the FFN hidden units of the six layers
(``tools/minilm_prune.py``; attention heads are prunable groups too, and left whole here) and
compare the pruned model with the original on ``--heldout`` held-out sentences
(``tools/minilm_data.py``; disjoint from the calibration sentences):

- ``cos``: mean (and minimum) cosine between the pruned and original sentence embeddings
  (mean pooling over the attention mask + L2 normalisation, as sentence-transformers does);
- ``nn@10``: for each held-out sentence, its 10 nearest neighbours among the other held-out
  sentences by cosine, in the original and in the pruned embedding space; the mean overlap
  fraction of the two lists.

Params are the float weights' element count before and after (``result.report`` when it
has them); ``prune s`` is the wall time of the pruning pipeline (calibration and
reconstruction included, saving excluded); ``FFN`` the per-layer FFN widths kept.  An
``original`` row compares the original model with a second session of itself (cosine 1).

Combinations the installed ``onnxprune.prune`` cannot take yet (no ``calibration`` /
``reconstruct`` parameters) are shown as ``n/a``; combinations it rejects show the error.
``l1``/``l2`` with ``none`` need no calibration data and are run without any.

Usage::

    python tools/export_minilm.py          # once: writes build/minilm/*.onnx, calib.npz
    python tools/bench_minilm.py [--models torchscript dynamo] [--ratio 0.5]
        [--criteria l1 l2 activation apoz wanda fluctuation obs] [--reconstruct none bias lstsq]
        [--heldout 200] [--calib build/minilm/calib_buckets] [--calib-samples N]
        [--save] [--json FILE]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
import traceback
from typing import Dict, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import onnx
import onnxruntime as ort

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, TOOLS_DIR)

import minilm_data  # noqa: E402
import onnxprune  # noqa: E402
from minilm_prune import prune_ffn  # noqa: E402

DEFAULT_DIR = os.path.join(REPO_ROOT, "build", "minilm")
CRITERIA = ["l1", "l2", "activation", "apoz", "wanda", "fluctuation", "obs"]
DATA_FREE = {"l1", "l2", "bn"}
RECONSTRUCT = ["none", "bias", "lstsq"]
NA = "n/a"
K = 10

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
               onnx.TensorProto.BFLOAT16}


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------

def count_params(model: onnx.ModelProto) -> int:
    """Elements of float initializers (and float Constant nodes)."""
    n = sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer
            if t.data_type in FLOAT_TYPES)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in FLOAT_TYPES:
                    n += int(np.prod(a.t.dims, dtype=np.int64))
    return n


def ffn_widths(model: onnx.ModelProto, hidden: int = 384) -> List[int]:
    """Inner width of each FFN: MatMul weights of shape [hidden, k], k != hidden."""
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            dims = inits[node.input[1]]
            if len(dims) == 2 and dims[0] == hidden and dims[1] != hidden:
                out.append(dims[1])
    return out


def knn(emb: np.ndarray, k: int) -> np.ndarray:
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    # stable: ties broken by index
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def compare(ref: np.ndarray, emb: np.ndarray, ref_nn: np.ndarray) -> Dict[str, float]:
    cos = (ref * emb).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(emb, axis=1))
    nn = knn(emb, ref_nn.shape[1])
    overlap = [len(set(a) & set(b)) / ref_nn.shape[1] for a, b in zip(ref_nn, nn)]
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "nn_overlap": float(np.mean(overlap))}


def session(model) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------
# pruning
# --------------------------------------------------------------------------------------

def api_params() -> set:
    return set(inspect.signature(onnxprune.prune).parameters)


def prune_kwargs(criterion: str, reconstruct: str, calib: str, calib_samples: Optional[int],
                 params: set, ratio: float) -> Optional[dict]:
    """Keyword arguments for onnxprune.prune, or None if the installed API cannot take them."""
    kw = {"ratio": ratio, "criterion": criterion}
    needs_data = criterion not in DATA_FREE or reconstruct != "none"
    if "reconstruct" in params:
        kw["reconstruct"] = reconstruct
    elif reconstruct != "none":
        return None
    if needs_data:
        if "calibration" not in params:
            return None
        kw["calibration"] = calib
        if calib_samples is not None:
            if "calib_samples" not in params:
                return None
            kw["calib_samples"] = calib_samples
    return kw


def fmt(x, spec: str) -> str:
    return NA if x is None else format(x, spec)


def short_error(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg if len(msg) <= 110 else msg[:107] + "..."


def dump(rows: List[dict], args) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ratio": args.ratio, "heldout": args.heldout, "calib": args.calib,
                       "api": str(inspect.signature(onnxprune.prune)), "rows": rows}, f, indent=1)


def run_model(name: str, path: str, args, tok, done: List[dict]) -> List[dict]:
    sentences = minilm_data.heldout_sentences(args.heldout)
    batch = minilm_data.encode(tok, sentences, max_len=args.seq)

    original = onnx.load(path)
    p_before = count_params(original)
    ref = minilm_data.embed(session(path), batch)
    ref_nn = knn(ref, K)

    rows = []
    again = minilm_data.embed(session(path), batch)
    rows.append({"model": name, "criterion": "original", "reconstruct": "-",
                 "params_before": p_before, "params_after": p_before,
                 "ffn": ffn_widths(original), "time_s": None, **compare(ref, again, ref_nn)})

    params = api_params()
    for criterion in args.criteria:
        for rec in args.reconstruct:
            row = {"model": name, "criterion": criterion, "reconstruct": rec,
                   "params_before": p_before, "params_after": None, "ffn": None, "time_s": None,
                   "cos_mean": None, "cos_min": None, "nn_overlap": None, "note": ""}
            rows.append(row)
            kw = prune_kwargs(criterion, rec, args.calib, args.calib_samples, params, args.ratio)
            if kw is None:
                row["note"] = "API not ready (onnxprune.prune has no calibration/reconstruct)"
                print(f"  {name} {criterion:11s} {rec:5s}  n/a (API not ready)", flush=True)
                continue
            t0 = time.perf_counter()
            try:
                ctx = prune_ffn(path, **kw)
            except Exception as e:  # a rejected combination, or a failure: report and go on
                row["time_s"] = time.perf_counter() - t0
                row["note"] = short_error(e)
                print(f"  {name} {criterion:11s} {rec:5s}  error: {row['note']}", flush=True)
                if args.debug:
                    traceback.print_exc()
                continue
            row["time_s"] = time.perf_counter() - t0
            pruned = ctx.pruned
            row["params_after"] = count_params(pruned)
            rep = ctx.report
            if isinstance(rep.get("after"), dict) and "params" in rep["after"]:
                row["report_params"] = [rep.get("before", {}).get("params"), rep["after"]["params"]]
            row["ffn"] = ffn_widths(pruned)
            if args.save:
                out = os.path.join(args.workdir, "pruned", f"{name}_{criterion}_{rec}.onnx")
                os.makedirs(os.path.dirname(out), exist_ok=True)
                onnx.save(pruned, out)
            try:
                emb = minilm_data.embed(session(pruned), batch)
            except Exception as e:
                row["note"] = "pruned model does not run: " + short_error(e)
                print(f"  {name} {criterion:11s} {rec:5s}  {row['note']}", flush=True)
                continue
            row.update(compare(ref, emb, ref_nn))
            dump(done + rows, args)  # partial results survive an interrupted run
            print(f"  {name} {criterion:11s} {rec:5s}  {row['time_s']:6.2f} s  cos {row['cos_mean']:.4f}"
                  f"  nn@10 {row['nn_overlap']:.3f}", flush=True)
    return rows


def ffn_text(widths) -> str:
    if not widths:
        return NA
    return str(widths[0]) if len(set(widths)) == 1 else "/".join(map(str, widths))


def print_table(rows: List[dict], args) -> None:
    print(f"\n### MiniLM-L6 FFN pruning, ratio {args.ratio}, {args.heldout} held-out sentences "
          f"(seq {args.seq}), calibration {os.path.relpath(args.calib, REPO_ROOT)}"
          + (f" ({args.calib_samples} samples)" if args.calib_samples else ""))
    print()
    print("| model | criterion | reconstruct | params before | params after | FFN width | prune s "
          "| cos mean | cos min | nn@10 overlap | note |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        pa = r["params_after"]
        print(f"| {r['model']} | {r['criterion']} | {r['reconstruct']} | {r['params_before'] / 1e6:.2f}M | "
              f"{NA if pa is None else f'{pa / 1e6:.2f}M'} | {ffn_text(r['ffn'])} | {fmt(r['time_s'], '.2f')} | "
              f"{fmt(r['cos_mean'], '.4f')} | {fmt(r['cos_min'], '.4f')} | {fmt(r['nn_overlap'], '.3f')} | "
              f"{r.get('note', '')} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=DEFAULT_DIR)
    ap.add_argument("--models", nargs="+", default=["torchscript", "dynamo"],
                    help="minilm_<name>.onnx in --workdir, or paths to .onnx files")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--criteria", nargs="+", default=CRITERIA)
    ap.add_argument("--reconstruct", nargs="+", default=RECONSTRUCT)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--seq", type=int, default=128, help="padded length of the held-out rows")
    ap.add_argument("--calib", default=None,
                    help="calibration data (default: <workdir>/calib_buckets, else <workdir>/calib.npz)")
    ap.add_argument("--calib-samples", type=int, default=None)
    ap.add_argument("--save", action="store_true", help="write pruned models to <workdir>/pruned/")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--debug", action="store_true", help="tracebacks for failed combinations")
    args = ap.parse_args(argv)
    buckets = os.path.join(args.workdir, "calib_buckets")  # unpadded: tools/minilm_calib_buckets.py
    args.calib = args.calib or (buckets if os.path.isdir(buckets) else os.path.join(args.workdir, "calib.npz"))

    from transformers import AutoTokenizer

    tok_dir = os.path.join(args.workdir, "tokenizer")
    tok = AutoTokenizer.from_pretrained(tok_dir if os.path.isdir(tok_dir) else minilm_data.minilm_path())

    params = api_params()
    print(f"onnxprune.prune{inspect.signature(onnxprune.prune)}")
    if "calibration" not in params:
        print("note: this onnxprune has no calibration API yet; data-driven combinations are n/a")

    rows: List[dict] = []
    for m in args.models:
        path = m if m.endswith(".onnx") else os.path.join(args.workdir, f"minilm_{m}.onnx")
        name = os.path.splitext(os.path.basename(path))[0].replace("minilm_", "")
        if not os.path.exists(path):
            print(f"missing {path}: run tools/export_minilm.py first", file=sys.stderr)
            return 2
        print(f"\n{name}: {os.path.relpath(path, REPO_ROOT)}", flush=True)
        rows += run_model(name, path, args, tok, rows)

    print_table(rows, args)
    dump(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
