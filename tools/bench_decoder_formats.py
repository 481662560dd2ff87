#!/usr/bin/env python
"""Prune the committed LLaMA-style decoders in each format they ship in and print one row per
format: params before and after, K/V heads and MLP units before and after (summed over layers),
whether the pruned model runs 16 steps of KV-cache decoding in ONNX Runtime with each step's logits
equal to recomputing the whole sequence, and whether the format's own runtime generates with it.

The decoders (random weights, from ``tools/export_llama_cache.py`` and ``tools/export_genai.py``):
the dynamo export with a KV cache, optimum's ``text-generation-with-past`` folder, and the GenAI
builder's fp32, fp16 and int4 folders. Pruning: ``--ratio`` (default 0.5) of the heads (whole K/V
groups) and MLP units, ``l1``. Generation: ``og.Generator`` (``tools/genai_generate.py``) with
``--genai-python``, optimum's ``ORTModelForCausalLM.generate`` (``tools/check_optimum_generate.py``)
with ``--export-python``, each also on a folder pruned with ``--prune channels`` (MLP units only)::

    python tools/bench_decoder_formats.py [--ratio 0.5] [--genai-python PY] [--export-python PY]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_tiny_lm import genai_generate, shape_counts  # noqa: E402
from eval_lm_perplexity import Decoder, decode, model_path  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(REPO_ROOT, "models")
FORMATS = (("dynamo export, KV cache", "llama_cache_dynamo.onnx", None),
           ("optimum, text-generation-with-past", "llama_optimum", "optimum"),
           ("GenAI builder, fp32", "genai_llama_fp32", "genai"),
           ("GenAI builder, fp16", "genai_llama_fp16", "genai"),
           ("GenAI builder, int4", "genai_llama_int4", "genai"))


def optimum_generate(python: str, folder: str) -> bool:
    res = subprocess.run([python, os.path.join(REPO_ROOT, "tools", "check_optimum_generate.py"), folder, "--new", "16"],
                         capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        print(f"  optimum: {res.stderr.strip().splitlines()[-1][:300] if res.stderr.strip() else res.returncode}",
              file=sys.stderr)
    return res.returncode == 0


def prune_to(src: str, out_dir: str, ratio: float, prune: tuple[str, ...]) -> tuple[str, list[int]]:
    """Prune the model (of a folder: its model file) into ``out_dir``, configs written beside it."""
    import onnxprune
    result = onnxprune.prune(model_path(src), ratio=ratio, criterion="l1", prune=prune)
    out = os.path.join(out_dir, os.path.basename(model_path(src)))
    result.save(out)
    for extra in ("generation_config.json",):  # optimum reads it beside the model
        if os.path.isdir(src) and os.path.exists(os.path.join(src, extra)):
            shutil.copy(os.path.join(src, extra), out_dir)
    return (out_dir if os.path.isdir(src) else out), [result.report["before"]["params"], result.report["after"]["params"]]


def generates(runtime: str | None, folder: str, args) -> str:
    if runtime == "genai" and args.genai_python:
        gen = genai_generate(args.genai_python, folder)
        return "yes" if gen["ok"] and gen.get("new") == 16 else "no"
    if runtime == "optimum" and args.export_python:
        return "yes" if optimum_generate(args.export_python, folder) else "no"
    return "—" if runtime is None else "not run"


def row(label: str, name: str, runtime: str | None, args, tmp: str) -> str:
    src = os.path.join(MODELS, name)
    kv0, units0 = shape_counts(src)
    out, params = prune_to(src, os.path.join(tmp, name, "both"), args.ratio, ("heads", "channels"))
    kv1, units1 = shape_counts(out)
    dec = decode(Decoder(out), [5, 17, 42, 99], 16)
    valid = dec["steps"] == 16 and dec["max_abs_diff_vs_full"] <= 1e-2 * max(1.0, dec["logit_scale"])
    gen_both = generates(runtime, out, args)
    gen_mlp = "—"
    if runtime is not None:
        mlp_out, _ = prune_to(src, os.path.join(tmp, name, "mlp"), args.ratio, ("channels",))
        gen_mlp = generates(runtime, mlp_out, args)
    p0, p1 = params
    return (f"| {label} | {p0 / 1e3:.1f}k → {p1 / 1e3:.1f}k ({(p1 - p0) / p0:+.1%}) | {kv0} → {kv1} | "
            f"{units0} → {units1} | {'yes' if valid else 'no'} | {gen_both} | {gen_mlp} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--genai-python", default=None, help="interpreter with onnxruntime-genai")
    ap.add_argument("--export-python", default=None, help="interpreter with optimum-onnx")
    args = ap.parse_args(argv)
    print("| format | params | K/V heads | MLP units | 16-token KV-cache decoding | generation (heads + MLP) "
          "| generation (MLP only) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, runtime in FORMATS:
            print(row(label, name, runtime, args, tmp), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
