#!/usr/bin/env python
"""Export a tiny LLaMA-style decoder with a KV cache (random weights, no downloads), two ways.

The model: ``LlamaForCausalLM`` from a transformers config with grouped-query attention (8 query
heads, 4 K/V heads, head_dim 8), RMSNorm, SwiGLU MLP (128 units), rotary embeddings, 2 layers,
vocabulary 128, a fixed seed and non-trivial norm weights. Written to:

- ``models/llama_cache_dynamo.onnx``: ``torch.onnx.export(dynamo=True)``, opset 18, inputs
  ``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.N.key/value``, outputs
  ``logits``, ``present.N.key/value`` (dynamic batch, sequence and past length), checked against
  PyTorch with a non-empty past;
- ``models/llama_optimum/``: optimum's exporter, task ``text-generation-with-past`` (``model.onnx``
  with the same I/O names, ``config.json``, ``generation_config.json``), validated by optimum.

Both are small (< 1 MB) and committed, so the tests do not need torch. Run with the export venv
(torch, transformers < 4.58, optimum-onnx)::

    /work/venvs/export/bin/python tools/export_llama_cache.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.path.join(REPO_ROOT, "models")
SEED = 0
LAYERS = 2


def make_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, num_hidden_layers=LAYERS, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=8, intermediate_size=128, max_position_embeddings=64,
                      attn_implementation="eager")
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():  # RMSNorm weights start at 1: make them differ per channel
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


class WithCache(torch.nn.Module):
    """The decoder with the cache as flat tensors: (ids, mask, positions, k0, v0, k1, v1, ...)
    -> (logits, present k0, v0, ...)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, past):
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        present = out.past_key_values
        flat = [out.logits]
        for layer in present.layers:
            flat += [layer.keys, layer.values]
        return tuple(flat)


def _example(cfg, batch: int = 2, seq: int = 3, past: int = 4):
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    positions = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    shape = (batch, cfg.num_key_value_heads, past, cfg.head_dim)
    cache = tuple(torch.randn(shape, generator=g) for _ in range(2 * cfg.num_hidden_layers))
    return ids, mask, positions, cache


def export_dynamo(model, path: str | None = None) -> str:
    """Export ``model`` (a LlamaForCausalLM) with its cache as flat graph I/O to ``path``
    (default ``models/llama_cache_dynamo.onnx``) and check it against PyTorch."""
    path = path or os.path.join(MODELS_DIR, "llama_cache_dynamo.onnx")
    wrapped = WithCache(model).eval()
    layers = model.config.num_hidden_layers
    names = ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    outputs = ["logits"] + [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    batch = torch.export.Dim("batch", min=1, max=8)
    seq = torch.export.Dim("seq", min=1, max=32)
    past = torch.export.Dim("past_seq", min=1, max=32)
    total = torch.export.Dim("total", min=2, max=64)
    shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq},
              tuple({0: batch, 2: past} for _ in range(2 * layers)))
    example = _example(model.config)
    prog = torch.onnx.export(wrapped, example, dynamo=True, opset_version=18, input_names=names,
                             output_names=outputs, dynamic_shapes=shapes, optimize=True, verify=False)
    prog.save(path, external_data=False)
    _check(path, wrapped, example, names)
    return path


def _check(path: str, wrapped, example, names) -> None:
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(path), full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ids, mask, positions, cache = example
    feeds = dict(zip(names, [t.numpy() for t in (ids, mask, positions, *cache)]))
    with torch.no_grad():
        want = [t.numpy() for t in wrapped(ids, mask, positions, cache)]
    got = sess.run(None, feeds)
    err = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    print(f"{os.path.relpath(path, REPO_ROOT)}: {os.path.getsize(path) / 1e3:.0f} kB, max |ORT - torch| {err:.2e}")
    if err > 1e-3:
        raise SystemExit(f"{path}: ONNX Runtime disagrees with PyTorch ({err})")


def export_optimum(model) -> str:
    from optimum.exporters.onnx import main_export

    out = os.path.join(MODELS_DIR, "llama_optimum")
    with tempfile.TemporaryDirectory() as tmp:
        model.config.attn_implementation = "eager"
        model.save_pretrained(os.path.join(tmp, "hf"))
        main_export(os.path.join(tmp, "hf"), output=os.path.join(tmp, "onnx"), task="text-generation-with-past",
                    do_validation=True)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        for name in ("model.onnx", "config.json", "generation_config.json"):
            shutil.copy(os.path.join(tmp, "onnx", name), os.path.join(out, name))
    print(f"{os.path.relpath(out, REPO_ROOT)}/model.onnx: {os.path.getsize(os.path.join(out, 'model.onnx')) / 1e3:.0f} kB")
    return out


def main() -> int:
    os.makedirs(MODELS_DIR, exist_ok=True)
    model = make_model()
    export_dynamo(model)
    export_optimum(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
