#!/usr/bin/env python
"""Export tiny transformers (random weights, no downloads) with both PyTorch exporters.

BERT, ViT, GPT-2 and a LLaMA-style model (grouped-query attention: 4 query heads, 2 K/V heads;
rotary embeddings; gated MLP) are built from ``transformers`` configs with a fixed seed, eager
attention (MatMul/Softmax), and exported to ``models/<name>_<exporter>.onnx``:

- ``torchscript``: ``torch.onnx.export(dynamo=False)``, opset 17, dynamic batch and sequence;
- ``dynamo``: ``torch.onnx.export(dynamo=True)``, opset 18, dynamic batch and sequence (ViT:
  dynamic batch), weights embedded.

Every export is run in ONNX Runtime and compared with PyTorch. The files are small (< 1 MB) and
committed, so the tests (``tests/test_models.py``) do not need torch.

Usage::

    python tools/export_transformers.py                 # every model, both exporters
    python tools/export_transformers.py bert gpt2 --only dynamo
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS_DIR = os.path.join(REPO_ROOT, "models")
SEED = 0


class LastHidden(torch.nn.Module):
    """A transformers model returning only ``last_hidden_state``."""

    def __init__(self, model, names):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, x, mask=None):
        kwargs = dict(zip(self.names, (x, mask)))
        out = self.model(**kwargs, return_dict=True, **({"use_cache": False} if self.uses_cache else {}))
        return out.last_hidden_state

    @property
    def uses_cache(self):
        return hasattr(self.model.config, "use_cache")


def _text_inputs(vocab: int, batch: int = 2, seq: int = 7, mask: bool = True):
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    att = torch.ones(batch, seq, dtype=torch.int64)
    att[1, -2:] = 0  # padding at the end of the second sequence
    return ({"input_ids": ids, "attention_mask": att} if mask else {"input_ids": ids})


def bert():
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    return BertModel(cfg, add_pooling_layer=False), _text_inputs(100)


def vit():
    from transformers import ViTConfig, ViTModel
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=64, attn_implementation="eager")
    g = torch.Generator().manual_seed(SEED)
    return ViTModel(cfg, add_pooling_layer=False), {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}


def gpt2():
    from transformers import GPT2Config, GPT2Model
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=32, n_inner=64,
                     attn_implementation="eager")
    return GPT2Model(cfg), _text_inputs(100)


def llama():
    from transformers import LlamaConfig, LlamaModel
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
                      attn_implementation="eager")
    return LlamaModel(cfg), _text_inputs(100)


MODELS = {"bert": bert, "vit": vit, "gpt2": gpt2, "llama": llama}


def _randomize(model):
    """Non-trivial norms and biases (default init leaves LayerNorm at 1/0 and biases at 0)."""
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower() or "ln_" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def export(name: str, exporter: str) -> str:
    torch.manual_seed(SEED)
    model, inputs = MODELS[name]()
    _randomize(model)
    model.eval()
    names = list(inputs)
    wrapped = LastHidden(model, names).eval()
    example = tuple(inputs[n] for n in names)
    path = os.path.join(MODELS_DIR, f"{name}_{exporter}.onnx")
    image = name == "vit"
    if exporter == "torchscript":
        dyn = {n: ({0: "batch"} if image else {0: "batch", 1: "seq"}) for n in names}
        dyn["last_hidden_state"] = {0: "batch"} if image else {0: "batch", 1: "seq"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, example, path, dynamo=False, opset_version=17, do_constant_folding=True,
                              input_names=names, output_names=["last_hidden_state"], dynamic_axes=dyn)
    else:
        batch = torch.export.Dim("batch", min=1, max=64)
        seq = torch.export.Dim("seq", min=2, max=32)
        shapes = tuple({0: batch} if image else {0: batch, 1: seq} for _ in names)
        prog = torch.onnx.export(wrapped, example, dynamo=True, opset_version=18, input_names=names,
                                 output_names=["last_hidden_state"], dynamic_shapes=shapes, optimize=True,
                                 verify=False)
        prog.save(path, external_data=False)
    _check(path, wrapped, inputs)
    return path


def _check(path: str, model, inputs) -> None:
    import onnx
    import onnxruntime as ort
    onnx.checker.check_model(onnx.load(path), full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(*inputs.values()).numpy()
    got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    err = float(np.abs(got - want).max())
    print(f"{os.path.relpath(path, REPO_ROOT)}: {os.path.getsize(path) / 1e3:.0f} kB, max |ORT - torch| {err:.2e}")
    if err > 1e-3:
        raise SystemExit(f"{path}: ONNX Runtime disagrees with PyTorch ({err})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", choices=[[], *MODELS], default=[])
    ap.add_argument("--only", choices=["torchscript", "dynamo"])
    args = ap.parse_args(argv)
    os.makedirs(MODELS_DIR, exist_ok=True)
    for name in args.models or list(MODELS):
        for exporter in [args.only] if args.only else ["torchscript", "dynamo"]:
            export(name, exporter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
