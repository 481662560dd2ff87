#!/usr/bin/env python
"""Held-out perplexity of an ONNX decoder with ONNX Runtime, and a KV-cache decoding check.

Works for the decoders ``tools/train_tiny_lm.py`` exports, pruned or not: the dynamo export with a
KV cache (``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.N.key/value`` in;
``logits``, ``present.N.key/value`` out) and ONNX Runtime GenAI builder folders (the same without
``position_ids``; GroupQueryAttention; fp32, fp16 or int4). MODEL is a ``.onnx`` file, a GenAI
folder (its ``genai_config.json`` names the model) or an optimum folder (``model.onnx``).

- **perplexity**: each held-out sequence (an ``(N, T)`` int array of token ids in a ``.npy``, as
  ``train_tiny_lm.py`` writes ``heldout.npy``) is run whole with an empty past; the mean negative
  log-likelihood of every next token (T - 1 per sequence), exponentiated. Logits are read in
  float64 whatever the model's precision.
- **decoding** (``--decode N``): greedy decoding of N tokens after a prompt taken from the first
  held-out sequence, feeding each step's ``present.*`` back as the next ``past_key_values.*``;
  checked against recomputing the whole sequence with an empty past (each step's last logits).

Prints one JSON line: ``{"model", "perplexity", "nll", "tokens", "decode": {...}}``::

    python tools/eval_lm_perplexity.py build/tinylm/dynamo/model.onnx --data build/tinylm/data/heldout.npy --decode 16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

CACHE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


def model_path(path: str) -> str:
    """The model file of MODEL: the file itself, or the one a GenAI folder's config names."""
    if os.path.isdir(path):
        config = os.path.join(path, "genai_config.json")
        if not os.path.exists(config):  # an optimum folder
            return os.path.join(path, "model.onnx")
        with open(config, encoding="utf-8") as f:
            return os.path.join(path, json.load(f)["model"]["decoder"]["filename"])
    return path


def session(path: str, threads: int = 1):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model_path(path), opts, providers=["CPUExecutionProvider"])


class Decoder:
    """One ONNX decoder step: token ids and a past cache in, logits and the present cache out."""

    def __init__(self, path: str, threads: int = 1):
        self.path = model_path(path)
        self.sess = session(path, threads)
        self.inputs = {i.name: i for i in self.sess.get_inputs()}
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self.past = [n for n in self.inputs if CACHE.match(n)]
        t = self.inputs[self.past[0]].type if self.past else "tensor(float)"
        self.cache_dtype = np.float16 if "float16" in t else np.float32

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """A cache of length 0 for every layer, shaped as the model declares its K/V heads."""
        out = {}
        for name in self.past:
            shape = self.inputs[name].shape
            heads, size = shape[1], shape[3]
            if not isinstance(size, int):  # the GenAI builder leaves the head size symbolic
                size = self._head_size(name)
            out[name] = np.zeros((batch, heads, 0, size), self.cache_dtype)
        return out

    def _head_size(self, name: str) -> int:
        config = os.path.join(os.path.dirname(self.path), "genai_config.json")
        if not os.path.exists(config):
            raise SystemExit(f"{name}: the head size is symbolic and there is no genai_config.json beside the model")
        with open(config, encoding="utf-8") as f:
            return int(json.load(f)["model"]["decoder"]["head_size"])

    def step(self, ids: np.ndarray, done: int, past: dict) -> dict[str, np.ndarray]:
        batch, seq = ids.shape
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((batch, done + seq), np.int64), **past}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.tile(np.arange(done, done + seq, dtype=np.int64), (batch, 1))
        return dict(zip(self.outputs, self.sess.run(None, feeds)))


def perplexity(dec: Decoder, data: np.ndarray, batch: int = 16) -> tuple[float, int]:
    """Mean next-token NLL over the sequences of ``data`` (N, T), and the number of tokens."""
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        ids = data[i:i + batch].astype(np.int64)
        logits = dec.step(ids, 0, dec.empty_past(len(ids)))["logits"].astype(np.float64)[:, :-1]
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        target = ids[:, 1:]
        total -= float(np.take_along_axis(logp, target[..., None], axis=-1).sum())
        count += target.size
    return total / count, count


def decode(dec: Decoder, prompt: list[int], steps: int) -> dict:
    """Greedy KV-cache decoding of ``steps`` tokens; each step's last logits are compared with a
    recomputation of the whole sequence from an empty past (max |difference|)."""
    past, done = dec.empty_past(1), 0
    ids, tokens, last = np.array([prompt], np.int64), [], []
    for _ in range(steps):
        res = dec.step(ids, done, past)
        done += ids.shape[1]
        last.append(res["logits"][0, -1].astype(np.float64))
        tokens.append(int(last[-1].argmax()))
        ids = np.array([[tokens[-1]]], np.int64)
        past = {n: res[n.replace("past_key_values", "present")] for n in past}
    seq = list(prompt) + tokens
    worst = 0.0
    for k in range(steps):
        n = len(prompt) + k
        full = dec.step(np.array([seq[:n]], np.int64), 0, dec.empty_past(1))["logits"][0, -1].astype(np.float64)
        worst = max(worst, float(np.abs(full - last[k]).max()))
    scale = max(float(np.abs(x).max()) for x in last)
    return {"tokens": tokens, "steps": len(tokens), "max_abs_diff_vs_full": worst, "logit_scale": scale}


def evaluate(model: str, data: np.ndarray, decode_steps: int = 0, threads: int = 1, prompt_len: int = 8) -> dict:
    dec = Decoder(model, threads)
    nll, count = perplexity(dec, data)
    out = {"model": model, "perplexity": float(np.exp(nll)), "nll": nll, "tokens": count}
    if decode_steps:
        out["decode"] = decode(dec, [int(t) for t in data[0, :prompt_len]], decode_steps)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help=".onnx files or GenAI folders")
    ap.add_argument("--data", default="build/tinylm/data/heldout.npy", help="(N, T) token ids (.npy)")
    ap.add_argument("--sequences", type=int, default=None, help="use the first N held-out sequences")
    ap.add_argument("--decode", type=int, default=16, help="greedy KV-cache decoding steps (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    data = np.load(args.data)[:args.sequences]
    for m in args.models:
        print(json.dumps(evaluate(m, data, args.decode, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
