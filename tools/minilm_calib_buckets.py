#!/usr/bin/env python
"""Write MiniLM calibration data as length buckets: sentences with the same token count are
batched together (16 per file) without padding, so statistics and reconstruction see only real
tokens and ONNX Runtime still runs batches.

    python tools/minilm_calib_buckets.py --sentences 1024 --out build/minilm/calib_buckets
    onnxprune build/minilm/minilm_torchscript.onnx --ratio 0.5 --calib build/minilm/calib_buckets
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minilm_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=1024)
    ap.add_argument("--out", default="build/minilm/calib_buckets")
    ap.add_argument("--tokenizer", default="build/minilm/tokenizer", help="written by tools/export_minilm.py")
    ap.add_argument("--max-len", type=int, default=128)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):
        if f.endswith(".npz"):
            os.remove(os.path.join(args.out, f))
    by_len = collections.defaultdict(list)
    for s in minilm_data.calibration_sentences(args.sentences):
        enc = tok([s], truncation=True, max_length=args.max_len, return_tensors="np")
        by_len[enc["input_ids"].shape[1]].append(enc)
    files = 0
    for _, encs in sorted(by_len.items()):
        for j in range(0, len(encs), 16):
            chunk = encs[j:j + 16]
            arrays = {k: np.concatenate([e[k] for e in chunk]).astype(np.int64)
                      for k in ("input_ids", "attention_mask", "token_type_ids")}
            np.savez(os.path.join(args.out, f"{files:05d}.npz"), **arrays)
            files += 1
    print(f"wrote {files} files ({args.sentences} sentences) to {args.out}")


if __name__ == "__main__":
    main()
