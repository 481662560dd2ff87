#!/usr/bin/env python
"""Uniform ratio against ``--allocate global`` (per-group ratios from measured sensitivities, the
same FLOPs removed) on the digits CNN: held-out accuracy side by side, with and without the
lstsq refit; and, with ``--minilm``, MiniLM-L6's FFN units at ``--minilm-ratio``: mean
embedding cosine on held-out sentences (needs ``build/minilm/`` from ``tools/export_minilm.py``,
a calibration folder from ``tools/minilm_calib_buckets.py`` and ``transformers``); and, with
``--ocr REC_MODEL``, PaddleOCR's PP-OCRv4 text recognizer (``tools/ocr_data.py`` says where the
PyPI wheel has it): line and character accuracy on rendered text lines of known text.

    python tools/bench_allocate.py [--ratios 0.3 0.5 0.7] [--minilm] [--minilm-ratio 0.5]
    python tools/bench_allocate.py --skip-digits --ocr ch_PP-OCRv4_rec_infer.onnx --ocr-ratios 0.3
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, TOOLS_DIR)
sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import onnxprune  # noqa: E402

MODELS = os.path.join(REPO_ROOT, "models")


def _session(model):
    return ort.InferenceSession(model.SerializeToString() if hasattr(model, "SerializeToString") else model,
                                providers=["CPUExecutionProvider"])


def digits(ratios, reconstructs) -> None:
    data = np.load(os.path.join(MODELS, "digits_eval.npz"))
    x, y = data["input"], data["label"]
    calib = os.path.join(MODELS, "digits_calib.npz")
    base = (_session(os.path.join(MODELS, "digits_cnn.onnx")).run(None, {"input": x})[0].argmax(1) == y).mean()
    print(f"digits CNN, original accuracy {base:.4f}")
    print("| ratio | refit | allocation | params | FLOPs | accuracy | kept per group | time |")
    print("|---|---|---|---|---|---|---|---|")
    for ratio in ratios:
        for rec in reconstructs:
            for allocate in ("uniform", "global"):
                start = time.time()
                result = onnxprune.prune(os.path.join(MODELS, "digits_cnn.onnx"), ratio=ratio, calibration=calib,
                                         reconstruct=rec, allocate=allocate)
                acc = (_session(result.model).run(None, {"input": x})[0].argmax(1) == y).mean()
                r = result.report
                kept = ", ".join(f"{k}/{t}" for k, t in result.context.selection.kept.values())
                print(f"| {ratio} | {rec} | {allocate} | {r['before']['params']} → {r['after']['params']} | "
                      f"{r['after']['flops'] / r['before']['flops']:.3f} | {acc:.4f} | {kept} | "
                      f"{time.time() - start:.0f} s |", flush=True)


def minilm(ratio: float, reconstructs) -> None:
    import minilm_data as md
    from transformers import AutoTokenizer

    folder = os.path.join(REPO_ROOT, "build", "minilm")
    model, calib = os.path.join(folder, "minilm_torchscript.onnx"), os.path.join(folder, "calib_buckets")
    tok = AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
    held = md.encode(tok, md.heldout_sentences(150), 64)
    reference = md.embed(_session(model), held)
    print(f"MiniLM-L6, FFN units, ratio {ratio}")
    print("| refit | allocation | params | FLOPs | cosine | FFN kept | time |")
    print("|---|---|---|---|---|---|---|")
    for rec in reconstructs:
        for allocate in ("uniform", "global"):
            start = time.time()
            result = onnxprune.prune(model, ratio=ratio, calibration=calib, reconstruct=rec, allocate=allocate,
                                     prune="channels")
            cosine = float((md.embed(_session(result.model), held) * reference).sum(1).mean())
            r = result.report
            kept = ", ".join(str(k) for k, t in result.context.selection.kept.values())
            print(f"| {rec} | {allocate} | {r['before']['params'] / 1e6:.2f}M → {r['after']['params'] / 1e6:.2f}M | "
                  f"{r['after']['flops'] / r['before']['flops']:.3f} | {cosine:.4f} | {kept} | "
                  f"{time.time() - start:.0f} s |", flush=True)


def ocr(model: str, ratios, reconstructs, calib_count: int, eval_count: int) -> None:
    import tempfile

    import ocr_data as od

    classes = od.charset_of(model)
    x, truth = od.lines(eval_count, seed=7, charset=set(classes))
    calib = od.write_calibration(model, os.path.join(tempfile.mkdtemp(), "ocr_calib.npz"), calib_count, seed=1)

    def accuracy(m):
        s = _session(m)
        return od.accuracy(od.decode(s.run(None, {s.get_inputs()[0].name: x})[0], classes), truth)

    line, char = accuracy(model)
    print(f"PP-OCRv4 rec, {eval_count} rendered lines, original line accuracy {line:.4f}, characters {char:.4f}")
    print("| ratio | refit | allocation | params | FLOPs | line accuracy | character accuracy | time |")
    print("|---|---|---|---|---|---|---|---|")
    for ratio in ratios:
        for rec in reconstructs:
            for allocate in ("uniform", "global"):
                start = time.time()
                result = onnxprune.prune(model, ratio=ratio, calibration=calib, reconstruct=rec, allocate=allocate)
                line, char = accuracy(result.model)
                r = result.report
                print(f"| {ratio} | {rec} | {allocate} | {r['before']['params'] / 1e6:.2f}M → "
                      f"{r['after']['params'] / 1e6:.2f}M | {r['after']['flops'] / r['before']['flops']:.3f} | "
                      f"{line:.4f} | {char:.4f} | {time.time() - start:.0f} s |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--reconstruct", nargs="+", default=["none", "lstsq"])
    ap.add_argument("--minilm", action="store_true")
    ap.add_argument("--minilm-ratio", type=float, default=0.5)
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--ocr", metavar="REC_MODEL", help="PP-OCRv4's ch_PP-OCRv4_rec_infer.onnx")
    ap.add_argument("--ocr-ratios", type=float, nargs="+", default=[0.3])
    ap.add_argument("--ocr-calib", type=int, default=32, help="rendered calibration lines")
    ap.add_argument("--ocr-eval", type=int, default=200, help="rendered held-out lines")
    args = ap.parse_args(argv)
    if not args.skip_digits:
        digits(args.ratios, args.reconstruct)
    if args.minilm:
        minilm(args.minilm_ratio, args.reconstruct)
    if args.ocr:
        ocr(args.ocr, args.ocr_ratios, args.reconstruct, args.ocr_calib, args.ocr_eval)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
