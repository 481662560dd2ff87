#!/usr/bin/env python
"""Held-out perplexity of the tiny trained decoder before and after pruning, per ONNX format.

Reads what ``tools/train_tiny_lm.py`` writes under ``build/tinylm`` (the dynamo export with a KV
cache, the GenAI builder's fp32 and int4 folders, the held-out and training token sequences) and,
for each format, prunes 25% of the attention heads (whole K/V groups), 25% of the MLP units, and
both (``--ratio``):

- **calibrated**: ``obs`` scores and ``lstsq`` reconstruction (onnxprune's defaults with
  calibration data) on ``--calib-sequences`` unpadded training sequences of 128 tokens, given as
  the model's inputs (token ids, an all-ones attention mask, positions, an empty past cache);
- **l1**: the weights alone, no calibration data.

Each pruned model is checked as a decoder: held-out perplexity (``tools/eval_lm_perplexity.py``,
every next token of the held-out sequences), and 16 tokens of greedy KV-cache decoding (each
step's present cache fed back as past), compared with recomputing the whole sequence. With
``--genai-python`` (an interpreter with onnxruntime-genai) the pruned GenAI folders also generate
16 tokens with ``og.Generator`` (``tools/genai_generate.py``). Prints a Markdown table and writes
every number to ``build/tinylm/bench.json``::

    python tools/bench_tiny_lm.py [--formats dynamo,genai_fp32,genai_int4] [--genai-python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_lm_perplexity import Decoder, decode, model_path, perplexity  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = {"dynamo": "dynamo/model.onnx", "genai_fp32": "genai_fp32", "genai_int4": "genai_int4"}
LABELS = {"dynamo": "dynamo export, KV cache", "genai_fp32": "GenAI builder, fp32", "genai_int4": "GenAI builder, int4"}
#: (name, what is pruned)
VARIANTS = (("heads", ("heads",)), ("mlp", ("channels",)), ("both", ("heads", "channels")))
WHAT = {"heads": "25% of heads", "mlp": "25% of MLP units", "both": "25% of heads + 25% of MLP units"}


def calibration_file(model: str, sequences: np.ndarray, path: str) -> str:
    """The model's inputs for whole unpadded sequences with an empty past, as one ``.npz``."""
    dec = Decoder(model)
    feeds = {"input_ids": sequences.astype(np.int64), "attention_mask": np.ones_like(sequences, np.int64)}
    if "position_ids" in dec.inputs:
        feeds["position_ids"] = np.tile(np.arange(sequences.shape[1], dtype=np.int64), (len(sequences), 1))
    feeds.update(dec.empty_past(len(sequences)))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **feeds)
    return path


def shape_counts(model: str) -> tuple[int, int]:
    """(K/V heads, MLP units) over all layers: the heads from the cache inputs' shapes; the MLP
    units from the gate projections' widths where the nodes are named after them (the GenAI
    builder's ``gate_proj``, MatMul or MatMulNBits), else from onnxprune's analysis (the prunable
    channel groups: the MLP hidden units, the residual stream never being prunable)."""
    import onnx
    m = onnx.load(model_path(model), load_external_data=False)
    kv = sum(t.type.tensor_type.shape.dim[1].dim_value for t in m.graph.input if t.name.endswith(".key"))
    dims = {t.name: list(t.dims) for t in m.graph.initializer}
    units = 0
    for node in m.graph.node:
        if "gate_proj" in node.name and node.op_type in ("MatMul", "MatMulNBits"):
            attrs = {a.name: a.i for a in node.attribute}
            units += attrs["N"] if node.op_type == "MatMulNBits" else dims[node.input[1]][1]
    if not units:
        from onnxprune import Analyze, Normalize, Pipeline
        groups = Pipeline([Normalize(), Analyze()]).run(m).analysis.groups
        units = sum(g.channels for g in groups if g.prunable and g.kind == "channels")
    return kv, units


def check(model: str, held: np.ndarray, prompt: list[int]) -> dict:
    dec = Decoder(model)
    nll, tokens = perplexity(dec, held)
    kv, units = shape_counts(model)
    return {"perplexity": float(np.exp(nll)), "nll": nll, "tokens": tokens, "decode": decode(dec, prompt, 16),
            "kv_heads": kv, "mlp_units": units}


def prune_one(src: str, out_dir: str, prune: tuple[str, ...], ratio: float, calib: str | None) -> dict:
    import onnxprune
    kwargs = {"calibration": calib} if calib else {"criterion": "l1"}
    start = time.time()
    result = onnxprune.prune(model_path(src), ratio=ratio, prune=prune, **kwargs)
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, os.path.basename(model_path(src)))
    result.save(out)
    rep, opts = result.report, result.context.options
    return {"path": out_dir if os.path.isdir(src) else out, "seconds": round(time.time() - start, 1),
            "params": [rep["before"]["params"], rep["after"]["params"]],
            "criterion": opts.criterion, "reconstruct": opts.reconstruct, "warnings": list(result.context.warnings)}


def genai_generate(python: str, folder: str) -> dict:
    res = subprocess.run([python, os.path.join(REPO_ROOT, "tools", "genai_generate.py"), folder, "--tokens", "16"],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        return {"ok": False, "error": res.stderr.strip().splitlines()[-1:]}
    return {"ok": True, **json.loads(res.stdout.strip().splitlines()[-1])}


def bench_format(fmt: str, args, held: np.ndarray, calib_seqs: np.ndarray) -> list[dict]:
    src = os.path.join(args.dir, FORMATS[fmt])
    prompt = [int(t) for t in held[0, :8]]
    calib = calibration_file(src, calib_seqs, os.path.join(args.dir, "calib", f"{fmt}.npz"))
    base = check(src, held, prompt)
    rows = [{"format": fmt, "variant": "original", "criterion": None, **base}]
    print(f"{fmt}: original perplexity {base['perplexity']:.3f}", flush=True)
    for name, prune in VARIANTS:
        for mode in ("calibrated", "l1"):
            out_dir = os.path.join(args.dir, "pruned", fmt, f"{name}_{mode}")
            info = prune_one(src, out_dir, prune, args.ratio, calib if mode == "calibrated" else None)
            row = {"format": fmt, "variant": name, "mode": mode, **info, **check(info["path"], held, prompt)}
            if args.genai_python and fmt.startswith("genai"):
                row["genai_generate"] = genai_generate(args.genai_python, out_dir)
            rows.append(row)
            print(f"{fmt}: {name} {mode}: perplexity {row['perplexity']:.3f} ({info['seconds']}s)", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| format | pruned | criterion | params | K/V heads | MLP units | perplexity | decode 16 |",
             "|---|---|---|---|---|---|---|---|"]
    base = {}
    for r in rows:
        if r["variant"] == "original":
            base[r["format"]] = r
            lines.append(f"| {LABELS[r['format']]} | — | — | {_m(r.get('params_orig'))} | {r['kv_heads']} | "
                         f"{r['mlp_units']} | {r['perplexity']:.2f} | {_ok(r)} |")
            continue
        crit = "obs + lstsq, calibrated" if r["mode"] == "calibrated" else "l1"
        p0, p1 = r["params"]
        lines.append(f"| {LABELS[r['format']]} | {WHAT[r['variant']]} | {crit} | {_m(p0)} → {_m(p1)} | "
                     f"{base[r['format']]['kv_heads']} → {r['kv_heads']} | "
                     f"{base[r['format']]['mlp_units']} → {r['mlp_units']} | {r['perplexity']:.2f} | {_ok(r)} |")
    return "\n".join(lines)


def _m(n) -> str:
    return "" if n is None else f"{n / 1e6:.2f}M"


def _ok(r: dict) -> str:
    d = r["decode"]
    ok = d["steps"] == 16 and d["max_abs_diff_vs_full"] <= 1e-3 * max(1.0, d["logit_scale"]) * 10
    gen = r.get("genai_generate")
    text = "yes" if ok else f"no ({d['max_abs_diff_vs_full']:.2g})"
    if gen is not None:
        text += ", og: " + ("yes" if gen["ok"] and gen.get("new") == 16 else "no")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=os.path.join(REPO_ROOT, "build", "tinylm"))
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--calib-sequences", type=int, default=128)
    ap.add_argument("--heldout-sequences", type=int, default=256)
    ap.add_argument("--genai-python", default=None, help="interpreter with onnxruntime-genai: og generation check")
    args = ap.parse_args(argv)
    held = np.load(os.path.join(args.dir, "data", "heldout.npy"))[:args.heldout_sequences]
    calib_seqs = np.load(os.path.join(args.dir, "data", "train_sample.npy"))[:args.calib_sequences]
    rows = []
    for fmt in args.formats.split(","):
        rows += bench_format(fmt, args, held, calib_seqs)
    for r in rows:
        if r["variant"] == "original":
            r["params_orig"] = next(x["params"][0] for x in rows if x["format"] == r["format"] and "params" in x)
    with open(os.path.join(args.dir, "bench.json"), "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
