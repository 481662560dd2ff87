#!/usr/bin/env python
"""Build tiny ONNX Runtime GenAI models (random weights, no downloads) with the GenAI model builder.

A LLaMA-style checkpoint (8 query heads on 4 K/V heads of head size 16, 2 layers, gated MLP,
RMSNorm, rotary embeddings, a 320-token byte-level BPE tokenizer trained on the standard
library's docstrings) is made from a ``transformers`` config with a fixed seed, saved as a
Hugging Face folder, and run through::

    python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p fp32|fp16|int4 -e cpu

into ``models/genai_llama_<precision>/`` (model.onnx, genai_config.json, tokenizer files). The
builder writes GroupQueryAttention with packed QKV and rotary embedding inside it,
SkipSimplifiedLayerNormalization, SimplifiedLayerNormalization, opset 21+ and, for int4,
MatMulNBits (block size 32, the builder's default). Each folder is checked by generating 16
tokens with ``onnxruntime_genai``. Needs torch, transformers, tokenizers and onnxruntime-genai
(the ``genai`` venv)::

    /work/venvs/genai/bin/python tools/export_genai.py [fp32 fp16 int4]

``--shape wide --out DIR`` builds a decoder with an LLM's proportions instead (hidden size 512,
8 query heads on 4 K/V heads of 64, 4 layers, a gated MLP of 1408 units, the same 320-token
vocabulary: 12.5M parameters, 2.6% of them in the embeddings), into ``DIR/genai_llama_<precision>/``;
``tools/bench_quantized.py`` prunes its int4 folder.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.path.join(REPO_ROOT, "models")
SEED = 0
VOCAB = 320
PRECISIONS = ("fp32", "fp16", "int4")
#: decoder shapes: the committed test models' (``tiny``), and one with an LLM's proportions
#: (blocks far larger than the embeddings) for measuring what pruning removes
SHAPES = {"tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=16, intermediate_size=256),
          "wide": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=64, intermediate_size=1408)}
#: the builder's execution provider per precision: fp16 is a CUDA precision to it (for the CPU it
#: writes an unfused attention that ONNX Runtime GenAI fails to run)
EP = {"fp32": "cpu", "fp16": "cuda", "int4": "cpu"}
#: what the builder writes besides the model, copied into the committed folder
KEEP = ("model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "chat_template.jinja")


def _corpus() -> list[str]:
    """Docstrings of a few standard-library modules: text that is always there, offline."""
    import collections
    import functools
    import json
    import textwrap
    out = []
    for mod in (collections, functools, json, textwrap, argparse, inspect):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc:
                out.append(doc)
    return out


def make_tokenizer(path: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)


def make_checkpoint(path: str, shape: str = "tiny") -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=VOCAB, **SHAPES[shape], max_position_embeddings=128,
                      bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():  # non-trivial norms (default init leaves them at 1)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(path)
    make_tokenizer(path)


def build(hf_dir: str, precision: str, out: str, python: str = sys.executable) -> None:
    """Run the GenAI builder (in ``python``, an interpreter with onnxruntime-genai) on ``hf_dir``
    and copy what it writes (:data:`KEEP`) to the folder ``out``."""
    with tempfile.TemporaryDirectory() as work:
        cmd = [python, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", work,
               "-p", precision, "-e", EP[precision], "-c", os.path.join(work, "cache")]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"the GenAI builder failed ({' '.join(cmd)}):\n{res.stderr[-3000:]}")
        if os.path.exists(out):
            shutil.rmtree(out)
        os.makedirs(out)
        for name in KEEP:
            if os.path.exists(os.path.join(work, name)):
                shutil.copy(os.path.join(work, name), out)


def check_generation(folder: str, tokens: int = 16) -> list[int]:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from genai_generate import generate
    return generate(folder, tokens)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("precisions", nargs="*", help=f"some of {', '.join(PRECISIONS)} (default: all)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--out", default=MODELS_DIR, help="the folder the genai_llama_<precision> folders go in")
    args = ap.parse_args(argv)
    if set(args.precisions) - set(PRECISIONS):
        ap.error(f"precisions are {', '.join(PRECISIONS)}")
    args.precisions = args.precisions or list(PRECISIONS)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = os.path.join(tmp, "hf")
        make_checkpoint(hf_dir, args.shape)
        for precision in args.precisions:
            out = os.path.join(args.out, f"genai_llama_{precision}")
            build(hf_dir, precision, out)
            seq = check_generation(out)
            size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
            print(f"{out}: {size / 1e6:.2f} MB, generated {seq}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
