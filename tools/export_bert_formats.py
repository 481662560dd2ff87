#!/usr/bin/env python
"""Export a tiny random-weight BERT in the attention formats that today's tools write.

The BERT (hidden 32, 4 heads, 2 layers, FFN 64; fixed seed, no downloads) is built from a
``transformers`` config and written to ``models/``:

- ``bert_sdpa_dynamo.onnx``: ``attn_implementation="sdpa"`` (transformers' default), exported by
  ``torch.onnx.export(dynamo=True)`` at opset 18: torch's SDPA decomposition (heads merged into
  the batch axis around the attention core, sizes read with Shape);
- ``bert_opset23.onnx``: the same model at opset 23, where SDPA becomes ai.onnx ``Attention``;
- ``bert_ort_optimized.onnx`` and ``bert_ort_optimized_mha.onnx``: the same weights with eager
  attention, exported by the TorchScript exporter (opset 17), after ONNX Runtime's transformer
  optimizer (``optimize_model(model_type="bert", num_heads=4, hidden_size=32)``):
  EmbedLayerNormalization, SkipLayerNormalization, BiasGelu and a fused com.microsoft
  ``Attention`` (packed QKV), or ``MultiHeadAttention`` with ``use_multi_head_attention``. (The
  optimizer fuses no attention in the dynamo exports.)

Every file is run in ONNX Runtime and compared with PyTorch. Needs torch, transformers,
onnxscript and onnxruntime (``/work/venvs/export`` style environment).

Usage::

    python tools/export_bert_formats.py [--out models]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 0
HEADS, HIDDEN = 4, 32


class LastHidden(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                          return_dict=True).last_hidden_state


def build(attention: str = "sdpa"):
    from transformers import BertConfig, BertModel
    torch.manual_seed(SEED)
    cfg = BertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                     intermediate_size=64, max_position_embeddings=32, attn_implementation=attention)
    model = BertModel(cfg, add_pooling_layer=False)
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():  # non-trivial norms and biases (the default init leaves them at 1 and 0)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return LastHidden(model.eval()).eval()


def inputs():
    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, 100, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros(2, 7, dtype=torch.int64)}


def export(model, path: str, opset: int) -> None:
    example = inputs()
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=32)
    shapes = tuple({0: batch, 1: seq} for _ in example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, tuple(example.values()), dynamo=True, opset_version=opset,
                                 input_names=list(example), output_names=["last_hidden_state"],
                                 dynamic_shapes=shapes, optimize=True, verify=False)
    prog.save(path, external_data=False)


def export_torchscript(model, path: str) -> None:
    example = inputs()
    dyn = {n: {0: "batch", 1: "seq"} for n in [*example, "last_hidden_state"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(example.values()), path, dynamo=False, opset_version=17,
                          do_constant_folding=True, input_names=list(example), output_names=["last_hidden_state"],
                          dynamic_axes=dyn)


def optimize(src: str, path: str, multi_head: bool) -> None:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    options = FusionOptions("bert")
    options.use_multi_head_attention = multi_head
    opt = optimize_model(src, model_type="bert", num_heads=HEADS, hidden_size=HIDDEN, opt_level=0,
                         optimization_options=options)
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    want = "MultiHeadAttention" if multi_head else "Attention"
    if fused.get(want) != 2 or not fused.get("SkipLayerNormalization") or not fused.get("EmbedLayerNormalization"):
        raise SystemExit(f"{path}: the optimizer fused {fused}")
    opt.save_model_to_file(path)
    print(f"{os.path.basename(path)}: fused {sorted(fused.items())}")


def check(path: str, model) -> None:
    import onnxruntime as ort
    example = inputs()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    with torch.no_grad():
        want = model(*example.values()).numpy()
    got = sess.run(None, {k: v.numpy() for k, v in example.items() if k in names})[0]
    err = float(np.abs(got - want).max())
    print(f"{os.path.relpath(path, REPO_ROOT)}: {os.path.getsize(path) / 1e3:.0f} kB, max |ORT - torch| {err:.2e}")
    if err > 1e-3:
        raise SystemExit(f"{path}: ONNX Runtime disagrees with PyTorch ({err})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "models"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    model = build()
    sdpa, op23 = os.path.join(args.out, "bert_sdpa_dynamo.onnx"), os.path.join(args.out, "bert_opset23.onnx")
    export(model, sdpa, 18)
    check(sdpa, model)
    export(model, op23, 23)
    check(op23, model)
    eager = build("eager")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "bert_eager_torchscript.onnx")
        export_torchscript(eager, src)
        for multi_head, name in ((False, "bert_ort_optimized.onnx"), (True, "bert_ort_optimized_mha.onnx")):
            fused = os.path.join(args.out, name)
            optimize(src, fused, multi_head)
            check(fused, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
