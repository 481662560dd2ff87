#!/usr/bin/env python
"""Export a BERT with bert-base's shapes (random weights, fixed seed, no downloads).

``transformers.BertConfig()``'s defaults are bert-base-uncased's shapes: 30,522-token vocabulary,
hidden size 768, 12 layers of 12 heads, FFN 3072 (109M weights, 22% of them in the embeddings).
``tools/bench_quantized.py`` quantizes it with ONNX Runtime (``quantize_static`` QDQ and
``quantize_dynamic``) and prunes it: MiniLM's shapes are dominated by its embedding table, a
BERT-base's by its encoder, which is where structured pruning removes weights. Biases and
LayerNorm parameters get N(0, 0.1) noise, as a trained model's are not 0 and 1.

Exported with the TorchScript exporter (opset 17, eager attention), inputs ``input_ids`` and
``attention_mask`` (batch and sequence dynamic), output ``last_hidden_state``; checked against
PyTorch. Needs torch and transformers::

    python tools/export_bert_base.py [--out build/bert_base.onnx]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 0


def main(argv=None) -> int:
    import onnxruntime as ort
    import torch
    from transformers import BertConfig, BertModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "build", "bert_base.onnx"))
    args = ap.parse_args(argv)
    torch.manual_seed(SEED)
    model = BertModel(BertConfig(attn_implementation="eager"), add_pooling_layer=False).eval()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # non-trivial biases and norms (the default init leaves them at 0 and 1)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=g)
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, -3:] = 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
               "last_hidden_state": {0: "batch", 1: "sequence"}}
    class Encoder(torch.nn.Module):  # positional inputs, one output
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        torch.onnx.export(Encoder(model), (ids, mask), args.out, input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], dynamic_axes=dynamic, opset_version=17,
                          dynamo=False)
    got = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    err = float(np.abs(got - expected).max())
    if err > 1e-3:
        raise SystemExit(f"{args.out}: ONNX Runtime differs from PyTorch by {err:.2e}")
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB; max difference from PyTorch {err:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
