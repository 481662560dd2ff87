#!/usr/bin/env python
"""Export a tiny BERT encoder written in plain torch, in the classic attention pattern.

``onnxruntime.transformers.optimizer`` fuses BERT attention by matching the subgraph the
original BERT implementation exports to: Q/K/V Linear layers with bias, ``view(b, t, h, d)``
and ``permute`` to heads (the head count a constant in the shape vector's Concat), ``q·kᵀ``
divided by ``sqrt(d)``, plus the extended mask ``(1 - mask[:, None, None, :]) * -10000``,
softmax, ``probs·v``, ``permute`` and ``view`` back, then dense + residual + LayerNorm and a
GELU FFN. Current ``transformers`` versions export a different mask and a ``-1`` head count,
which the optimizer does not fuse without being told the head count. This module writes the
classic pattern so that the fusion of a pruned model can be tested
(``tests/test_ort_fusion.py``).

Random weights (fixed seed), 2 layers, hidden 64, 4 heads, FFN 128, vocabulary 100; exported
with the TorchScript exporter (``dynamo=False``), opset 17, dynamic batch and sequence, to
``models/bert_classic_torchscript.onnx`` (< 1 MB, committed so the tests do not need torch).
The export is compared with PyTorch in ONNX Runtime.

Usage::

    python tools/export_bert_classic.py
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
from torch import nn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO_ROOT, "models", "bert_classic_torchscript.onnx")
SEED = 0
VOCAB, MAX_POS, HIDDEN, HEADS, LAYERS, FFN = 100, 32, 64, 4, 2, 128


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.heads, self.head_dim = HEADS, HIDDEN // HEADS
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))

    def split(self, x):
        x = x.view(x.size()[:-1] + (self.heads, self.head_dim))
        return x.permute(0, 2, 1, 3)

    def forward(self, x, extended_mask):
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + extended_mask, dim=-1)
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return context.view(context.size()[:-2] + (self.heads * self.head_dim,))


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = SelfAttention()
        self.attention_out = nn.Linear(HIDDEN, HIDDEN)
        self.attention_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.intermediate = nn.Linear(HIDDEN, FFN)
        self.output = nn.Linear(FFN, HIDDEN)
        self.output_norm = nn.LayerNorm(HIDDEN, eps=1e-12)

    def forward(self, x, extended_mask):
        a = self.attention_norm(self.attention_out(self.attention(x, extended_mask)) + x)
        h = nn.functional.gelu(self.intermediate(a))
        return self.output_norm(self.output(h) + a)


class ClassicBert(nn.Module):
    def __init__(self):
        super().__init__()
        self.word = nn.Embedding(VOCAB, HIDDEN)
        self.position = nn.Embedding(MAX_POS, HIDDEN)
        self.token_type = nn.Embedding(2, HIDDEN)
        self.embedding_norm = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.register_buffer("position_ids", torch.arange(MAX_POS).unsqueeze(0))

    def forward(self, input_ids, attention_mask, token_type_ids):
        positions = self.position_ids[:, : input_ids.size(1)]
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        x = self.embedding_norm(x)
        extended = attention_mask[:, None, None, :].to(x.dtype)
        extended = (1.0 - extended) * -10000.0
        for layer in self.layers:
            x = layer(x, extended)
        return x


def main():
    import onnxruntime as ort

    torch.manual_seed(SEED)
    model = ClassicBert().eval()
    # Spread the weights a little beyond PyTorch's defaults so that heads differ visibly.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.1)
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, VOCAB, (2, 16), generator=g)
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, -5:] = 0
    types = torch.zeros(2, 16, dtype=torch.int64)
    types[:, 8:] = 1
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, mask, types), OUT, dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask", "token_type_ids"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                        "last_hidden_state": axes})
    with torch.no_grad():
        expected = model(ids, mask, types).numpy()
    sess = ort.InferenceSession(OUT, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                          "token_type_ids": types.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    print(f"{OUT}: {os.path.getsize(OUT) / 1024:.0f} KiB, matches PyTorch")


if __name__ == "__main__":
    main()
