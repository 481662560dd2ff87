#!/usr/bin/env python
"""Prune quantized models with ``--ratio 0.3`` and measure what goes and what it costs.

Models, quantized here with ONNX Runtime's own quantizer (``onnxruntime.quantization``):

- ``resnet50``: the float ResNet-50 of ``tools/bench_calib_speed.py`` (``onnx.helper``, random
  He-initialised weights, BN folded), ``quantize_static`` QDQ per channel on 8 smooth random
  images; pruned from the weights alone (``l1``);
- ``minilm-qdq`` / ``minilm-dynamic``: all-MiniLM-L6-v2 (real weights, ``tools/export_minilm.py``
  writes ``build/minilm/minilm_torchscript.onnx``), ``quantize_static`` QDQ per channel on the
  first 128 calibration sentences, or ``quantize_dynamic`` (MatMulInteger); pruned with
  calibration data (``tools/minilm_calib_buckets.py`` writes ``build/minilm/calib_buckets_512``:
  ``obs``, and ``lstsq`` refits where the layers are QDQ);
- ``bert-qdq`` / ``bert-dynamic``: a BERT with bert-base's shapes (random weights,
  ``tools/export_bert_base.py`` writes ``build/bert_base.onnx``), ``quantize_static`` QDQ per
  channel on 8 random token sequences, or ``quantize_dynamic``; pruned from the weights (``l1``);
- ``genai-int4``: the GenAI model builder's int4 decoder (MatMulNBits, GroupQueryAttention) with an
  LLM's proportions, random weights (``tools/export_genai.py int4 --shape wide --out build/genai_wide``
  writes ``build/genai_wide/genai_llama_int4``); pruned from the weights (``l1``).

Reported per model: float-equivalent weights (elements of every initializer of two or more
dimensions that is a float or 8-bit integer tensor: an int8 weight counts once per element; a
MatMulNBits weight counts its N x K 4-bit entries)
before and after and the % removed, whether the output passes ``onnx.checker`` and loads and
runs in ONNX Runtime, and fidelity against the quantized unpruned model: mean cosine of the
outputs (ResNet-50: logits on 8 other random images; MiniLM: mean-pooled embeddings of 150
held-out sentences, ``build/minilm/heldout150.npz``; BERT: last hidden states of 8 other random
sequences; the decoder: logits of 4 random 16-token prompts, no cache).

    python tools/bench_quantized.py [--models resnet50 minilm-qdq minilm-dynamic bert-qdq bert-dynamic genai-int4]
                                    [--prune blocks,heads,channels] [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))
MINILM = REPO / "build" / "minilm"
BERT = REPO / "build" / "bert_base.onnx"
GENAI = REPO / "build" / "genai_wide" / "genai_llama_int4"


def weights(model: onnx.ModelProto) -> int:
    packed = {n.input[1]: n for n in model.graph.node if n.op_type == "MatMulNBits"}
    total = 0
    for init in model.graph.initializer:
        if init.name in packed:  # 4-bit weights packed two to a byte: N x K of them
            attrs = {a.name: a.i for a in packed[init.name].attribute}
            total += attrs["N"] * attrs["K"]
            continue
        a = numpy_helper.to_array(init)
        if a.ndim >= 2 and (a.dtype.kind == "f" or a.itemsize == 1):
            total += a.size
    return total


class Reader:
    def __init__(self, feeds):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def resnet50(work: Path) -> dict:
    from bench_calib_speed import resnet50 as build, smooth_images
    from onnxruntime.quantization import QuantFormat, quantize_static

    float_path, q_path = work / "resnet50.onnx", work / "resnet50_qdq.onnx"
    onnx.save(build(), float_path)
    calib = smooth_images(8, (3, 224, 224), seed=0).astype(np.float32)
    quantize_static(str(float_path), str(q_path), Reader([{"x": calib[i:i + 1]} for i in range(8)]),
                    quant_format=QuantFormat.QDQ, per_channel=True)
    test = smooth_images(8, (3, 224, 224), seed=1).astype(np.float32)

    def outputs(model):
        s = session(model)
        return np.concatenate([s.run(None, {"x": test[i:i + 1]})[0] for i in range(len(test))])

    return {"model": q_path, "options": {"criterion": "l1"}, "outputs": outputs}


def _minilm_quantized(work: Path, kind: str) -> Path:
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static

    source = MINILM / "minilm_torchscript.onnx"
    out = work / f"minilm_{kind}.onnx"
    if kind == "dynamic":
        quantize_dynamic(str(source), str(out), per_channel=True)
    else:
        feeds = []
        for f in sorted(glob.glob(str(MINILM / "calib_buckets_512" / "*.npz"))):
            batch = dict(np.load(f))
            feeds += [{k: v[i:i + 1] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]
        feeds = feeds[::4][:128]  # 128 sentences of all lengths
        quantize_static(str(source), str(out), Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True)
    return out


def _minilm_data() -> None:
    """Write the held-out sentences and the calibration buckets when they are not there yet
    (the tokenizer ``tools/export_minilm.py`` saved; needs transformers, no download)."""
    if (MINILM / "heldout150.npz").exists() and (MINILM / "calib_buckets_512").is_dir():
        return
    import subprocess

    from transformers import AutoTokenizer

    sys.path.insert(0, str(REPO / "tools"))
    import minilm_data

    tokenizer = AutoTokenizer.from_pretrained(str(MINILM / "tokenizer"))
    np.savez(MINILM / "heldout150.npz", **minilm_data.encode(tokenizer, minilm_data.heldout_sentences(150)))
    subprocess.run([sys.executable, str(REPO / "tools" / "minilm_calib_buckets.py"), "--sentences", "512",
                    "--out", str(MINILM / "calib_buckets_512"), "--tokenizer", str(MINILM / "tokenizer")],
                   check=True)


def minilm(work: Path, kind: str) -> dict:
    _minilm_data()
    held = dict(np.load(MINILM / "heldout150.npz"))

    def outputs(model):
        s = session(model)
        names = {i.name for i in s.get_inputs()}
        pooled = []
        for start in range(0, 150, 25):
            feeds = {k: v[start:start + 25] for k, v in held.items() if k in names}
            h = s.run(None, feeds)[0]
            mask = feeds["attention_mask"][..., None].astype(np.float64)
            pooled.append((h * mask).sum(1) / mask.sum(1))
        return np.concatenate(pooled)

    return {"model": _minilm_quantized(work, kind), "outputs": outputs,
            "options": {"calibration": str(MINILM / "calib_buckets_512"), "calib_samples": 256}}


def _needs(path: Path, how: str) -> None:
    if not path.exists():
        raise SystemExit(f"{path} is missing: {how}")


def _tokens(vocab: int, n: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, vocab, (n, seq)).astype(np.int64),
            "attention_mask": np.ones((n, seq), dtype=np.int64)}


def bert(work: Path, kind: str) -> dict:
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static

    _needs(BERT, "python tools/export_bert_base.py (torch, transformers) writes it")
    out = work / f"bert_{kind}.onnx"
    if kind == "dynamic":
        quantize_dynamic(str(BERT), str(out), per_channel=True)
    else:
        calib = _tokens(30522, 8, 32, seed=0)
        quantize_static(str(BERT), str(out), Reader([{k: v[i:i + 1] for k, v in calib.items()} for i in range(8)]),
                        quant_format=QuantFormat.QDQ, per_channel=True)
    test = _tokens(30522, 8, 32, seed=1)

    def outputs(model):
        return session(model).run(None, test)[0]

    return {"model": out, "options": {"criterion": "l1"}, "outputs": outputs}


def genai(work: Path) -> dict:
    _needs(GENAI / "model.onnx", "python tools/export_genai.py int4 --shape wide --out build/genai_wide "
                                 "(torch, transformers 5, onnxruntime-genai) writes it")
    model = onnx.load(GENAI / "model.onnx")
    onnx.save(model, work / "genai_int4.onnx")

    head = json.loads((GENAI / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
    prompt = _tokens(320, 4, 16, seed=2)

    def outputs(m):
        s = session(m)
        past = {i.name: np.zeros((4, int(i.shape[1]), 0, head), dtype=np.float32)  # no cache: an empty past
                for i in s.get_inputs() if i.name.startswith("past_key_values")}
        return s.run(["logits"], {**prompt, **past})[0]

    return {"model": work / "genai_int4.onnx", "options": {"criterion": "l1"}, "outputs": outputs}


SETUPS = {"resnet50": resnet50, "minilm-qdq": lambda w: minilm(w, "qdq"), "minilm-dynamic": lambda w: minilm(w, "dynamic"),
          "bert-qdq": lambda w: bert(w, "qdq"), "bert-dynamic": lambda w: bert(w, "dynamic"), "genai-int4": genai}


def _checks(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        return False
    return True


def measure(name: str, setup: dict, prune: str = "heads,channels") -> dict:
    import onnxprune

    quantized = onnx.load(setup["model"])
    start = time.perf_counter()
    result = onnxprune.prune(quantized, ratio=0.3, prune=prune, **setup["options"])
    seconds = time.perf_counter() - start
    pruned = result.model
    if _checks(quantized):  # GenAI graphs hold ONNX Runtime's SimplifiedLayerNormalization in the ONNX domain
        onnx.checker.check_model(pruned)
    before, after = weights(quantized), weights(pruned)
    cos = cosine(setup["outputs"](quantized), setup["outputs"](pruned))  # loads and runs, or raises
    refit = [r for r in (result.report.get("reconstruction") or {}).get("layers", [])
             if r.get("choice") not in (None, "current")]
    return {"model": name, "weights_before": before, "weights_after": after,
            "removed_pct": round(100 * (1 - after / before), 1), "valid": True,
            "cosine_mean": round(float(cos.mean()), 4), "cosine_min": round(float(cos.min()), 4),
            "layers_refit": len(refit), "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--prune", default="heads,channels", help="what to remove (onnxprune's --prune)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            setup = SETUPS[name](work)
            row = measure(name, setup, args.prune)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print("\n| model | float-equivalent weights | removed | valid | cosine vs quantized (mean / min) | refit |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['weights_before']:,} → {r['weights_after']:,} | {r['removed_pct']}% | "
              f"{'yes' if r['valid'] else 'no'} | {r['cosine_mean']} / {r['cosine_min']} | {r['layers_refit']} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    raise SystemExit(main())
