#!/usr/bin/env python
"""Generate tokens with ONNX Runtime GenAI from model folders (``og.Model``, ``og.Generator``).

For each folder (genai_config.json, the model, tokenizer files), greedy-decodes ``--tokens``
new tokens after a fixed prompt, on ONNX Runtime's CPU kernels whatever provider the folder's
config names, and prints one JSON line per folder: ``{"folder", "prompt", "tokens", "new"}``.
Exit code 1 (and the error on stderr) when a folder fails to load or generate. Needs
``onnxruntime-genai`` (the tests run it in a subprocess with such an interpreter)::

    python tools/genai_generate.py models/genai_llama_fp32 pruned_folder --tokens 16
"""

from __future__ import annotations

import argparse
import json
import sys

PROMPT = [0, 5, 6, 7]


def generate(folder: str, tokens: int) -> list[int]:
    import onnxruntime_genai as og
    config = og.Config(folder)
    config.clear_providers()  # ONNX Runtime's CPU kernels
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(PROMPT) + tokens, min_length=len(PROMPT) + tokens, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens([PROMPT])
    while not gen.is_done():
        gen.generate_next_token()
    return [int(t) for t in gen.get_sequence(0)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args(argv)
    status = 0
    for folder in args.folders:
        try:
            seq = generate(folder, args.tokens)
        except Exception as exc:  # report and go on with the next folder
            print(f"{folder}: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(json.dumps({"folder": folder, "prompt": PROMPT, "tokens": seq, "new": len(seq) - len(PROMPT)}))
    return status


if __name__ == "__main__":
    sys.exit(main())
