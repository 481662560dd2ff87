#!/usr/bin/env python
"""Prune the tiny BERTs of ``tools/export_bert_formats.py`` (``--ratio``, heads and MLP units,
``l1``) and print one row per format: params before and after, attention heads before and after
and MLP units before and after (summed over layers; the fused nodes' ``num_heads`` are
checked against the kept heads), and whether the pruned model loads and runs in
ONNX Runtime on a padded batch of token ids.

Usage::

    python tools/bench_bert_formats.py [--ratio 0.3]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnx

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

FORMATS = (("dynamo export, SDPA attention (opset 18)", "bert_sdpa_dynamo.onnx"),
           ("dynamo export at opset 23 (ai.onnx Attention)", "bert_opset23.onnx"),
           ("ONNX Runtime transformer optimizer, fused Attention", "bert_ort_optimized.onnx"),
           ("ONNX Runtime transformer optimizer, MultiHeadAttention", "bert_ort_optimized_mha.onnx"))


def units(result, kind: str) -> tuple[int, int]:
    """Heads (``kind`` "heads") or other channels (MLP units here) of the prunable groups, before
    and after, summed over the groups (one per layer here)."""
    groups = [g for g in result.context.analysis.prunable_groups if g.kind == kind]
    kept = result.context.selection.kept
    return sum(g.channels for g in groups), sum(kept[g.id][0] if g.id in kept else g.channels for g in groups)


def fused_heads(model: onnx.ModelProto) -> int | None:
    """``num_heads`` of the fused attention nodes, summed (None without any)."""
    counts = [a.i for n in model.graph.node if n.op_type in ("Attention", "MultiHeadAttention")
              for a in n.attribute if a.name in ("num_heads", "q_num_heads")]
    return sum(counts) if counts else None


def runs(model: onnx.ModelProto) -> bool:
    import onnxruntime as ort
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        types = {i.name: i.type for i in sess.get_inputs()}
        rng = np.random.default_rng(0)
        mask = np.ones((2, 7), np.int64)
        mask[1, -2:] = 0
        x = {"input_ids": rng.integers(0, 100, (2, 7)), "attention_mask": mask, "token_type_ids": np.zeros((2, 7))}
        feeds = {k: v.astype(np.int32 if types[k] == "tensor(int32)" else np.int64) for k, v in x.items() if k in types}
        out = sess.run(None, feeds)[0]
        return bool(np.isfinite(out).all())
    except Exception as exc:  # report it as not valid
        print(f"  ONNX Runtime: {exc}", file=sys.stderr)
        return False


def main(argv=None) -> int:
    import onnxprune
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratio", type=float, default=0.3)
    args = ap.parse_args(argv)
    print("| format | model | params | heads | MLP units | valid |")
    print("|---|---|---|---|---|---|")
    for label, name in FORMATS:
        path = os.path.join(REPO_ROOT, "models", name)
        result = onnxprune.prune(path, ratio=args.ratio, criterion="l1")
        before, after = result.report["before"]["params"], result.report["after"]["params"]
        h0, h1 = units(result, "heads")
        m0, m1 = units(result, "channels")
        if fused_heads(result.model) not in (None, h1):
            raise SystemExit(f"{name}: num_heads {fused_heads(result.model)} differ from the kept heads {h1}")
        print(f"| {label} | `{name}` | {before / 1e3:.2f}k → {after / 1e3:.2f}k ({(after - before) / before:+.1%}) "
              f"| {h0} → {h1} | {m0} → {m1} | {'yes' if runs(result.model) else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
