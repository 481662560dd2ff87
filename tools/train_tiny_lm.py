#!/usr/bin/env python
"""Train a tiny LLaMA-style decoder on the standard library's sources and export it two ways.

No weights or data sets can be downloaded here, so the model is trained from scratch on text every
Python installation has: the top-level modules of the standard library (``Lib/*.py``, sources and
docstrings). The split is deterministic: files sorted by name, every 10th (index % 10 == 5) is
held out, the rest is training text.

- **tokenizer**: byte-level BPE, 1024 tokens (``<s>``, ``</s>`` special), trained on the training
  files with ``tokenizers``.
- **model**: ``LlamaForCausalLM`` from a transformers ``LlamaConfig``: 6 layers, hidden size 128,
  grouped-query attention with 8 query heads on 4 K/V heads of 16 (ONNX Runtime's CPU
  GroupQueryAttention needs a head size that is a multiple of 8; a K/V group is 32 channels, one
  int4 quantization block), RMSNorm, SwiGLU MLP of 512 units (16 blocks of 32), rotary
  embeddings, untied embeddings: 1.74M parameters.
- **training**: AdamW, linear warm-up then cosine decay, sequences of 128 tokens cut from the
  training token stream (1.54M tokens), a fixed seed and a fixed number of steps (``--steps``,
  700 of 16 sequences), PyTorch's SDPA attention (the export uses the eager one: the same
  computation), one thread (``--threads``) to share the machine: 0.86 s a step at best on a
  2-core machine shared with other work (10 minutes), 1056 s measured under heavy load; held-out
  perplexity 30.3.
- **data written** (``--out``, default ``build/tinylm``): ``hf/`` (the checkpoint and tokenizer),
  ``data/heldout.npy`` (``--heldout`` sequences of 128 tokens from the held-out files, (N, 128)
  int64), ``data/train_sample.npy`` (training sequences for calibration), ``data/split.json``
  (which files went where, token counts).
- **exports**: ``dynamo/model.onnx``, ``torch.onnx.export(dynamo=True)`` with a KV cache, as
  ``tools/export_llama_cache.py`` writes it (inputs ``input_ids``, ``attention_mask``,
  ``position_ids``, ``past_key_values.N.key/value``; outputs ``logits``, ``present.N.key/value``),
  checked against PyTorch; and ``genai_fp32/``, ``genai_int4/`` from the ONNX Runtime GenAI model
  builder (``--genai-python``: an interpreter with ``onnxruntime-genai`` and transformers 5, as
  ``tools/export_genai.py`` runs it; skipped without it).

Run with an interpreter that has torch (``pip install torch==2.13.0``), transformers < 4.58,
tokenizers, onnxscript and onnxruntime; the GenAI one needs torch, transformers 5,
onnxruntime-genai and onnx-ir (the builder imports it)::

    python tools/train_tiny_lm.py --genai-python /path/to/genai/venv/bin/python
    python tools/train_tiny_lm.py --skip-training   # only the exports, from build/tinylm/hf
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import sysconfig
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 0
SEQ = 128
VOCAB = 1024
CONFIG = dict(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
              head_dim=16, intermediate_size=512, max_position_embeddings=512, rms_norm_eps=1e-5,
              bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, rope_theta=10000.0)


def stdlib_files() -> tuple[list[str], list[str]]:
    """(training, held-out) paths: the standard library's top-level modules, sorted by name,
    every 10th held out."""
    lib = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in os.listdir(lib) if f.endswith(".py"))
    train = [os.path.join(lib, f) for i, f in enumerate(files) if i % 10 != 5]
    held = [os.path.join(lib, f) for i, f in enumerate(files) if i % 10 == 5]
    return train, held


def read_text(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            out.append(f.read())
    return out


def make_tokenizer(texts: list[str], path: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(path)
    return tok


def token_stream(tok, texts: list[str]) -> np.ndarray:
    """Every file's tokens after a ``<s>``, concatenated."""
    ids = []
    for enc in tok.encode_batch(texts):
        ids.append(0)
        ids.extend(enc.ids)
    return np.asarray(ids, np.int64)


def sequences(stream: np.ndarray, count: int | None = None) -> np.ndarray:
    """Consecutive, non-overlapping sequences of SEQ tokens (the first ``count``)."""
    n = len(stream) // SEQ if count is None else min(count, len(stream) // SEQ)
    return stream[:n * SEQ].reshape(n, SEQ)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def train(train_ids: np.ndarray, held: np.ndarray, args) -> object:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="sdpa"))
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M; training tokens: {len(train_ids)}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rng = np.random.default_rng(SEED)
    start = time.time()
    model.train()
    for step in range(args.steps):
        offsets = rng.integers(0, len(train_ids) - SEQ - 1, args.batch)
        batch = torch.from_numpy(np.stack([train_ids[o:o + SEQ] for o in offsets]))
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  {time.time() - start:.0f}s", flush=True)
    model.eval()
    with torch.no_grad():
        nll = [model(input_ids=torch.from_numpy(held[i:i + 16]), labels=torch.from_numpy(held[i:i + 16])).loss.item()
               for i in range(0, len(held), 16)]
    print(f"held-out perplexity (PyTorch): {math.exp(float(np.mean(nll))):.3f}; {time.time() - start:.0f}s")
    model.config._attn_implementation = "eager"  # what export_llama_cache.py exports
    return model


def prepare_data(args) -> tuple[np.ndarray, np.ndarray, object]:
    """Tokenizer, training token stream and held-out sequences; writes the tokenizer and data."""
    train_files, held_files = stdlib_files()
    train_text, held_text = read_text(train_files), read_text(held_files)
    hf_dir, data_dir = os.path.join(args.out, "hf"), os.path.join(args.out, "data")
    os.makedirs(data_dir, exist_ok=True)
    tok = make_tokenizer(train_text, hf_dir)
    train_ids, held_ids = token_stream(tok, train_text), token_stream(tok, held_text)
    held = sequences(held_ids, args.heldout)
    sample = sequences(train_ids[len(train_ids) // 2:], args.calib)  # calibration: training text
    np.save(os.path.join(data_dir, "heldout.npy"), held)
    np.save(os.path.join(data_dir, "train_sample.npy"), sample)
    with open(os.path.join(data_dir, "split.json"), "w", encoding="utf-8") as f:
        json.dump({"train_files": [os.path.basename(p) for p in train_files],
                   "heldout_files": [os.path.basename(p) for p in held_files],
                   "train_tokens": int(len(train_ids)), "heldout_tokens": int(len(held_ids)),
                   "heldout_sequences": list(held.shape), "calibration_sequences": list(sample.shape)}, f, indent=1)
    print(f"tokens: {len(train_ids)} training, {len(held_ids)} held-out ({len(held_files)} files); "
          f"held-out {held.shape}, calibration sample {sample.shape}")
    return train_ids, held, tok


def export_dynamo(model, out: str) -> str:
    """``torch.onnx.export(dynamo=True)`` with a KV cache, as export_llama_cache.py does it."""
    import export_llama_cache
    path = os.path.join(out, "dynamo", "model.onnx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    export_llama_cache.export_dynamo(model, path)
    return path


def export_genai_formats(hf_dir: str, out: str, python: str, precisions: tuple[str, ...]) -> list[str]:
    """GenAI builder folders (``genai_<precision>/``), built by ``python`` as export_genai.py does."""
    import export_genai
    done = []
    for precision in precisions:
        folder = os.path.join(out, f"genai_{precision}")
        export_genai.build(hf_dir, precision, folder, python=python)
        done.append(folder)
        print(f"{folder}: {sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 1e6:.1f} MB")
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "build", "tinylm"))
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    ap.add_argument("--heldout", type=int, default=256, help="held-out sequences of 128 tokens")
    ap.add_argument("--calib", type=int, default=256, help="training sequences written for calibration")
    ap.add_argument("--genai-python", default=None, help="interpreter with onnxruntime-genai for the GenAI builder")
    ap.add_argument("--precisions", default="fp32,int4", help="GenAI builder precisions")
    ap.add_argument("--skip-training", action="store_true", help="export the checkpoint already in OUT/hf")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    hf_dir = os.path.join(args.out, "hf")
    if args.skip_training:
        from transformers import LlamaForCausalLM
        model = LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    else:
        train_ids, held, _ = prepare_data(args)
        model = train(train_ids, held, args)
        model.save_pretrained(hf_dir)
    export_dynamo(model, args.out)
    if args.genai_python:
        export_genai_formats(hf_dir, args.out, args.genai_python, tuple(args.precisions.split(",")))
    else:
        print("no --genai-python: GenAI folders not built")
    return 0


if __name__ == "__main__":
    sys.exit(main())
