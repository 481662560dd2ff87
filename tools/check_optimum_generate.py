#!/usr/bin/env python
"""Generate with optimum's ``ORTModelForCausalLM`` from a (pruned) model folder.

Loads ``FOLDER`` (``model.onnx`` and ``config.json``, as optimum's ``text-generation-with-past``
export writes it and onnxprune updates it), generates greedily from a fixed prompt and prints
the new tokens as one JSON line: ``{"tokens": [...], "kv_heads": N}``. Exit 0 when generation
ran and produced ``--new`` tokens. Needs optimum-onnx (``/work/venvs/export``); the tests run it
in a subprocess where that environment exists::

    /work/venvs/export/bin/python tools/check_optimum_generate.py OUT_FOLDER --new 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--new", type=int, default=16, help="tokens to generate")
    ap.add_argument("--prompt", default="5,17,42,99", help="comma-separated token ids")
    args = ap.parse_args(argv)

    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(args.folder, use_cache=True, provider="CPUExecutionProvider")
    prompt = torch.tensor([[int(t) for t in args.prompt.split(",")]], dtype=torch.int64)
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new,
                         min_new_tokens=args.new, do_sample=False)
    tokens = out[0, prompt.shape[1]:].tolist()
    print(json.dumps({"tokens": tokens, "kv_heads": model.config.num_key_value_heads}))
    return 0 if len(tokens) == args.new else 1


if __name__ == "__main__":
    sys.exit(main())
